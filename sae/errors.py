"""Exception classes of the ``sae`` package.

Every error a user can trigger at a boundary (configs, files, shapes, data)
raises one of these, each a subclass of ``SAEError`` and of the matching
built-in (``ValueError`` / ``OSError`` / ``RuntimeError``) so generic handlers
keep working.
"""

from __future__ import annotations

from attribution.errors import NonFiniteError as _NonFiniteValues


class SAEError(Exception):
    """Base class of every error raised by ``sae``."""


class ConfigError(SAEError, ValueError):
    """A configuration is inconsistent (for example ``k > width``)."""


class UnknownArchitectureError(ConfigError):
    """An architecture or dictionary kind name is not one we implement."""


class ShapeMismatchError(SAEError, ValueError):
    """An activation or weight has the wrong shape (for example d_in != site width)."""


class EmptyDatasetError(SAEError, ValueError):
    """An activation source produced no tokens (or fewer than one batch)."""


class FormatError(SAEError, OSError):
    """A dictionary file is missing, truncated, corrupt, or of an unknown schema."""


class CacheMismatchError(SAEError, ValueError):
    """An activation cache was written for another model, site set, width or dtype."""


class NonFiniteError(SAEError, RuntimeError):
    """NaN or inf appeared in activations or the loss; carries the step number."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step
        """Training step (0-based) at which the first non-finite value was seen."""


class NonFiniteWeightsError(SAEError, _NonFiniteValues):
    """A dictionary file holds NaN or inf weights; names the dictionary and the tensor.

    Also an ``attribution.NonFiniteError`` (a ``ValueError``), with its ``name``,
    ``n_nan`` and ``n_inf`` attributes."""


class DictionaryModelMismatchError(SAEError, ValueError):
    """Dictionaries record another model's identity than the model they are used with."""


class DictionaryModelMismatchWarning(UserWarning):
    """``load_dictionaries(..., force=True)`` loaded dictionaries recorded for another model."""


class TrainingInterrupted(SAEError, RuntimeError):
    """Raised by a progress callback to stop a run cleanly (resume later)."""
