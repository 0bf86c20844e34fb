"""Pruning attribution graphs into circuits (top layer; uses ``attribution.graph``).

- ``node_influence``: ``influence``, node influence on the logits, w·((I − A_n)⁻¹ − I), by sparse products.
- ``influence_prune``: ``prune``, circuit-tracer's node/edge influence thresholds plus dangling removal.
- ``select``: ``top_edges``, ``threshold_edges``, ``greedy_prune``.
- ``scores``: replacement and completeness scores (full, pruned, merged-error).
- ``result``: ``PruneResult`` (alias ``Circuit``).
- ``config``: ``PruneConfig`` and ``prune_with`` (one frozen config for any method).
"""

from circuits.prune.config import PruneConfig, prune_with
from circuits.prune.errors import PruneError
from circuits.prune.influence_prune import find_threshold, prune, remove_dangling
from circuits.prune.node_influence import influence, influence_dict, normalize_rows, propagate
from circuits.prune.result import Circuit, PruneResult
from circuits.prune.scores import (
    CircuitScores,
    GraphScores,
    completeness_score,
    graph_scores,
    merge_into_errors,
    replacement_score,
)
from circuits.prune.select import greedy_prune, threshold_edges, top_edges

__all__ = [
    "Circuit",
    "CircuitScores",
    "GraphScores",
    "PruneConfig",
    "PruneError",
    "PruneResult",
    "completeness_score",
    "find_threshold",
    "graph_scores",
    "greedy_prune",
    "influence",
    "influence_dict",
    "merge_into_errors",
    "normalize_rows",
    "propagate",
    "prune",
    "prune_with",
    "remove_dangling",
    "replacement_score",
    "threshold_edges",
    "top_edges",
]
