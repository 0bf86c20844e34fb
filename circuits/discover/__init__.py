"""Component-level circuit discovery on one masking core (DESIGN.md B5).

``discover(model, data, method="eap-ig", level="component", ablation="counterfactual")``
scores every edge (or node) of the component graph (embed, heads, MLPs,
logits) and selects a circuit.

Algorithm:
  1. Build a ``MaskedModel`` (``masking.py``): clean and ablated node writes
     per length group of the task data, under the chosen ablation.
  2. Score every unit with the method (``methods.py``): eap, eap-ig, exact, acdc.
  3. Select: ACDC keeps what it did not remove; the other methods keep the
     ``top_n`` largest |score| units, or those with |score| >= ``threshold``
     (> 0; ``top_n`` and ``threshold`` exclude each other), or (default) the top
     ``top_fraction`` of units.
  4. Return a ``ComponentCircuitResult`` whose every score row records the
     ablation, method and metric.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from circuits.discover.ablation import ABLATIONS
from circuits.discover.graph import (
    EMBED,
    LOGITS,
    ComponentGraph,
    Edge,
    Node,
    display_name,
    parse_node,
)
from circuits.discover.masking import MaskedModel, check_model
from circuits.discover.methods import acdc, eap, eap_ig, exact, integrated_gradients
from circuits.discover.result import ComponentCircuitResult, scores_frame
from circuits.errors import DiscoveryError

METHODS = ("eap", "eap-ig", "exact", "acdc")
LEVELS = ("edge", "node")


@dataclass(frozen=True)
class DiscoverConfig:
    """How ``discover`` scores and selects."""

    method: Literal["eap", "eap-ig", "exact", "acdc"] = "eap-ig"
    """Scoring method."""
    level: Literal["edge", "node"] = "edge"
    """edge: component-graph edges; node: heads, MLPs and embed ("component" = edge)."""
    ablation: Literal["counterfactual", "zero", "mean", "resample"] = "counterfactual"
    """What a removed edge carries instead of its clean value."""
    qkv: Literal["joint", "separate"] = "joint"
    """A head's input is one edge target, or three (q, k, v)."""
    ig_steps: int = 8
    """Interpolation steps of EAP-IG."""
    tau: float = 0.05
    """ACDC removal threshold, in metric units."""
    top_n: int | None = None
    """Select the top_n largest |score| units (not ACDC)."""
    threshold: float | None = None
    """Select units with |score| >= threshold, in metric units (not ACDC; > 0; give
    ``top_n`` or ``threshold``, not both)."""
    top_fraction: float = 0.1
    """Default selection: this fraction of units, rounded up (not ACDC)."""
    metric: str | None = None
    """Override of the task's metric (logit_diff, prob, kl, prob_diff)."""
    batch_size: int | None = None
    """Examples per forward (None: whole length groups)."""
    seed: int = 0
    """Seed of the resample ablation."""

    def __post_init__(self) -> None:
        level = "edge" if self.level == "component" else self.level
        object.__setattr__(self, "level", level)
        for name, value, allowed in (("method", self.method, METHODS), ("level", level, LEVELS),
                                     ("ablation", self.ablation, ABLATIONS),
                                     ("qkv", self.qkv, ("joint", "separate"))):
            if value not in allowed:
                raise DiscoveryError(f"{name} must be one of {allowed}, got {value!r}")
        if self.ig_steps < 1 or self.tau < 0:
            raise DiscoveryError(f"need ig_steps >= 1 and tau >= 0, got {self.ig_steps}, {self.tau}")
        if self.top_n is not None and self.top_n < 0:
            raise DiscoveryError(f"top_n must be >= 0, got {self.top_n}")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold > 0):
            raise DiscoveryError(f"threshold must be a finite |score| > 0 (metric units), "
                                 f"got {self.threshold}")
        if self.top_n is not None and self.threshold is not None:
            raise DiscoveryError("give top_n or threshold to select units, not both")
        if not 0 < self.top_fraction <= 1:
            raise DiscoveryError(f"top_fraction must lie in (0, 1], got {self.top_fraction}")


def score_units(mm: MaskedModel, cfg: DiscoverConfig,
                on_progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(scores, ACDC kept flags or None) of every unit under ``cfg``."""
    tell = on_progress or (lambda *a: None)
    if cfg.method == "eap":
        return eap(mm, cfg.level), None
    if cfg.method == "eap-ig":
        return eap_ig(mm, cfg.level, cfg.ig_steps, tell), None
    if cfg.method == "exact":
        return exact(mm, cfg.level, tell), None
    return acdc(mm, cfg.level, cfg.tau, on_progress=tell)


def _select(values: np.ndarray, kept: np.ndarray | None, cfg: DiscoverConfig) -> np.ndarray:
    if kept is not None:
        return kept
    order = np.argsort(-np.abs(values), kind="stable")
    chosen = np.zeros(len(values), dtype=bool)
    if cfg.top_n is not None:
        chosen[order[:cfg.top_n]] = True
    elif cfg.threshold is not None:
        chosen = np.abs(values) >= cfg.threshold
    else:
        chosen[order[:math.ceil(cfg.top_fraction * len(values))]] = True
    return chosen


def discover_masked(mm: MaskedModel, cfg: DiscoverConfig,
                    on_progress: Callable | None = None) -> ComponentCircuitResult:
    """``discover`` on a prepared ``MaskedModel`` (its ablation and qkv mode are used)."""
    if mm.ablation != cfg.ablation or mm.graph.qkv != cfg.qkv:
        raise DiscoveryError(f"the MaskedModel was built with ablation={mm.ablation!r}, "
                             f"qkv={mm.graph.qkv!r} but the config asks {cfg.ablation!r}, {cfg.qkv!r}")
    t0 = time.perf_counter()
    values, kept = score_units(mm, cfg, on_progress)
    runtime = time.perf_counter() - t0
    metric = mm.data.metric_kind
    info = {"method": cfg.method, "ablation": cfg.ablation, "metric": metric}
    df = scores_frame(mm.graph, cfg.level, values, _select(values, kept, cfg), info)
    meta = {**asdict(cfg), "n_examples": mm.n, "n_edges": mm.graph.n_edges,
            "n_nodes": mm.graph.n_nodes, "model": str(getattr(mm.model, "path", ""))}
    return ComponentCircuitResult(cfg.method, cfg.level, cfg.ablation, metric, df, mm.graph,
                                  mm.metric(mm.ones()), mm.metric(mm.zeros()), runtime, meta)


def discover(model: Any, data: Any, method: str = "eap-ig", level: str = "component",
             ablation: str = "counterfactual", on_progress: Callable | None = None,
             **cfg: Any) -> ComponentCircuitResult:
    """Score and select a component circuit (module docstring); ``cfg``: DiscoverConfig fields.

    ``level``: "component" (= "edge": component-graph edges) or "node" (heads, MLPs, embed).
    """
    c = DiscoverConfig(method=method, level=level, ablation=ablation, **cfg)
    mm = MaskedModel(model, data, c.ablation, c.qkv, c.batch_size, c.seed, c.metric)
    return discover_masked(mm, c, on_progress)


__all__ = [
    "ABLATIONS", "EMBED", "LEVELS", "LOGITS", "METHODS", "ComponentCircuitResult",
    "ComponentGraph", "DiscoverConfig", "Edge", "MaskedModel", "Node", "acdc", "check_model",
    "discover", "discover_masked", "display_name", "eap", "eap_ig", "exact",
    "integrated_gradients", "parse_node",
]
