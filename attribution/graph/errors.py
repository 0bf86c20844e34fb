"""Exception classes of ``attribution.graph``.

Every error is a ``GraphError``, itself an ``attribution.errors.AttributionError``
(a ``ValueError``), so callers can catch the whole family or one kind.
Messages say what was wrong and how to fix it.
"""

from __future__ import annotations

from attribution.errors import AttributionError


class GraphError(AttributionError):
    """Base class of every error raised by ``attribution.graph``."""


class NodeKeyError(GraphError, KeyError):
    """A node key is malformed, or names a node that is not in the graph."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable
        return str(self.args[0]) if self.args else ""


class GraphValidationError(GraphError):
    """A ``Graph``'s parts are inconsistent (node table, adjacency, weights, metadata)."""


class GraphFileError(GraphError):
    """A saved graph directory is missing, unreadable or corrupt."""


class GraphSchemaError(GraphFileError):
    """A saved graph has another schema name or a newer version than this code reads."""


class NeuronpediaError(GraphError):
    """A Neuronpedia graph dict (or one of its node ids) does not follow the schema."""


class SparsifyError(GraphError):
    """Bad arguments or batches given to ``sparsify`` / ``SparseRowBuilder``."""


class GraphMemoryError(GraphError, MemoryError):
    """An estimated graph construction needs more memory than is available."""


__all__ = [
    "GraphError",
    "GraphFileError",
    "GraphMemoryError",
    "GraphSchemaError",
    "GraphValidationError",
    "NeuronpediaError",
    "NodeKeyError",
    "SparsifyError",
]
