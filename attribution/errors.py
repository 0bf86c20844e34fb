"""Exception classes of the attribution package.

Every error raised at a boundary of ``attribution`` (loading a model,
validating tokens and sites, building interventions, finding NaN/inf in
weights or activations) is a subclass of
``AttributionError`` (itself a ``ValueError``), and its message names the fix.
Site errors also subclass ``attribution.sites.SiteError`` so that callers
catching either class see them.
"""

from __future__ import annotations

from attribution.sites import SiteError


class AttributionError(ValueError):
    """Base class of every input error raised by ``attribution``."""


class ModelNotFoundError(AttributionError, FileNotFoundError):
    """The model path does not exist."""


class NotAModelError(AttributionError):
    """The path exists but is not a loadable mlx-lm model directory."""


class TokenizerNotFoundError(NotAModelError):
    """The model directory holds no tokenizer vocabulary file."""


class UnsupportedModelTypeError(NotAModelError):
    """config.json names a ``model_type`` that mlx-lm cannot build."""


class WeightsMismatchError(NotAModelError):
    """The safetensors weights do not fit the architecture config.json describes."""


class NonFiniteError(AttributionError):
    """A tensor (model weight, dictionary weight or activation) holds NaN or inf values."""

    def __init__(self, message: str, name: str = "", n_nan: int = 0, n_inf: int = 0) -> None:
        super().__init__(message)
        self.name = name
        """The tensor's name (weight name or site)."""
        self.n_nan = n_nan
        """How many of its values are NaN."""
        self.n_inf = n_inf
        """How many of its values are +inf or -inf."""


class SiteKindError(AttributionError, SiteError):
    """A site names an unknown kind or cannot be parsed."""


class LayerRangeError(AttributionError, SiteError):
    """A site's layer does not exist in the model."""


class ContextLengthError(AttributionError):
    """A token sequence is longer than the model's context window."""


class TokenRangeError(AttributionError):
    """A token id lies outside the model's vocabulary."""


class EmptySequenceError(AttributionError):
    """A token batch has no tokens."""


class InterventionError(AttributionError):
    """An intervention does not fit its site (shape, head, positions, reference)."""


class UnsupportedArchitectureError(AttributionError):
    """The model's architecture lacks a hook point that the request needs."""


__all__ = [
    "AttributionError", "ModelNotFoundError", "NotAModelError", "TokenizerNotFoundError",
    "UnsupportedModelTypeError", "WeightsMismatchError", "NonFiniteError", "SiteKindError",
    "LayerRangeError", "ContextLengthError", "TokenRangeError", "EmptySequenceError",
    "InterventionError", "UnsupportedArchitectureError", "SiteError",
]
