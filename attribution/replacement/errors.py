"""Exception classes of the replacement model, graph construction and steering.

All subclass ``attribution.errors.AttributionError`` (a ``ValueError``); each
message names the fix.
"""

from __future__ import annotations

from attribution.errors import AttributionError, TokenRangeError


class DictionaryMismatchError(AttributionError):
    """A dictionary does not fit the model (sites, layer count, widths) or two share a layer."""


class LogitTargetError(TokenRangeError):
    """A logit target is outside the vocabulary or a custom direction has the wrong shape."""


class AttributionMethodError(AttributionError):
    """An unknown attribution method / ablation, or inputs the method cannot use."""


class SteeringError(AttributionError):
    """A feature edit names a layer, feature or position that does not exist."""


__all__ = ["AttributionMethodError", "DictionaryMismatchError", "LogitTargetError", "SteeringError"]
