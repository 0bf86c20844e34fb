"""A frozen configuration naming one pruning method and its parameters.

1. ``PruneConfig`` checks its fields in ``__post_init__`` (``PruneError`` on bad values).
2. ``prune_with(graph, config)`` dispatches to ``prune``, ``greedy_prune``, ``top_edges``
   or ``threshold_edges``; derive variants with ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from attribution.graph import Graph
from circuits.prune.errors import PruneError
from circuits.prune.influence_prune import check_fraction, prune
from circuits.prune.result import PruneResult
from circuits.prune.select import greedy_prune, threshold_edges, top_edges

PruneMethod = Literal["influence", "greedy", "top_edges", "threshold_edges"]


@dataclass(frozen=True)
class PruneConfig:
    """How to cut a circuit out of an attribution graph."""

    method: PruneMethod = "influence"
    """Which pruning: circuit-tracer influence thresholds, greedy node removal, the n
    largest-|weight| edges, or edges above an absolute |weight| threshold."""
    node_threshold: float = 0.8
    """influence: cumulative node-influence share to keep, in (0, 1]."""
    edge_threshold: float = 0.98
    """influence: cumulative edge-score share to keep, in (0, 1]."""
    min_retained: float = 0.9
    """greedy: smallest share of the logits' input mass the kept nodes must carry, in (0, 1]."""
    batch_size: int = 1
    """greedy: nodes removed per influence recomputation (1 is exact greedy)."""
    n_edges: int | None = None
    """top_edges: how many edges to keep (required for that method)."""
    abs_threshold: float | None = None
    """threshold_edges: keep edges with |weight| >= this (required for that method)."""
    remove_dangling: bool = False
    """top_edges / threshold_edges: also remove dangling nodes afterwards."""

    def __post_init__(self) -> None:
        if self.method not in get_args(PruneMethod):
            raise PruneError(f"unknown pruning method {self.method!r}; one of {get_args(PruneMethod)}")
        check_fraction("node_threshold", self.node_threshold)
        check_fraction("edge_threshold", self.edge_threshold)
        check_fraction("min_retained", self.min_retained)
        if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            raise PruneError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if self.method == "top_edges" and self.n_edges is None:
            raise PruneError("method 'top_edges' needs n_edges")
        if self.method == "threshold_edges" and self.abs_threshold is None:
            raise PruneError("method 'threshold_edges' needs abs_threshold")


def prune_with(graph: Graph, config: PruneConfig) -> PruneResult:
    """Run the pruning that ``config`` describes."""
    if config.method == "influence":
        return prune(graph, config.node_threshold, config.edge_threshold)
    if config.method == "greedy":
        return greedy_prune(graph, config.min_retained, config.batch_size)
    if config.method == "top_edges":
        return top_edges(graph, config.n_edges, config.remove_dangling)
    return threshold_edges(graph, config.abs_threshold, config.remove_dangling)


__all__ = ["PruneConfig", "PruneMethod", "prune_with"]
