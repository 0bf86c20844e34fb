"""Exception class of ``circuits.multi`` (aggregation, diffs, supernodes)."""

from __future__ import annotations

from circuits.errors import CircuitsError


class MultiError(CircuitsError, ValueError):
    """A multi-prompt request is invalid: no graphs, graphs of different models or
    layer counts, an unknown position or logit mode, prompts of different lengths under
    ``positions="absolute"``, a threshold outside its range, or a corrupt aggregate file."""


__all__ = ["MultiError"]
