"""Exceptions raised by ``viz`` (all subclass ``VizError``, a ``ValueError``)."""

from __future__ import annotations


class VizError(ValueError):
    """Base class of every error raised by ``viz``."""


class GraphvizNotFoundError(VizError, RuntimeError):
    """The Graphviz ``dot`` executable is not on PATH."""


class RenderError(VizError, RuntimeError):
    """``dot`` ran but failed (bad DOT text, unsupported format, timeout)."""


class SchemaError(VizError):
    """An input table/record lacks a documented column or key, or has a bad value."""


__all__ = ["GraphvizNotFoundError", "RenderError", "SchemaError", "VizError"]
