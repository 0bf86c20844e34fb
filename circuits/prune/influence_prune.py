"""Influence pruning of an attribution graph (circuit-tracer's algorithm, sparse).

``prune(graph, node_threshold=0.8, edge_threshold=0.98)``:

1. Node influence: ``influence(graph)`` on the full graph (see ``node_influence``).
2. Node threshold: sort all node influences (every type, as circuit-tracer does)
   descending; the cut is the first value at which the cumulative share reaches
   ``node_threshold``; keep nodes with influence > 0 and >= the cut (ties at the cut
   are all kept). Token and logit nodes are always kept.
3. Edge scores: restrict A to edges between kept nodes, row-normalise |A| again
   (A_n'), recompute influence' on it, and score each edge
   A_n'[t, s] · (influence'[t] + w[t]).
4. Edge threshold: the same cumulative rule over the candidate edges' scores with
   ``edge_threshold``; edges with score 0 are never kept.
5. Dangling removal, repeated until nothing changes (``remove_dangling``):
   a feature or error node without a kept outgoing edge to a kept node is removed, and
   a feature node without a kept incoming edge from a kept node is removed; edges
   touching removed nodes are removed. Tokens and logits are never removed. On a DAG
   the first rule implies every kept feature/error has a kept path to a logit node.
   Error nodes need no inputs (they are exogenous in the replacement model).
6. The result holds the kept nodes, the kept edges with their original signed weights,
   the edge scores, and the full / pruned / merged-error scores.

Thresholds must lie in (0, 1]; otherwise ``PruneError``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from attribution.graph import Graph
from circuits.prune.errors import PruneError
from circuits.prune.node_influence import normalize_rows, propagate, row_scale
from circuits.prune.result import PruneResult, build_result


def check_fraction(name: str, value) -> float:
    """Return ``value`` as a float if it lies in (0, 1], else raise ``PruneError``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PruneError(f"{name} must be a number in (0, 1], got {value!r}") from None
    if not 0 < v <= 1:
        raise PruneError(f"{name} must lie in (0, 1], got {value!r}")
    return v


def find_threshold(scores: np.ndarray, fraction: float) -> float:
    """Smallest score among the top scores whose cumulative share reaches ``fraction``
    (all of them if rounding keeps the share below it); inf if no score is positive."""
    s = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(scores) > 0])[::-1]
    if s.size == 0:
        return np.inf
    cum = np.cumsum(s) / s.sum()
    i = min(int(np.searchsorted(cum, fraction)), s.size - 1)
    return float(s[i])


def keep_top_share(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Bool mask of positive scores >= ``find_threshold(scores, fraction)``."""
    return (scores > 0) & (scores >= find_threshold(scores, fraction))


def remove_dangling(graph: Graph, node_mask: np.ndarray, edge_keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixpoint of step 5 of the module docstring; returns new (node_mask, edge_keep),
    with ``edge_keep`` indexed by the graph's stored edges in CSR order."""
    src, tgt, _ = graph.edge_arrays()
    is_feat = graph.type_mask("feature")
    needs_out = is_feat | graph.type_mask("error")
    node_mask, edge_keep = node_mask.copy(), edge_keep.copy()
    while True:
        edge_keep &= node_mask[src] & node_mask[tgt]
        has_out = np.bincount(src[edge_keep], minlength=graph.n_nodes) > 0
        has_in = np.bincount(tgt[edge_keep], minlength=graph.n_nodes) > 0
        new = node_mask & ~(needs_out & ~has_out) & ~(is_feat & ~has_in)
        if np.array_equal(new, node_mask):
            return node_mask, edge_keep
        node_mask = new


def edge_influence_scores(graph: Graph, node_mask: np.ndarray) -> np.ndarray:
    """Step 3: [n_edges] score of each stored edge (0 for edges touching removed nodes)."""
    src, tgt, w = graph.edge_arrays()
    inner = node_mask[src] & node_mask[tgt]
    n = graph.n_nodes
    a_p = sp.csr_matrix((np.abs(w[inner]).astype(np.float64), (tgt[inner], src[inner])), shape=(n, n))
    a_pn = normalize_rows(a_p)
    lw = graph.logit_weight_vector()
    infl_p = propagate(a_pn, lw)
    scale = row_scale(a_p)
    scores = np.zeros(w.shape[0])
    t = tgt[inner]
    scores[inner] = np.abs(w[inner]).astype(np.float64) * scale[t] * (infl_p[t] + lw[t])
    return scores


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """Influence pruning; see the module docstring for the exact steps."""
    node_threshold = check_fraction("node_threshold", node_threshold)
    edge_threshold = check_fraction("edge_threshold", edge_threshold)
    infl = propagate(normalize_rows(graph.adjacency), graph.logit_weight_vector())
    always = graph.type_mask("token") | graph.type_mask("logit")
    node_mask = keep_top_share(infl, node_threshold) | always
    scores = edge_influence_scores(graph, node_mask)
    src, tgt, _ = graph.edge_arrays()
    inner = node_mask[src] & node_mask[tgt]
    edge_keep = np.zeros(scores.shape[0], dtype=bool)
    edge_keep[inner] = keep_top_share(scores[inner], edge_threshold)
    final_nodes, edge_keep = remove_dangling(graph, node_mask, edge_keep)
    params = {"node_threshold": node_threshold, "edge_threshold": edge_threshold}
    return build_result(graph, final_nodes, edge_keep, scores, infl, "influence", params, influence_mask=node_mask)


__all__ = [
    "check_fraction",
    "edge_influence_scores",
    "find_threshold",
    "keep_top_share",
    "prune",
    "remove_dangling",
]
