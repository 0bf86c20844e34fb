"""Feature-level circuit recovery: score an attribution graph against a known feature circuit.

``score_recovery(graph, truth, config)`` compares a ``Graph`` (node table + CSR adjacency
A[target, source]) with a ``FeatureTruth`` (``circuits.organisms.feature_truth``):

  1. Node AUC: over the graph's feature nodes, the ROC AUC (Mann-Whitney, ties 1/2;
     ``circuits.bench.metrics.roc_auc``) of the node score for "is a true feature node".
     The score is the node's influence on the logits (``circuits.prune.influence``), or
     with ``node_score="activation"`` its activation.
  2. Edge AUC: over the stored edges whose endpoints are token, feature or logit nodes
     (error nodes stand outside any dictionary's vocabulary and are left out), the ROC AUC
     of |A[t, s]| for "is a true edge"; ``edge_auc_influence`` uses the pruning's edge
     score A_n[t, s]·(influence[t] + w[t]) on the full graph instead.
  3. Prune the graph (``config.prune``, default influence pruning at 0.8 / 0.98). Node
     precision = true kept feature nodes / kept feature nodes; node recall = true units
     recovered / true units, where a true unit counts as recovered when any graph node
     standing for it (``truth.node_groups``; several learned latents may match one unit)
     is kept. Edge precision and recall likewise over the kept edges (error endpoints
     excluded, as in 2).
  4. AUCs are None when a universe has no positive or no negative; precision is None
     when nothing was kept.

``error_share`` is the share of node influence carried by error nodes (how much of the
graph the dictionary fails to explain; ~0 for the organism's true-MLP transcoders).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from attribution.graph import Graph
from circuits.bench.metrics import roc_auc
from circuits.errors import BenchmarkError
from circuits.prune import PruneConfig, influence, prune_with
from circuits.prune.influence_prune import edge_influence_scores


@dataclass(frozen=True)
class RecoveryConfig:
    """How a graph is scored against a feature truth."""

    node_score: Literal["influence", "activation"] = "influence"
    """Node score ranked for the node AUC: influence on the logits, or the activation."""
    prune: PruneConfig = field(default_factory=PruneConfig)
    """Pruning that yields the circuit scored for precision and recall."""

    def __post_init__(self) -> None:
        if self.node_score not in ("influence", "activation"):
            raise BenchmarkError(f"unknown node_score {self.node_score!r}; 'influence' or 'activation'")
        if not isinstance(self.prune, PruneConfig):
            raise BenchmarkError("RecoveryConfig.prune must be a circuits.prune.PruneConfig")


@dataclass(frozen=True)
class FeatureRecovery:
    """Scores of one graph against one feature truth (module docstring)."""

    node_auc: float | None
    """ROC AUC of the node score over feature nodes."""
    edge_auc: float | None
    """ROC AUC of |edge weight| over non-error edges."""
    edge_auc_influence: float | None
    """ROC AUC of the pruning's edge influence score over non-error edges."""
    node_precision: float | None
    """True kept feature nodes / kept feature nodes of the pruned circuit."""
    node_recall: float
    """True units with a kept graph node / true units."""
    edge_precision: float | None
    """True kept edges / kept non-error edges."""
    edge_recall: float
    """True edges with a kept graph edge / true edges."""
    error_share: float
    """Share of total node influence on error nodes."""
    n_feature_nodes: int
    """Feature nodes in the graph."""
    n_true_nodes: int
    """True units (the truth's node groups)."""
    n_true_nodes_in_graph: int
    """Graph feature nodes that are true."""
    n_edges: int
    """Non-error edges in the graph."""
    n_true_edges: int
    """True edges (the truth's edge groups)."""
    n_true_edges_in_graph: int
    """Graph non-error edges that are true."""
    n_kept_features: int
    """Feature nodes kept by pruning."""
    n_kept_edges: int
    """Non-error edges kept by pruning."""

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    if labels.size == 0 or labels.all() or not labels.any():
        return None
    return roc_auc(scores, labels)


