"""Differences between two attribution graphs or two aggregates.

Use it for a clean prompt against its counterfactual (same length, so positions align),
for one dictionary or model against another on the same prompt, or for two aggregates.
Feature ids of two different dictionaries name different latents, so for those only the
error, token and logit nodes, and edges among them, correspond.

Algorithm (``diff``):
1. Turn each side into a view: node key -> (activation, influence), edge (source, target)
   -> weight. A ``Graph`` (or a circuit with ``.graph``) gives its own keys, activations,
   influences (``circuits.prune.influence``) and stored edges; an ``Aggregate`` gives its
   aggregated keys with the mean statistics (absent = 0). A graph compared with an
   aggregate is first aggregated alone with the aggregate's config, so keys match.
2. Nodes and edges are matched by key: only in A, only in B, or shared.
3. Shared items get deltas (B − A) of activation, influence and weight; a |delta| at most
   ``DiffConfig.atol`` counts as equal.
4. Summary: node and edge Jaccard indices |A ∩ B| / |A ∪ B| (1 for two empty sets), the
   Pearson correlation of shared edge weights (NaN with fewer than 2 shared edges or a
   constant side), the largest |weight delta|, and ``is_empty``: no item on one side only
   and every delta within ``atol`` (a graph diffed with itself is empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from attribution.graph import Graph
from circuits.multi.aggregate import Aggregate, AggregateConfig, aggregate
from circuits.multi.errors import MultiError


@dataclass(frozen=True)
class DiffConfig:
    """How two graphs or aggregates are compared."""

    atol: float = 0.0
    """A |delta| at most this counts as no change (in ``is_empty`` and ``changed``)."""
    influence: bool = True
    """Compute node influence for a ``Graph`` side (one sparse propagation per graph)."""

    def __post_init__(self) -> None:
        if not (np.isfinite(self.atol) and self.atol >= 0):
            raise MultiError(f"atol must be a finite number >= 0, got {self.atol}")


@dataclass(frozen=True)
class DiffSummary:
    """Headline numbers of a diff."""

    n_nodes_a: int
    """Nodes of A."""
    n_nodes_b: int
    """Nodes of B."""
    n_nodes_shared: int
    """Nodes in both."""
    node_jaccard: float
    """|A ∩ B| / |A ∪ B| of the node sets (1 when both are empty)."""
    n_edges_a: int
    """Edges of A."""
    n_edges_b: int
    """Edges of B."""
    n_edges_shared: int
    """Edges in both."""
    edge_jaccard: float
    """|A ∩ B| / |A ∪ B| of the edge sets (1 when both are empty)."""
    weight_corr: float
    """Pearson correlation of the shared edges' weights (NaN: < 2 shared or a constant side)."""
    max_abs_weight_delta: float
    """Largest |B − A| over shared edges (0 when none are shared)."""


@dataclass(frozen=True)
class GraphDiff:
    """Result of ``diff``: every node and edge of A ∪ B with its side and deltas."""

    nodes: pd.DataFrame
    """key, type, in_a, in_b, activation_a/_b/_delta, influence_a/_b/_delta (NaN on a missing side)."""
    edges: pd.DataFrame
    """source, target, in_a, in_b, weight_a, weight_b, weight_delta (NaN on a missing side)."""
    summary: DiffSummary
    """Jaccard indices, weight correlation, counts."""
    config: DiffConfig = field(default_factory=DiffConfig)
    """Settings used."""

    @property
    def nodes_only_a(self) -> pd.DataFrame:
        """Nodes of A that B lacks."""
        return self.nodes[self.nodes["in_a"] & ~self.nodes["in_b"]]

    @property
    def nodes_only_b(self) -> pd.DataFrame:
        """Nodes of B that A lacks."""
        return self.nodes[~self.nodes["in_a"] & self.nodes["in_b"]]

    @property
    def edges_only_a(self) -> pd.DataFrame:
        """Edges of A that B lacks."""
        return self.edges[self.edges["in_a"] & ~self.edges["in_b"]]

    @property
    def edges_only_b(self) -> pd.DataFrame:
        """Edges of B that A lacks."""
        return self.edges[~self.edges["in_a"] & self.edges["in_b"]]

    @property
    def shared_edges(self) -> pd.DataFrame:
        """Edges of both, with their weights and delta."""
        return self.edges[self.edges["in_a"] & self.edges["in_b"]]

    def changed(self) -> pd.DataFrame:
        """Shared edges whose |weight delta| exceeds ``atol``, largest first."""
        s = self.shared_edges
        s = s[s["weight_delta"].abs() > self.config.atol]
        return s.iloc[np.argsort(-s["weight_delta"].abs().to_numpy(), kind="stable")]

    @property
    def is_empty(self) -> bool:
        """No item on one side only, and every shared delta within ``atol`` (step 4)."""
        both_n = self.nodes["in_a"] & self.nodes["in_b"]
        tol = self.config.atol
        return (bool(both_n.all()) and bool((self.edges["in_a"] & self.edges["in_b"]).all())
                and bool((self.nodes.loc[both_n, "activation_delta"].abs() <= tol).all())
                and bool((self.edges["weight_delta"].abs() <= tol).all()))


