"""The typed result of every pruning method: ``PruneResult`` (alias ``Circuit``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from attribution.graph import Graph, NodeKey
from circuits.prune.scores import CircuitScores, circuit_scores


@dataclass(frozen=True, eq=False)
class PruneResult:
    """A pruned circuit with its provenance. Arrays indexed by node are over the
    *full* graph's node table (length N_full)."""

    graph: Graph
    """The pruned graph: kept nodes, kept edges (original signed weights)."""
    full_graph: Graph
    """The graph that was pruned."""
    node_mask: np.ndarray
    """[N_full] bool, nodes kept."""
    node_influence: np.ndarray
    """[N_full] float64 influence on the logits in the full graph."""
    edge_scores: np.ndarray
    """[n_kept_edges] float64 score of each kept edge, aligned with ``graph.edge_arrays()``
    (influence method: A_n[t,s]·(influence[t] + w[t]) in the node-pruned graph;
    top/threshold: |weight|; greedy: A_n[t,s]·(influence[t] + w[t]) in the kept graph;
    faithful: the influence method's scores in the kept graph)."""
    scores: CircuitScores
    """Replacement/completeness of the full, pruned and merged-error graphs."""
    method: str
    """``influence``, ``greedy``, ``top_edges``, ``threshold_edges`` or ``faithful``
    (``circuits.pipeline.faithful_selection``)."""
    params: dict = field(default_factory=dict)
    """The method's parameters (thresholds, n, …)."""
    influence_mask: np.ndarray | None = None
    """[N_full] bool, nodes kept by the node-influence threshold alone (influence method)."""

    @property
    def node_keys(self) -> tuple[NodeKey, ...]:
        """Typed keys of the kept nodes, canonical order."""
        return self.graph.keys

    @property
    def edges(self) -> pd.DataFrame:
        """Kept edges: ``source``, ``target`` (key strings), ``weight``, ``score``."""
        df = self.graph.edges()
        df["score"] = self.edge_scores
        return df

    @property
    def node_threshold(self) -> float | None:
        """Node threshold used (influence method), else None."""
        return self.params.get("node_threshold")

    @property
    def edge_threshold(self) -> float | None:
        """Edge threshold used (influence method), else None."""
        return self.params.get("edge_threshold")

    def cumulative_influence(self) -> np.ndarray:
        """[N_full] cumulative share of total influence at each node's rank (descending
        influence), as circuit-tracer writes into Neuronpedia's ``influence`` field."""
        infl = self.node_influence
        order = np.argsort(-infl, kind="stable")
        total = infl.sum()
        cum = np.cumsum(infl[order]) / total if total > 0 else np.zeros_like(infl)
        out = np.empty_like(infl)
        out[order] = cum
        return out

    def to_networkx(self):
        """The pruned graph as a ``networkx.DiGraph`` with node ``influence`` and edge
        ``score`` attributes added."""
        g = self.graph.to_networkx()
        infl = self.node_influence[self.node_mask]
        for key, x in zip(self.graph.nodes["key"].tolist(), infl.tolist()):
            g.nodes[key]["influence"] = x
        for (s, t), sc in zip(zip(self.edges["source"], self.edges["target"]), self.edge_scores.tolist()):
            g.edges[s, t]["score"] = sc
        return g

    def to_neuronpedia(self, **kwargs) -> dict:
        """Neuronpedia dict of the pruned graph, ``influence`` = cumulative influence."""
        kwargs.setdefault("node_threshold", self.node_threshold)
        return self.graph.to_neuronpedia(influence=self.cumulative_influence()[self.node_mask], **kwargs)


Circuit = PruneResult


def build_result(graph: Graph, node_mask: np.ndarray, edge_keep: np.ndarray, edge_score: np.ndarray,
                 node_influence: np.ndarray, method: str, params: dict,
                 influence_mask: np.ndarray | None = None) -> PruneResult:
    """Assemble a ``PruneResult`` from full-graph masks.

    ``edge_keep`` and ``edge_score`` are indexed by the full graph's stored edges in CSR
    order (``graph.edge_arrays()``); kept edges must join kept nodes. Because a subgraph
    keeps the relative node order, the kept edges in full CSR order are exactly the pruned
    graph's edges in its CSR order, so ``edge_score[edge_keep]`` aligns with it."""
    src, tgt, w = graph.edge_arrays()
    if (edge_keep & ~(node_mask[src] & node_mask[tgt])).any():
        raise AssertionError("a kept edge touches a removed node")  # a bug, not user input
    adj = sp.csr_matrix((w[edge_keep], (tgt[edge_keep], src[edge_keep])), shape=graph.adjacency.shape)
    kept = Graph(graph.nodes, adj, graph.logit_weights, graph.metadata, graph.dropped_mass)
    pruned = kept.subgraph(node_mask)
    scores = circuit_scores(graph, pruned, node_mask)
    return PruneResult(pruned, graph, node_mask, node_influence, np.asarray(edge_score, np.float64)[edge_keep],
                       scores, method, dict(params), influence_mask)


__all__ = ["Circuit", "PruneResult", "build_result"]
