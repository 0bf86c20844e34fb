"""Gradient node scores (IG, attribution patching, jump-aware) against exact patching.

Nodes are feature and error nodes of the spliced replacement model; every method
estimates M(node ablated) − M(clean) for the task's logit difference M.

Algorithm (``node_score_agreement``):
  1. For each of the first ``n_prompts`` task examples: build the node scores with
     ``method="patching"`` (one forward per node: the measurement) and with each
     gradient method, under the same ablation (default: the example's corrupted
     prompt, position by position).
  2. Align the scores by node key (a node missing from one method scores 0) and
     tag each row as a feature or an error node.
  3. Pearson r, Spearman rho and the least-squares slope of patching on the
     method, pooled over (prompt, node) pairs, overall and per node kind.
  4. Cost per prompt in single-prompt forwards / backwards (every backward copy also
     runs a forward), excluding the clean and counterfactual forwards all methods
     share: jump-aware's is counted as it runs (graph metadata); the others follow
     from ``attribution.attribute.patching``'s loops: atp 2 / 1, ig 1 + L·steps / L·steps
     (L dictionary layers), patching 1 + n + ceil(n / batch_size) / 0 (n nodes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class NodeScoreAgreement:
    """Agreement of gradient node scores with exact patching."""

    pearson: dict
    """{method: pooled Pearson r with patching}."""
    spearman: dict
    """{method: pooled Spearman rho with patching}."""
    slope: dict
    """{method: least-squares slope of patching on the method}."""
    by_kind: pd.DataFrame
    """Rows (method, kind in all/feature/error): pearson, spearman, slope, n."""
    table: pd.DataFrame
    """Rows (prompt, node, kind): patching and one column per method."""
    ablation: str
    """zero | mean | counterfactual."""
    ig_steps: int
    """Integration steps of IG."""
    cost: dict = field(default_factory=dict)
    """{method (patching too): {"forwards", "backwards"}: mean per prompt} (module docstring)."""


GRADIENT_METHODS = ("ig", "atp", "jump-aware")
"""Methods ``node_score_agreement`` compares with exact patching."""


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    from scipy import stats

    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan"), float("nan"), float("nan")
    return (float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0]),
            float(np.polyfit(x, y, 1)[0]))


def node_score_agreement(model, dictionaries, data, n_prompts: int = 6,
                         methods: tuple = ("ig", "atp"), ablation: str = "counterfactual",
                         ig_steps: int = 16, batch_size: int = 32,
                         jump_aware: dict | None = None,
                         on_progress: Callable[[int, int], None] | None = None
                         ) -> NodeScoreAgreement:
    """Compare gradient node scores with exact patching on task examples (module docstring).

    ``methods``: any of ig, atp, jump-aware; ``jump_aware``: ``GraphConfig`` fields for
    jump-aware (``correct_*``, e.g. ``{"correct_top": 50}``; None = the defaults)."""
    from attribution import GraphConfig, ReplacementModel, build_graph, logit_diff
    from circuits.errors import ValidationError

    if n_prompts < 1 or n_prompts > len(data):
        raise ValidationError(f"n_prompts must lie in 1..{len(data)} (the task has {len(data)} "
                              f"examples), got {n_prompts}")
    bad = [m for m in methods if m not in GRADIENT_METHODS]
    if bad:
        raise ValidationError(f"unknown gradient method(s) {bad}; use any of {list(GRADIENT_METHODS)}")
    extra = dict(jump_aware or {})
    wrong = [k for k in extra if not k.startswith("correct_")]
    if wrong:
        raise ValidationError(f"jump_aware takes GraphConfig's correct_* fields, not {wrong}")
    rm = ReplacementModel(model, dictionaries)
    cfg = GraphConfig(ablation=ablation, ig_steps=ig_steps, batch_size=batch_size, **extra)
    frames, costs = [], {m: [] for m in ("patching", *methods)}
    for i in range(n_prompts):
        clean = [int(t) for t in data.clean[i]]
        cf = [int(t) for t in data.corrupted[i]] if ablation == "counterfactual" else None
        target = logit_diff(model, int(data.answer[i]), int(data.wrong[i]))
        cols = {}
        for method in ("patching", *methods):
            g = build_graph(rm, None, clean, targets=target, method=method, config=cfg,
                            counterfactual=cf)
            cols[method] = g.edges().set_index("source")["weight"]
            costs[method].append(_cost(method, g, len(rm.layers), ig_steps, batch_size))
        df = pd.DataFrame(cols).fillna(0.0).rename_axis("node").reset_index()
        df.insert(0, "prompt", i)
        frames.append(df)
        if on_progress is not None:
            on_progress(i + 1, n_prompts)
    table = pd.concat(frames, ignore_index=True)
    table.insert(2, "kind", np.where(table["node"].str.startswith("err"), "error", "feature"))
    rows, pear, spear, slope = [], {}, {}, {}
    for m in methods:
        for kind in ("all", "feature", "error"):
            sub = table if kind == "all" else table[table["kind"] == kind]
            r, rho, s = _fit(sub[m].to_numpy(), sub["patching"].to_numpy())
            rows.append({"method": m, "kind": kind, "pearson": r, "spearman": rho, "slope": s,
                         "n": len(sub)})
            if kind == "all":
                pear[m], spear[m], slope[m] = r, rho, s
    cost = {m: {k: float(np.mean([c[k] for c in cs])) for k in ("forwards", "backwards")}
            for m, cs in costs.items()}
    return NodeScoreAgreement(pear, spear, slope, pd.DataFrame(rows), table, ablation, ig_steps, cost)


def _cost(method: str, g, n_layers: int, steps: int, batch: int) -> dict:
    """Single-prompt forwards / backwards of one graph's node scores (module docstring, 4)."""
    if method == "jump-aware":
        return {"forwards": g.metadata["forwards"], "backwards": g.metadata["backwards"]}
    n = int((~g.type_mask("logit")).sum())
    return {"atp": {"forwards": 2, "backwards": 1},
            "ig": {"forwards": 1 + n_layers * steps, "backwards": n_layers * steps},
            "patching": {"forwards": 1 + n + math.ceil(n / batch), "backwards": 0}}[method]


__all__ = ["GRADIENT_METHODS", "NodeScoreAgreement", "node_score_agreement"]
