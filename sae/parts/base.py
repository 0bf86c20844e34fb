"""Base classes of the parts: the hooks each kind offers ``ComposedDictionary``.

Every part is a frozen dataclass (its fields are its parameters, JSON-able). A part
keeps no arrays of its own: ``setup(d)`` adds any parameter or frozen state to the
dictionary module ``d`` (so save/load, ``folded`` and checkpoints see them), and every
hook receives ``d``. The default hooks do nothing, so a part overrides only what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx


@dataclass(frozen=True)
class Part:
    """Common hooks: ``setup`` (add arrays to the dictionary) and ``check`` (validate)."""

    kind = "part"
    name = "part"

    def setup(self, d) -> None:
        """Add parameters / frozen state arrays to the dictionary ``d``."""

    def check(self, d) -> None:
        """Raise ConfigError when this part cannot serve ``d`` (shapes, other parts)."""

    def params(self) -> dict:
        """This part's parameters (dataclass fields) as a dict."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def zero() -> mx.array:
    return mx.array(0.0)
