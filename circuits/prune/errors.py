"""Exception class of ``circuits.prune``."""

from __future__ import annotations

from circuits.errors import CircuitsError


class PruneError(CircuitsError, ValueError):
    """Bad pruning arguments (a threshold outside (0, 1], a negative edge count) or a
    graph the pruning cannot handle (a cycle in the adjacency)."""


__all__ = ["PruneError"]
