"""Typed discovery results: scores table, selected circuit, provenance.

Algorithm (``ComponentCircuitResult``):
  1. ``scores`` holds one row per unit (edge or node) with its score, |score|,
     rank by |score| (1 = largest), membership in the selected circuit and the
     ablation, method and metric that produced it.
  2. ``top(n)`` / ``above(threshold)`` return re-selected copies (frozen
     dataclass, ``dataclasses.replace``); ``mask()`` gives the selected
     circuit as an [n_edges] {0,1} edge mask for the masking core.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from circuits.discover.graph import ComponentGraph, Edge
from circuits.errors import DiscoveryError


@dataclass(frozen=True)
class ComponentCircuitResult:
    """Scores and selected circuit of one discovery run."""

    method: str
    """eap, eap-ig, exact or acdc."""
    level: str
    """edge (component graph edges) or node (heads, MLPs, embed)."""
    ablation: str
    """counterfactual, zero, mean or resample (recorded on every row too)."""
    metric: str
    """Task metric (logit_diff, prob, kl, prob_diff); kl scores use -KL."""
    scores: pd.DataFrame
    """One row per unit: unit, upstream, downstream, port, score, abs_score, rank,
    in_circuit, method, ablation, metric."""
    graph: ComponentGraph = field(repr=False)
    """The component graph the units index."""
    clean_metric: float = float("nan")
    """F(M): metric with every edge clean."""
    ablated_metric: float = float("nan")
    """F(empty): metric with every edge ablated."""
    runtime_s: float = 0.0
    """Wall time of the scoring."""
    metadata: dict = field(default_factory=dict)
    """Config and provenance (ablation, qkv, steps, tau, n examples, seed...)."""

    @property
    def values(self) -> np.ndarray:
        """[n_units] scores in unit order."""
        return self.scores["score"].to_numpy()

    @property
    def selected(self) -> list[str]:
        """Names of the units in the circuit, by decreasing |score|."""
        s = self.scores[self.scores["in_circuit"]].sort_values("rank")
        return s["unit"].tolist()

    def _with(self, chosen: np.ndarray, how: str) -> ComponentCircuitResult:
        df = self.scores.copy()
        df["in_circuit"] = chosen
        return replace(self, scores=df, metadata={**self.metadata, "selection": how})

    def top(self, n: int) -> ComponentCircuitResult:
        """The same scores with the ``n`` largest-|score| units selected."""
        if n < 0:
            raise DiscoveryError(f"top(n) needs n >= 0, got {n}")
        return self._with(self.scores["rank"].to_numpy() <= n, f"top {n}")

    def above(self, threshold: float) -> ComponentCircuitResult:
        """The same scores with every unit of |score| >= threshold selected."""
        return self._with(self.scores["abs_score"].to_numpy() >= threshold, f"|score| >= {threshold}")

    def mask(self) -> np.ndarray:
        """The selected circuit as an [n_edges] {0,1} edge mask."""
        chosen = self.scores["in_circuit"].to_numpy().astype(np.float32)
        return chosen if self.level == "edge" else self.graph.nodes_to_edge_mask(chosen)


def scores_frame(graph: ComponentGraph, level: str, values: np.ndarray, chosen: np.ndarray,
                 info: dict[str, Any]) -> pd.DataFrame:
    """The scores table (see ``ComponentCircuitResult.scores``)."""
    if level == "edge":
        units: list = graph.edges
        up = [str(e.upstream) for e in units]
        down = [str(e.downstream) for e in units]
        port = [e.port or "" for e in units]
    else:
        units = graph.upstream
        up, down, port = [str(u) for u in units], [""] * len(units), [""] * len(units)
    abs_v = np.abs(values)
    rank = np.empty(len(values), dtype=int)
    rank[np.argsort(-abs_v, kind="stable")] = np.arange(1, len(values) + 1)
    df = pd.DataFrame({"unit": [str(u) for u in units], "upstream": up, "downstream": down,
                       "port": port, "score": values, "abs_score": abs_v, "rank": rank,
                       "in_circuit": np.asarray(chosen, dtype=bool)})
    for k, v in info.items():
        df[k] = v
    return df


__all__ = ["ComponentCircuitResult", "Edge", "scores_frame"]
