"""Dictionary architectures and the name -> class registry."""

from __future__ import annotations

from sae.arch.clt import CLT_ARCHS, CrossLayerTranscoder
from sae.arch.crosscoder import (
    CROSSCODER_ARCHS,
    Crosscoder,
    CrosscoderEval,
    evaluate_crosscoder,
    relative_decoder_norms,
)
from sae.arch.gated import GatedDictionary
from sae.arch.jumprelu import JumpReLUDictionary
from sae.arch.relu import ReLUDictionary
from sae.arch.topk import BatchTopKDictionary, MatryoshkaDictionary, TopKDictionary
from sae.errors import UnknownArchitectureError
from sae.parts import RECIPES, ComposedDictionary, Recipe

ARCHITECTURES = {
    "relu": ReLUDictionary,
    "topk": TopKDictionary,
    "batchtopk": BatchTopKDictionary,
    "jumprelu": JumpReLUDictionary,
    "gated": GatedDictionary,
    "matryoshka": MatryoshkaDictionary,
}


COMPOSED_ARCH = "composed"
"""``arch`` of dictionaries built from parts (``sae.parts``); their recipe is in hparams."""


def architecture(name: str):
    """The dictionary class for an architecture name (raises UnknownArchitectureError).

    "composed" gives ``sae.parts.ComposedDictionary`` (constructed with ``recipe=``)."""
    if name == COMPOSED_ARCH:
        return ComposedDictionary
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; expected one of {', '.join(ARCHITECTURES)}, "
            f"{COMPOSED_ARCH} (with a recipe; named: {', '.join(sorted(RECIPES))})"
        ) from None


__all__ = [
    "ARCHITECTURES",
    "COMPOSED_ARCH",
    "ComposedDictionary",
    "RECIPES",
    "Recipe",
    "CLT_ARCHS",
    "CROSSCODER_ARCHS",
    "BatchTopKDictionary",
    "CrossLayerTranscoder",
    "Crosscoder",
    "CrosscoderEval",
    "GatedDictionary",
    "JumpReLUDictionary",
    "MatryoshkaDictionary",
    "ReLUDictionary",
    "TopKDictionary",
    "architecture",
    "evaluate_crosscoder",
    "relative_decoder_norms",
]
