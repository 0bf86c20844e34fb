"""Replacement and completeness scores of a graph (circuit-tracer's definitions).

With A_n the row-normalised |A|, w the logit weights and ``influence`` as in
``circuits.prune.node_influence``:

1. Replacement score = T / (T + E), where T is the summed influence of the token nodes
   and E that of the error nodes: the share of the logits' input mass that traces back
   to the input tokens through features only, rather than ending in an error node.
2. Completeness score = Σ_i (1 − e_i)(influence_i + w_i) / Σ_i (influence_i + w_i), where
   e_i = Σ_{s error} A_n[i, s] is the fraction of node i's (normalised) input coming from
   error nodes; nodes without inputs count as fully explained (e_i = 0).
3. Both are NaN when their denominator is zero (no mass reaches tokens or errors).

Variants, all through ``graph_scores``:
- the full graph;
- a pruned graph on its own (rows re-normalised over the kept inputs);
- ``merge_into_errors(graph, keep)``: every feature not kept is merged into the error
  node at its (layer, pos) (created if absent): its outgoing weights are added (signed)
  to that error node's and its inputs are dropped, so pruned computation counts as
  unexplained. All edges of the full graph are used; only nodes are merged.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from attribution.graph import ErrorNode, Graph
from circuits.prune.node_influence import normalize_rows, propagate


class GraphScores(NamedTuple):
    """Scores of one graph."""

    replacement: float
    """Token influence / (token + error influence); NaN when both are 0."""
    completeness: float
    """Influence-weighted mean non-error input fraction; NaN when no influence."""
    token_influence: float
    """Summed influence of the token nodes."""
    error_influence: float
    """Summed influence of the error nodes."""


class CircuitScores(NamedTuple):
    """Scores of a pruning result's three views."""

    full: GraphScores
    """The unpruned graph."""
    pruned: GraphScores
    """The pruned graph alone (rows re-normalised over kept inputs)."""
    merged: GraphScores
    """The full graph with pruned features merged into their (layer, pos) error node."""


def graph_scores(graph: Graph) -> GraphScores:
    """Replacement and completeness of ``graph`` (module docstring, steps 1–3)."""
    a_n = normalize_rows(graph.adjacency)
    w = graph.logit_weight_vector()
    infl = propagate(a_n, w)
    is_err = graph.type_mask("error")
    tok = float(infl[graph.type_mask("token")].sum())
    err = float(infl[is_err].sum())
    replacement = tok / (tok + err) if tok + err > 0 else math.nan
    err_frac = np.asarray(a_n[:, np.flatnonzero(is_err)].sum(axis=1)).ravel()
    out = infl + w
    completeness = float(((1 - err_frac) * out).sum() / out.sum()) if out.sum() > 0 else math.nan
    return GraphScores(replacement, completeness, tok, err)


def replacement_score(graph: Graph) -> float:
    """Token influence / (token + error influence)."""
    return graph_scores(graph).replacement


def completeness_score(graph: Graph) -> float:
    """Influence-weighted mean over nodes of the non-error input fraction."""
    return graph_scores(graph).completeness


def merge_into_errors(graph: Graph, keep: np.ndarray) -> Graph:
    """The graph in which every feature with ``keep`` False is merged into its
    (layer, pos) error node; other nodes all stay (see the module docstring)."""
    keep = np.asarray(keep, dtype=bool).copy()
    keep[~graph.type_mask("feature")] = True
    keys = [k for k, kp in zip(graph.keys, keep) if kp]
    present = set(keys)
    new_errors = sorted({ErrorNode(k.layer, k.pos) for k, kp in zip(graph.keys, keep)
                         if not kp and ErrorNode(k.layer, k.pos) not in present})
    keys += new_errors
    where = {k: i for i, k in enumerate(keys)}
    target = [where[k] if kp else where[ErrorNode(k.layer, k.pos)] for k, kp in zip(graph.keys, keep)]
    n_old, n_new = graph.n_nodes, len(keys)
    # P sums each old source column into its new column; R keeps the kept rows.
    p = sp.csr_matrix((np.ones(n_old), (np.arange(n_old), target)), shape=(n_old, n_new))
    kept_rows = np.flatnonzero(keep)
    r = sp.csr_matrix((np.ones(kept_rows.size), (np.arange(kept_rows.size), kept_rows)), shape=(n_new, n_old))
    adj = sp.csr_matrix(r @ graph.adjacency.astype(np.float64) @ p)
    table = graph.nodes.iloc[kept_rows]
    tok_rows = graph.nodes[graph.nodes["type"] == "token"]
    tokens = dict(zip(tok_rows["pos"].tolist(), tok_rows["token"].tolist()))
    pad = len(new_errors)
    logit_w = graph.logit_weights  # logits are all kept, in order
    return Graph.from_keys(
        keys, adj,
        activation=np.concatenate([table["activation"].to_numpy(), np.zeros(pad)]),
        logit_weights=logit_w, metadata=graph.metadata,
        token=table["token"].tolist() + [tokens.get(k.pos, "") for k in new_errors],
        logit_prob=np.concatenate([table["logit_prob"].to_numpy(), np.zeros(pad)]),
        label=table["label"].tolist() + [""] * pad,
        dropped_mass=np.concatenate([graph.dropped_mass[kept_rows], np.zeros(pad)]),
    )


def circuit_scores(graph: Graph, pruned: Graph, keep: np.ndarray) -> CircuitScores:
    """Scores of the full graph, the pruned graph and the merged-error variant."""
    return CircuitScores(graph_scores(graph), graph_scores(pruned), graph_scores(merge_into_errors(graph, keep)))


__all__ = [
    "CircuitScores",
    "GraphScores",
    "circuit_scores",
    "completeness_score",
    "graph_scores",
    "merge_into_errors",
    "replacement_score",
]
