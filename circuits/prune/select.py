"""Other ways to cut a circuit out of a graph.

``top_edges(graph, n)``: keep the n stored edges of largest |weight| (ties: CSR order).
``threshold_edges(graph, abs_threshold)``: keep edges with |weight| >= abs_threshold.
For both: kept nodes = endpoints of kept edges ∪ tokens ∪ logits; with
``remove_dangling=True`` the fixpoint of ``prune.remove_dangling`` is applied after.
Edge scores are |weight|; ``node_influence`` is the full graph's influence.

``greedy_prune(graph, min_retained=0.9, batch_size=1)``:

1. A_n = row-normalised |A| of the full graph; w = logit weights. "Sources" are the
   non-logit nodes without incoming edges in the full graph (tokens, errors, and any
   input-less features): in A_n all logit mass that flows backwards ends in them.
2. For a kept set S, influence_S = w·Σ_k (D_S A_n D_S)^k with D_S the 0/1 diagonal of S
   (no re-normalisation: removing a node cuts the mass through it), and
   retained(S) = Σ_{sources in S} influence_S / Σ_{sources} influence_full
   (1 when the denominator is 0).
3. Start from all nodes. Repeatedly take the ``batch_size`` kept feature/error nodes
   of smallest influence_S (ties by node order); remove them if retained stays
   >= ``min_retained``. If a batch of several fails, retry with one node; stop when a
   single removal fails or no feature/error node is left. Tokens and logits stay.
4. Kept edges: all edges between kept nodes; score A_n[t,s]·(influence_S[t] + w[t]).
With ``batch_size=1`` the removal order does not depend on ``min_retained`` and
retained(S) only falls along it, so the kept set grows with ``min_retained``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from attribution.graph import Graph
from circuits.prune.errors import PruneError
from circuits.prune.influence_prune import check_fraction, remove_dangling
from circuits.prune.node_influence import normalize_rows, normalized_edge_values, propagate
from circuits.prune.result import PruneResult, build_result


def _select_edges(graph: Graph, edge_keep: np.ndarray, remove: bool, method: str, params: dict) -> PruneResult:
    src, tgt, w = graph.edge_arrays()
    node_mask = graph.type_mask("token") | graph.type_mask("logit")
    node_mask[src[edge_keep]] = True
    node_mask[tgt[edge_keep]] = True
    if remove:
        node_mask, edge_keep = remove_dangling(graph, node_mask, edge_keep)
    infl = propagate(normalize_rows(graph.adjacency), graph.logit_weight_vector())
    return build_result(graph, node_mask, edge_keep, np.abs(w).astype(np.float64), infl, method,
                        dict(params, remove_dangling=remove))


def top_edges(graph: Graph, n: int, remove_dangling: bool = False) -> PruneResult:
    """Keep the ``n`` edges of largest |weight| (all if n >= n_edges)."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise PruneError(f"n must be an int >= 0, got {n!r}")
    _, _, w = graph.edge_arrays()
    order = np.argsort(-np.abs(w), kind="stable")
    keep = np.zeros(w.shape[0], dtype=bool)
    keep[order[: int(n)]] = True
    return _select_edges(graph, keep, remove_dangling, "top_edges", {"n": int(n)})


def threshold_edges(graph: Graph, abs_threshold: float, remove_dangling: bool = False) -> PruneResult:
    """Keep the edges with |weight| >= ``abs_threshold``."""
    try:
        t = float(abs_threshold)
    except (TypeError, ValueError):
        raise PruneError(f"abs_threshold must be a number >= 0, got {abs_threshold!r}") from None
    if not (np.isfinite(t) and t >= 0):
        raise PruneError(f"abs_threshold must be finite and >= 0, got {abs_threshold!r}")
    _, _, w = graph.edge_arrays()
    return _select_edges(graph, np.abs(w) >= t, remove_dangling, "threshold_edges", {"abs_threshold": t})


def _masked(a_n: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    d = sp.diags(keep.astype(np.float64))
    return sp.csr_matrix(d @ a_n @ d)


def _greedy_loop(graph: Graph, a_n, lw, min_retained: float, batch_size: int):
    """Steps 2–3: returns the kept mask and its influence."""
    is_src = (np.diff(graph.adjacency.indptr) == 0) & ~graph.type_mask("logit")
    removable = graph.type_mask("feature") | graph.type_mask("error")
    keep = np.ones(graph.n_nodes, dtype=bool)
    infl = propagate(a_n, lw)
    base = infl[is_src].sum()
    while True:
        cand = np.flatnonzero(keep & removable)
        if cand.size == 0:
            return keep, infl
        order = cand[np.lexsort((cand, infl[cand]))]
        step = min(batch_size, cand.size)
        while True:
            trial = keep.copy()
            trial[order[:step]] = False
            infl_t = propagate(_masked(a_n, trial), lw)
            retained = infl_t[is_src & trial].sum() / base if base > 0 else 1.0
            if retained >= min_retained:
                keep, infl = trial, infl_t
                break
            if step == 1:
                return keep, infl
            step = 1


def greedy_prune(graph: Graph, min_retained: float = 0.9, batch_size: int = 1) -> PruneResult:
    """Greedy node removal keeping ``retained >= min_retained`` (module docstring)."""
    min_retained = check_fraction("min_retained", min_retained)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise PruneError(f"batch_size must be an int >= 1, got {batch_size!r}")
    a_n = normalize_rows(graph.adjacency)
    lw = graph.logit_weight_vector()
    keep, infl_s = _greedy_loop(graph, a_n, lw, min_retained, int(batch_size))
    src, tgt, _ = graph.edge_arrays()
    edge_keep = keep[src] & keep[tgt]
    scores = normalized_edge_values(graph) * (infl_s[tgt] + lw[tgt])
    infl_full = propagate(a_n, lw)
    return build_result(graph, keep, edge_keep, scores, infl_full, "greedy",
                        {"min_retained": min_retained, "batch_size": int(batch_size)})


__all__ = ["greedy_prune", "threshold_edges", "top_edges"]