def _edge_universe(graph: Graph):
    """(src, tgt, weight, mask) of stored edges; mask drops edges touching error nodes."""
    src, tgt, w = graph.edge_arrays()
    err = graph.type_mask("error")
    return src, tgt, w, ~(err[src] | err[tgt])


def score_recovery(graph: Graph, truth, config: RecoveryConfig = RecoveryConfig()) -> FeatureRecovery:
    """Node/edge AUC and pruned-circuit precision/recall of ``graph`` (module docstring).

    ``truth`` needs ``is_true_node(key)``, ``is_true_edge(src, tgt)``, ``node_groups`` and
    ``edge_groups`` (``circuits.organisms.feature_truth.FeatureTruth``)."""
    if not isinstance(graph, Graph):
        raise BenchmarkError(f"score_recovery needs an attribution Graph, got {type(graph).__name__}")
    for attr in ("is_true_node", "is_true_edge", "canonical_edge", "node_groups", "edge_groups"):
        if not hasattr(truth, attr):
            raise BenchmarkError(f"truth lacks {attr!r}; pass a circuits.organisms.feature_truth.FeatureTruth")
    keys = graph.keys
    infl = influence(graph)
    feat = graph.type_mask("feature")
    fidx = np.flatnonzero(feat)
    node_true = np.array([truth.is_true_node(keys[i]) for i in fidx], dtype=bool)
    node_s = infl[fidx] if config.node_score == "influence" else \
        np.abs(graph.nodes["activation"].to_numpy()[fidx])
    src, tgt, w, ok = _edge_universe(graph)
    eidx = np.flatnonzero(ok)
    edge_true = np.array([truth.is_true_edge(keys[src[e]], keys[tgt[e]]) for e in eidx], dtype=bool)
    e_infl = edge_influence_scores(graph, np.ones(graph.n_nodes, dtype=bool))[eidx]

    circuit = prune_with(graph, config.prune)
    kept_nodes = {keys[i] for i in np.flatnonzero(circuit.node_mask & feat)}
    pk = circuit.graph.keys
    ps, pt, _, pok = _edge_universe(circuit.graph)
    kept_edges = {(pk[s], pk[t]) for s, t in zip(ps[pok].tolist(), pt[pok].tolist())}
    true_kept_nodes = sum(truth.is_true_node(k) for k in kept_nodes)
    true_kept_edges = sum(truth.is_true_edge(s, t) for s, t in kept_edges)
    node_hit = [any(k in kept_nodes for k in g) for g in truth.node_groups]
    kept_canon = {truth.canonical_edge(s, t) for s, t in kept_edges}
    edge_hit = [any(e in kept_canon for e in g) for g in truth.edge_groups]
    total = infl.sum()
    return FeatureRecovery(
        node_auc=_auc(node_s, node_true),
        edge_auc=_auc(np.abs(w[eidx]), edge_true),
        edge_auc_influence=_auc(e_infl, edge_true),
        node_precision=true_kept_nodes / len(kept_nodes) if kept_nodes else None,
        node_recall=float(np.mean(node_hit)) if node_hit else 0.0,
        edge_precision=true_kept_edges / len(kept_edges) if kept_edges else None,
        edge_recall=float(np.mean(edge_hit)) if edge_hit else 0.0,
        error_share=float(infl[graph.type_mask("error")].sum() / total) if total > 0 else 0.0,
        n_feature_nodes=int(fidx.size), n_true_nodes=len(truth.node_groups),
        n_true_nodes_in_graph=int(node_true.sum()), n_edges=int(eidx.size),
        n_true_edges=len(truth.edge_groups), n_true_edges_in_graph=int(edge_true.sum()),
        n_kept_features=len(kept_nodes), n_kept_edges=len(kept_edges))


__all__ = ["FeatureRecovery", "RecoveryConfig", "score_recovery"]