def _view(obj, side: str, cfg: DiffConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Step 1: (nodes[key, type, activation, influence], edges[source, target, weight])."""
    if isinstance(obj, Aggregate):
        t = obj.nodes
        nodes = pd.DataFrame({"key": t["key"], "type": t["type"], "activation": t["activation_mean"],
                              "influence": t["influence_mean"]})
        e = obj.edges
        return nodes, pd.DataFrame({"source": e["source"], "target": e["target"], "weight": e["weight_mean"]})
    g = obj if isinstance(obj, Graph) else getattr(obj, "graph", None)
    if not isinstance(g, Graph):
        raise MultiError(f"side {side} is a {type(obj).__name__}; pass a Graph, a pruned circuit or an Aggregate")
    if cfg.influence and g.n_edges:
        from circuits.prune import influence

        infl = influence(g)
    else:
        infl = np.zeros(g.n_nodes)
    nodes = pd.DataFrame({"key": g.nodes["key"], "type": g.nodes["type"], "activation": g.nodes["activation"],
                          "influence": infl})
    return nodes, g.edges()


def _jaccard(shared: int, a: int, b: int) -> float:
    union = a + b - shared
    return shared / union if union else 1.0


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def diff(a, b, config: DiffConfig | None = None) -> GraphDiff:
    """Compare A and B (``Graph``, pruned circuit or ``Aggregate``); see the module docstring."""
    cfg = config or DiffConfig()
    agg_a, agg_b = isinstance(a, Aggregate), isinstance(b, Aggregate)
    if agg_a and agg_b and a.config.positions != b.config.positions:
        raise MultiError(f"aggregates use different position modes ({a.config.positions!r} vs "
                         f"{b.config.positions!r}); aggregate both with one AggregateConfig")
    if agg_a != agg_b:  # step 1: a lone graph becomes a one-prompt aggregate with the other's config
        conf: AggregateConfig = (a if agg_a else b).config
        a, b = (a, aggregate([b], conf)) if agg_a else (aggregate([a], conf), b)
    na, ea = _view(a, "A", cfg)
    nb, eb = _view(b, "B", cfg)
    # step 2-3: outer joins on the key
    nodes = na.merge(nb, on="key", how="outer", suffixes=("_a", "_b"), indicator=True, sort=False)
    nodes["type"] = nodes["type_a"].fillna(nodes["type_b"])
    nodes["in_a"] = nodes["_merge"] != "right_only"
    nodes["in_b"] = nodes["_merge"] != "left_only"
    for c in ("activation", "influence"):
        nodes[f"{c}_delta"] = nodes[f"{c}_b"] - nodes[f"{c}_a"]
    nodes = nodes[["key", "type", "in_a", "in_b", "activation_a", "activation_b", "activation_delta",
                   "influence_a", "influence_b", "influence_delta"]].reset_index(drop=True)
    edges = ea.merge(eb, on=["source", "target"], how="outer", suffixes=("_a", "_b"), indicator=True, sort=False)
    edges["in_a"] = edges["_merge"] != "right_only"
    edges["in_b"] = edges["_merge"] != "left_only"
    edges["weight_delta"] = edges["weight_b"] - edges["weight_a"]
    edges = edges[["source", "target", "in_a", "in_b", "weight_a", "weight_b", "weight_delta"]].reset_index(drop=True)
    # step 4
    ns = int((nodes["in_a"] & nodes["in_b"]).sum())
    shared = edges[edges["in_a"] & edges["in_b"]]
    es = len(shared)
    summary = DiffSummary(
        n_nodes_a=len(na), n_nodes_b=len(nb), n_nodes_shared=ns, node_jaccard=_jaccard(ns, len(na), len(nb)),
        n_edges_a=len(ea), n_edges_b=len(eb), n_edges_shared=es, edge_jaccard=_jaccard(es, len(ea), len(eb)),
        weight_corr=_pearson(shared["weight_a"].to_numpy(dtype=np.float64),
                             shared["weight_b"].to_numpy(dtype=np.float64)),
        max_abs_weight_delta=float(shared["weight_delta"].abs().max()) if es else 0.0)
    return GraphDiff(nodes, edges, summary, cfg)


__all__ = ["DiffConfig", "DiffSummary", "GraphDiff", "diff"]
