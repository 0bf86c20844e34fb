"""Dictionary architectures and the name -> class registry."""

from __future__ import annotations

from sae.arch.clt import CLT_ARCHS, CrossLayerTranscoder
from sae.arch.gated import GatedDictionary
from sae.arch.jumprelu import JumpReLUDictionary
from sae.arch.relu import ReLUDictionary
from sae.arch.topk import BatchTopKDictionary, MatryoshkaDictionary, TopKDictionary
from sae.errors import UnknownArchitectureError

ARCHITECTURES = {
    "relu": ReLUDictionary,
    "topk": TopKDictionary,
    "batchtopk": BatchTopKDictionary,
    "jumprelu": JumpReLUDictionary,
    "gated": GatedDictionary,
    "matryoshka": MatryoshkaDictionary,
}


def architecture(name: str):
    """The dictionary class for an architecture name (raises UnknownArchitectureError)."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; expected one of {', '.join(ARCHITECTURES)}"
        ) from None


__all__ = [
    "ARCHITECTURES",
    "CLT_ARCHS",
    "BatchTopKDictionary",
    "CrossLayerTranscoder",
    "GatedDictionary",
    "JumpReLUDictionary",
    "MatryoshkaDictionary",
    "ReLUDictionary",
    "TopKDictionary",
    "architecture",
]
