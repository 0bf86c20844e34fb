"""Faithfulness of a *feature* circuit, measured by activation patching in the replacement model.

F(X) is the task metric when every feature and error node outside X is pinned
to its ablated value, while nodes in X are recomputed live (iterative mode:
effects propagate through the real attention, norms and dictionaries).

Algorithm (``feature_faithfulness``):
  1. Clean state of the prompt (``ReplacementModel.clean``); the ablated state
     is the counterfactual prompt's clean state (``counterfactual``) or zeros
     (``zero``): ablated feature activations and error vectors per layer.
  2. ``spliced_forward`` with ``edit(layer, f) = where(keep, f, f_ablated)`` and
     ``error_delta[layer] = (1 − keep_err) · (err_ablated − err_clean)``.
  3. F(M) keeps everything, F(∅) keeps nothing, F(C) keeps the circuit;
     faithfulness = (F(C) − F(∅)) / (F(M) − F(∅)), completeness the same for the
     complement (everything except C's features and errors). F(M) = F(∅)
     raises rather than divide by zero.
  4. ``feature_faithfulness_curve`` ranks features+errors by a score (e.g. graph
     influence) and measures faithfulness of the top fraction for each fraction.
Token nodes are never ablated (the prompt stays the prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from circuits.errors import CircuitsError


class FaithfulnessUndefinedError(CircuitsError, ValueError):
    """F(M) = F(∅): the metric does not move between the full and the empty circuit."""


@dataclass(frozen=True)
class FeatureFaithfulness:
    """Patching-measured quality of one feature circuit."""

    faithfulness: float
    """(F(C) − F(∅)) / (F(M) − F(∅))."""
    completeness: float
    """Same formula for the complement of C (lower is better)."""
    f_circuit: float
    """F(C): metric with everything outside C ablated."""
    f_empty: float
    """F(∅): every feature and error node ablated."""
    f_full: float
    """F(M): nothing ablated (equals the model's metric)."""
    f_complement: float
    """Metric with only C ablated."""
    n_features: int
    """Feature nodes in C."""
    n_errors: int
    """Error nodes in C."""
    ablation: str
    """zero or counterfactual."""


class _Patcher:
    def __init__(self, rm, tokens, metric, ablation: str, counterfactual=None):
        import mlx.core as mx

        self.rm, self.metric, self.mx = rm, metric, mx
        self.state = rm.clean(tokens)
        self.tokens = self.state.tokens
        if ablation == "counterfactual":
            if counterfactual is None:
                raise CircuitsError("counterfactual ablation needs the corrupted prompt")
            cf = rm.clean(counterfactual)
            self.f_abl = {l: cf.acts[l] for l in rm.layers}
            self.e_abl = {l: cf.error[l] for l in rm.layers}
        elif ablation == "zero":
            self.f_abl = {l: mx.zeros_like(self.state.acts[l]) for l in rm.layers}
            self.e_abl = {l: mx.zeros_like(self.state.error[l]) for l in rm.layers}
        else:
            raise CircuitsError(f"ablation must be 'zero' or 'counterfactual', got {ablation!r}")
        self.ablation = ablation

    def value(self, keep_f: dict, keep_e: dict) -> float:
        """Metric with features/errors outside the keep masks ablated."""
        from attribution.replacement.spliced import spliced_forward

        mx = self.mx

        def edit(layer, f):
            k = keep_f[layer]
            return mx.where(k, f, self.f_abl[layer][None])

        delta = {l: ((1.0 - keep_e[l])[:, None] * (self.e_abl[l] - self.state.error[l]))[None]
                 for l in self.rm.layers}
        out = spliced_forward(self.rm, self.tokens, self.state, edit=edit, error_delta=delta)
        return float(self.metric(out.logits[0, -1]))

    def masks(self, features=(), errors=(), invert: bool = False, everything: bool = False):
        mx = self.mx
        keep_f, keep_e = {}, {}
        for l in self.rm.layers:
            T, m = self.state.acts[l].shape
            kf, ke = np.full((T, m), everything), np.full((T,), everything, dtype=np.float32)
            keep_f[l], keep_e[l] = kf, ke
        for (l, p, i) in features:
            keep_f[l][p, i] = True
        for (l, p) in errors:
            keep_e[l][p] = 1.0
        if invert:
            keep_f = {l: ~v for l, v in keep_f.items()}
            keep_e = {l: 1.0 - v for l, v in keep_e.items()}
        return ({l: mx.array(v)[None] for l, v in keep_f.items()},
                {l: mx.array(v) for l, v in keep_e.items()})


def _normalised(fc: float, f0: float, fm: float) -> float:
    if abs(fm - f0) < 1e-6 * max(1.0, abs(fm)):  # float32 noise is ~1e-7 relative
        raise FaithfulnessUndefinedError(
            f"F(M) = F(∅) = {fm:.6g}: the metric does not change when every node is ablated, "
            "so faithfulness is undefined; use another ablation or metric"
        )
    return (fc - f0) / (fm - f0)


def circuit_nodes(graph) -> tuple[list, list]:
    """(features [(layer,pos,feature)], errors [(layer,pos)]) of a graph's node table."""
    nodes = graph.nodes
    f = nodes[nodes["type"] == "feature"]
    e = nodes[nodes["type"] == "error"]
    return ([(int(a), int(b), int(c)) for a, b, c in zip(f["layer"], f["pos"], f["feature"])],
            [(int(a), int(b)) for a, b in zip(e["layer"], e["pos"])])


def feature_faithfulness(rm, tokens, circuit_graph, metric, ablation: str = "counterfactual",
                         counterfactual=None) -> FeatureFaithfulness:
    """Faithfulness and completeness of the feature circuit ``circuit_graph`` (module docstring)."""
    p = _Patcher(rm, tokens, metric, ablation, counterfactual)
    feats, errs = circuit_nodes(circuit_graph)
    fm = p.value(*p.masks(everything=True))
    f0 = p.value(*p.masks())
    fc = p.value(*p.masks(feats, errs))
    fcomp = p.value(*p.masks(feats, errs, invert=True))
    return FeatureFaithfulness(_normalised(fc, f0, fm), _normalised(fcomp, f0, fm), fc, f0, fm,
                               fcomp, len(feats), len(errs), ablation)


def feature_faithfulness_curve(rm, tokens, graph, scores: np.ndarray, metric, fractions,
                               ablation: str = "counterfactual", counterfactual=None):
    """Faithfulness when keeping the top ``fraction`` of feature+error nodes by ``scores``.

    ``scores`` is aligned with ``graph.nodes``; returns a DataFrame (fraction, n_kept, faithfulness).
    """
    import pandas as pd

    p = _Patcher(rm, tokens, metric, ablation, counterfactual)
    nodes = graph.nodes.reset_index(drop=True)
    cand = np.flatnonzero(nodes["type"].isin(["feature", "error"]).to_numpy())
    order = cand[np.argsort(-np.asarray(scores)[cand], kind="stable")]
    fm = p.value(*p.masks(everything=True))
    f0 = p.value(*p.masks())
    rows = []
    for frac in fractions:
        k = int(round(frac * len(order)))
        sel = nodes.iloc[order[:k]]
        feats = [(int(r.layer), int(r.pos), int(r.feature)) for r in sel.itertuples() if r.type == "feature"]
        errs = [(int(r.layer), int(r.pos)) for r in sel.itertuples() if r.type == "error"]
        rows.append({"fraction": float(frac), "n_kept": k,
                     "faithfulness": _normalised(p.value(*p.masks(feats, errs)), f0, fm)})
    return pd.DataFrame(rows)
