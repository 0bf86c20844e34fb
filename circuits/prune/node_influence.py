"""Node influence on the logits (circuit-tracer's definition).

1. A_n = |A| with each row divided by its sum, so each target's inputs sum to 1
   (rows without inputs stay zero). A[target, source] as in ``Graph``.
2. w = the logit weights placed on the logit rows (0 elsewhere).
3. influence = w · (A_n + A_n² + A_n³ + …) = w · ((I − A_n)⁻¹ − I), computed without
   any dense inverse: x ← x · A_n (a sparse transpose-matvec), accumulated until x is
   exactly zero. On a DAG this happens after at most (longest path) steps; for a
   ``Graph`` (edges go strictly upward in layer) after at most n_layers + 2 steps.
4. A graph with a cycle never reaches zero; after N + 1 steps ``PruneError`` is raised.

influence[i] is the share of the logits' (probability-weighted) input mass that flows
through node i along all paths; logit nodes get 0 unless a logit feeds another.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from attribution.graph import Graph
from circuits.prune.errors import PruneError


def row_scale(adjacency: sp.spmatrix) -> np.ndarray:
    """[N] 1 / Σ_s |A[t, s]| per row t (0 for rows without inputs)."""
    sums = np.asarray(abs(adjacency).astype(np.float64).sum(axis=1)).ravel()
    return np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)


def normalize_rows(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """|A| with every non-empty row scaled to sum to 1 (float64 CSR)."""
    a = sp.csr_matrix(abs(adjacency), dtype=np.float64)
    return sp.csr_matrix(sp.diags(row_scale(a)) @ a)


def normalized_edge_values(graph: Graph) -> np.ndarray:
    """[n_edges] A_n[t, s] for every stored edge, in ``graph.edge_arrays()`` order."""
    _, tgt, w = graph.edge_arrays()
    return np.abs(w).astype(np.float64) * row_scale(graph.adjacency)[tgt]


def propagate(a_n: sp.csr_matrix, w: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Σ_{k>=1} w · a_n^k by repeated sparse products (see the module docstring)."""
    at = sp.csr_matrix(a_n.T)  # x · A_n == A_nᵀ x
    x = at @ np.asarray(w, dtype=np.float64)
    total = x.copy()
    limit = a_n.shape[0] + 1 if max_iter is None else max_iter
    for _ in range(limit):
        if not x.any():
            return total
        x = at @ x
        total += x
    if x.any():
        raise PruneError("influence did not terminate: the adjacency has a cycle (attribution graphs are DAGs)")
    return total


def influence(graph: Graph) -> np.ndarray:
    """[N] float64 influence of every node on the logits (module docstring)."""
    return propagate(normalize_rows(graph.adjacency), graph.logit_weight_vector())


def influence_dict(graph: Graph) -> dict:
    """Influence keyed by typed node key."""
    return dict(zip(graph.keys, influence(graph).tolist()))


__all__ = ["influence", "influence_dict", "normalize_rows", "normalized_edge_values", "propagate", "row_scale"]
