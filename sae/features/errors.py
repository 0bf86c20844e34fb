"""Exceptions and warnings of ``sae.features``.

Each subclasses ``sae.errors.SAEError`` and the matching built-in, so generic
handlers keep working. ``EmptyDatasetError`` is re-exported from ``sae.errors``.
"""

from __future__ import annotations

from sae.errors import EmptyDatasetError, SAEError, ShapeMismatchError


class FeatureIndexError(SAEError, IndexError):
    """A feature index is outside ``[0, width)`` of its dictionary."""


class DictionaryModelMismatchError(ShapeMismatchError):
    """A dictionary does not fit the model: d_in != d_model, or its site's layer does not exist."""


class TruncationWarning(UserWarning):
    """A text was longer than the model's context and was truncated."""


__all__ = ["DictionaryModelMismatchError", "EmptyDatasetError", "FeatureIndexError",
           "TruncationWarning"]
