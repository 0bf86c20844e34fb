"""Predicted against measured effects of feature nodes, in constrained and iterative modes.

For each prompt, the attribution graph predicts what removing a feature node does
to the target (a logit difference); activation patching measures it.

Algorithm (``feature_effects``):
  1. Build the exact graph (target = the task's logit-difference direction).
  2. Predictions from the graph: the direct effect of node s is A[logit, s]; its
     total effect through the linearised model is x[s] with x = e_logit·(I − A)⁻¹,
     computed by sparse products (the graph is a DAG). Ablating s (activation → 0)
     is predicted to change the target by −A[logit, s] (direct) or −x[s] (total).
  3. Measurements by patching: ``steer(..., ablate s)`` in constrained mode
     (attention, norms and MLP outputs frozen: direct effects only) and in
     iterative mode (effects propagate through the real model with dictionaries).
  4. Keep the ``top_n`` features by |total|; one row per (prompt, node).
``agreement_summary`` reports Pearson, Spearman and the least-squares slope
(measured on predicted) per mode, pooled and as the per-prompt spread.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def total_effects(graph, target: int) -> np.ndarray:
    """x = e_target·(I − A)⁻¹ (including the identity term) by repeated sparse products."""
    A = graph.adjacency.tocsr()
    x = np.zeros(A.shape[0])
    x[target] = 1.0
    acc, cur = x.copy(), x
    for _ in range(A.shape[0]):
        cur = A.T @ cur  # row vector times A: effect flowing one edge further upstream
        if not np.any(cur):
            break
        acc += cur
    return acc


def feature_effects(model, dictionaries, tokens, good: int, bad: int, top_n: int = 20,
                    prompt: int = 0, graph=None) -> pd.DataFrame:
    """Rows: prompt, node, predicted/measured effect of ablating each top feature node."""
    from attribution import FeatureIntervention, build_graph, logit_diff, steer
    from attribution.replacement import ReplacementModel

    rm = ReplacementModel(model, dictionaries)
    g = graph if graph is not None else build_graph(rm, None, tokens, targets=logit_diff(model, good, bad))
    target = int(np.flatnonzero(g.type_mask("logit"))[0])
    direct = np.asarray(g.adjacency.tocsr()[target].todense()).ravel()
    total = total_effects(g, target)
    feats = np.flatnonzero(g.type_mask("feature"))
    chosen = feats[np.argsort(-np.abs(total[feats]), kind="stable")[:top_n]]
    rows = []
    for i in chosen:
        key = g.keys[i]
        iv = [FeatureIntervention(key.layer, key.feature, "ablate", positions=[key.pos])]
        measured = {}
        for mode in ("constrained", "iterative"):
            r = steer(rm, None, tokens, iv, mode=mode)
            measured[mode] = float((r.logits[-1, good] - r.logits[-1, bad])
                                   - (r.clean_logits[-1, good] - r.clean_logits[-1, bad]))
        rows.append({"prompt": prompt, "node": str(g.nodes["key"].iloc[i]),
                     "predicted_direct": -float(direct[i]), "predicted_total": -float(total[i]),
                     "measured_constrained": measured["constrained"],
                     "measured_iterative": measured["iterative"]})
    return pd.DataFrame(rows)


def _fit(pred: np.ndarray, meas: np.ndarray) -> dict:
    from scipy import stats

    if len(pred) < 3 or np.std(pred) == 0 or np.std(meas) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "slope": float("nan")}
    return {"pearson": float(stats.pearsonr(pred, meas)[0]),
            "spearman": float(stats.spearmanr(pred, meas)[0]),
            "slope": float(np.polyfit(pred, meas, 1)[0])}


def agreement_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per mode: pooled Pearson/Spearman/slope and per-prompt r median and IQR."""
    out = []
    for mode, pcol, mcol in (("constrained", "predicted_direct", "measured_constrained"),
                             ("iterative", "predicted_total", "measured_iterative")):
        pooled = _fit(df[pcol].to_numpy(), df[mcol].to_numpy())
        per = np.array([_fit(g[pcol].to_numpy(), g[mcol].to_numpy())["pearson"]
                        for _, g in df.groupby("prompt")])
        per = per[np.isfinite(per)]
        q = np.percentile(per, [25, 50, 75]) if per.size else [np.nan] * 3
        out.append({"mode": mode, **pooled, "prompt_r_q25": q[0], "prompt_r_median": q[1],
                    "prompt_r_q75": q[2], "n_prompts": int(df["prompt"].nunique()), "n_nodes": len(df)})
    return pd.DataFrame(out)
