"""Predicted (EAP / EAP-IG) vs measured (exact patching) node effects, prompt by prompt.

Algorithm (``predicted_vs_measured``):
  1. Measured: for every node u, one masked forward with u's outgoing edges
     ablated gives F(M) - F(u removed) for every prompt at once.
  2. Predicted: per prompt, a ``MaskedModel`` on that one example and the
     method's node scores (EAP: one backward; EAP-IG: ``steps`` backwards).
  3. Pooled over (prompt, node) pairs: Pearson r, Spearman rho and the least
     squares line measured = slope * predicted + intercept. Dataset level: the
     same statistics of the per-node means over prompts. Spread: Pearson r per
     prompt (median, quartiles).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from circuits.discover.masking import MaskedModel
from circuits.discover.methods import eap, eap_ig
from circuits.errors import ValidationError


@dataclass(frozen=True)
class Agreement:
    """Agreement of predicted and measured node effects."""

    pearson: float
    """Pooled over (prompt, node) pairs."""
    spearman: float
    """Pooled rank correlation."""
    slope: float
    """Least-squares slope of measured on predicted (pooled)."""
    intercept: float
    """Least-squares intercept (pooled)."""
    mean_pearson: float
    """Pearson r of the per-node means over prompts (dataset-level agreement)."""
    mean_slope: float
    """Slope of the per-node means."""
    per_prompt_r: np.ndarray
    """[N] Pearson r per prompt (nan where a prompt's effects are constant)."""
    table: pd.DataFrame
    """Rows: prompt, node, predicted, measured, method, ablation."""


def _stats(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan"), float("nan"), float("nan"), float("nan")
    r = float(np.corrcoef(x, y)[0, 1])
    rank = lambda v: np.argsort(np.argsort(v, kind="stable"), kind="stable")
    rho = float(np.corrcoef(rank(x), rank(y))[0, 1])
    slope, icpt = np.polyfit(x, y, 1)
    return r, rho, float(slope), float(icpt)


def measured_node_effects(mm: MaskedModel) -> np.ndarray:
    """[N, n_nodes] exact per-prompt effects F(M) - F(node removed)."""
    full = mm.per_example(mm.ones())
    out = np.zeros((mm.n, mm.graph.n_nodes))
    for u in range(mm.graph.n_nodes):
        mask = mm.ones()
        mask[mm.graph.edge_upstream == u] = 0.0
        out[:, u] = full - mm.per_example(mask)
    return out


def predicted_vs_measured(model: Any, data: Any, method: str = "eap-ig", steps: int = 8,
                          ablation: str = "counterfactual", max_prompts: int | None = None,
                          on_progress: Callable | None = None, seed: int = 0,
                          qkv: str = "joint") -> Agreement:
    """Compare a gradient method's node scores with exact node patching (module docstring).

    ``seed``: of the resample ablation; ``qkv``: head input ports (node scores sum
    every outgoing edge, so they do not depend on it beyond float rounding)."""
    if method not in ("eap", "eap-ig"):
        raise ValidationError(f"method must be 'eap' or 'eap-ig', got {method!r}")
    if max_prompts is not None:
        data = data.subset(range(min(max_prompts, len(data))))
    mm = MaskedModel(model, data, ablation, qkv, seed=seed)
    measured = measured_node_effects(mm)
    predicted = np.zeros_like(measured)
    tell = on_progress or (lambda *a: None)
    for i in range(len(data)):
        one = MaskedModel(model, data.subset([i]), ablation, qkv, seed=mm.seed)
        predicted[i] = eap(one, "node") if method == "eap" else eap_ig(one, "node", steps)
        tell("predicted", i + 1, len(data))
    r, rho, slope, icpt = _stats(predicted.ravel(), measured.ravel())
    mr, _, mslope, _ = _stats(predicted.mean(0), measured.mean(0))
    per = np.array([_stats(predicted[i], measured[i])[0] for i in range(len(data))])
    names = [str(u) for u in mm.graph.upstream]
    table = pd.DataFrame({"prompt": np.repeat(np.arange(len(data)), len(names)),
                          "node": names * len(data), "predicted": predicted.ravel(),
                          "measured": measured.ravel()})
    table["method"], table["ablation"] = method, ablation
    return Agreement(r, rho, slope, icpt, mr, mslope, per, table)
