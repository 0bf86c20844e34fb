"""Faithfulness of a *feature* circuit, measured by activation patching in the replacement model.

F(X) is the task metric when every feature, error and token node outside X is
pinned to its ablated value, while nodes in X are recomputed live (iterative
mode: effects propagate through the real attention, norms and dictionaries).
Features that are inactive on the clean prompt are not graph nodes; by default
(``inactive="live"``) they are recomputed live, so keeping every graph node
reproduces the model exactly (F = F(M)); ``inactive="ablate"`` pins them too,
which makes F(∅) exactly the corrupted prompt's metric.
Under counterfactual ablation a token node outside X reads the corrupted
prompt's token at its position; attention paths from clean tokens are therefore part of what a circuit
must explain. Under zero ablation tokens stay clean (there is no zero token).

Algorithm (``feature_faithfulness``):
  1. Clean state of the prompt (``ReplacementModel.clean``); the ablated state
     is the counterfactual prompt's clean state (``counterfactual``) or zeros
     (``zero``): ablated feature activations and error vectors per layer.
  2. ``spliced_forward`` with ``edit(layer, f) = where(keep, f, f_ablated)`` and
     ``error_delta[layer] = (1 − keep_err) · (err_ablated − err_clean)``.
     Token nodes outside X take the counterfactual token ids. Several circuits can
     share one forward, their masks stacked along the batch axis (``_Patcher.values``).
  3. F(M) keeps everything, F(∅) keeps nothing, F(C) keeps the circuit (its
     token nodes are those with at least one edge in the circuit);
     faithfulness = (F(C) − F(∅)) / (F(M) − F(∅)), completeness the same for the
     complement (everything except C's features and errors). F(M) = F(∅)
     raises rather than divide by zero.
  4. ``feature_faithfulness_curve`` ranks feature, error and token nodes by a
     score (e.g. graph influence) and measures faithfulness of the top fraction.
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
    n_tokens: int
    """Token nodes in C."""
    ablation: str
    """zero or counterfactual."""


class _Patcher:
    def __init__(self, rm, tokens, metric, ablation: str, counterfactual=None, inactive: str = "live"):
        import mlx.core as mx

        if inactive not in ("live", "ablate"):
            raise CircuitsError(f"inactive must be 'live' or 'ablate', got {inactive!r}")
        self.inactive = inactive
        self.rm, self.metric, self.mx = rm, metric, mx
        self.state = rm.clean(tokens)
        self.tokens = self.state.tokens
        self.cf_tokens = self.tokens
        if ablation == "counterfactual":
            if counterfactual is None:
                raise CircuitsError("counterfactual ablation needs the corrupted prompt")
            cf = rm.clean(counterfactual)
            if cf.tokens.shape != self.tokens.shape:
                raise CircuitsError("clean and counterfactual prompts must have the same length")
            self.cf_tokens = cf.tokens
            self.f_abl = {l: cf.acts[l] for l in rm.layers}
            self.e_abl = {l: cf.error[l] for l in rm.layers}
        elif ablation == "zero":
            self.f_abl = {l: mx.zeros_like(self.state.acts[l]) for l in rm.layers}
            self.e_abl = {l: mx.zeros_like(self.state.error[l]) for l in rm.layers}
        else:
            raise CircuitsError(f"ablation must be 'zero' or 'counterfactual', got {ablation!r}")
        self.ablation = ablation

    def value(self, keep_f: dict, keep_e: dict, keep_t) -> float:
        """Metric with features/errors/tokens outside the keep masks ablated."""
        return self.values([(keep_f, keep_e, keep_t)])[0]

    def values(self, masks: list) -> list[float]:
        """``value`` of several ``masks()`` triples, stacked along the batch axis of one forward."""
        from attribution.replacement.spliced import spliced_forward

        mx = self.mx
        keep_f = {l: mx.concatenate([m[0][l] for m in masks]) for l in self.rm.layers}
        keep_e = {l: mx.stack([m[1][l] for m in masks]) for l in self.rm.layers}
        keep_t = mx.stack([m[2] for m in masks])

        def edit(layer, f):
            k = keep_f[layer]
            return mx.where(k, f, self.f_abl[layer][None])

        delta = {l: (1.0 - keep_e[l])[:, :, None] * (self.e_abl[l] - self.state.error[l])[None]
                 for l in self.rm.layers}
        toks = mx.where(keep_t, self.tokens, self.cf_tokens)
        out = spliced_forward(self.rm, toks, self.state, edit=edit, error_delta=delta)
        return [float(v) for v in (self.metric(out.logits[b, -1]) for b in range(len(masks)))]

    def masks(self, features=(), errors=(), tokens=(), invert: bool = False, everything: bool = False):
        mx = self.mx
        keep_f, keep_e = {}, {}
        keep_t = np.full((self.tokens.shape[1],), everything)
        keep_t[list(tokens)] = True
        for l in self.rm.layers:
            T, m = self.state.acts[l].shape
            kf, ke = np.full((T, m), everything), np.full((T,), everything, dtype=np.float32)
            if self.inactive == "live":
                kf |= np.asarray(self.state.acts[l]) == 0
            keep_f[l], keep_e[l] = kf, ke
        for (l, p, i) in features:
            keep_f[l][p, i] = True
        for (l, p) in errors:
            keep_e[l][p] = 1.0
        if invert:
            live = {l: (np.asarray(self.state.acts[l]) == 0) & (self.inactive == "live")
                    for l in keep_f}
            keep_f = {l: ~v | live[l] for l, v in keep_f.items()}
            keep_e = {l: 1.0 - v for l, v in keep_e.items()}
            keep_t = ~keep_t
        return ({l: mx.array(v)[None] for l, v in keep_f.items()},
                {l: mx.array(v) for l, v in keep_e.items()}, mx.array(keep_t))


def _normalised(fc: float, f0: float, fm: float) -> float:
    if abs(fm - f0) < 1e-6 * max(1.0, abs(fm)):  # float32 noise is ~1e-7 relative
        raise FaithfulnessUndefinedError(
            f"F(M) = F(∅) = {fm:.6g}: the metric does not change when every node is ablated, "
            "so faithfulness is undefined; use another ablation or metric"
        )
    return (fc - f0) / (fm - f0)


def circuit_nodes(graph) -> tuple[list, list, list]:
    """(features [(layer,pos,feature)], errors [(layer,pos)], token positions with an out-edge)."""
    nodes = graph.nodes
    f = nodes[nodes["type"] == "feature"]
    e = nodes[nodes["type"] == "error"]
    has_out = np.asarray(abs(graph.adjacency).sum(axis=0)).ravel() > 0
    t = nodes[(nodes["type"] == "token").to_numpy() & has_out]
    return ([(int(a), int(b), int(c)) for a, b, c in zip(f["layer"], f["pos"], f["feature"])],
            [(int(a), int(b)) for a, b in zip(e["layer"], e["pos"])],
            [int(p) for p in t["pos"]])


def feature_faithfulness(rm, tokens, circuit_graph, metric, ablation: str = "counterfactual",
                         counterfactual=None, inactive: str = "live") -> FeatureFaithfulness:
    """Faithfulness and completeness of the feature circuit ``circuit_graph`` (module docstring)."""
    p = _Patcher(rm, tokens, metric, ablation, counterfactual, inactive)
    feats, errs, toks = circuit_nodes(circuit_graph)
    fm = p.value(*p.masks(everything=True))
    f0 = p.value(*p.masks())
    fc = p.value(*p.masks(feats, errs, toks))
    fcomp = p.value(*p.masks(feats, errs, toks, invert=True))
    return FeatureFaithfulness(_normalised(fc, f0, fm), _normalised(fcomp, f0, fm), fc, f0, fm,
                               fcomp, len(feats), len(errs), len(toks), ablation)


def feature_faithfulness_curve(rm, tokens, graph, scores: np.ndarray, metric, fractions,
                               ablation: str = "counterfactual", counterfactual=None,
                               inactive: str = "live"):
    """Faithfulness when keeping the top ``fraction`` of feature+error nodes by ``scores``.

    ``scores`` is aligned with ``graph.nodes``; returns a DataFrame (fraction, n_kept, faithfulness).
    """
    import pandas as pd

    p = _Patcher(rm, tokens, metric, ablation, counterfactual, inactive)
    nodes = graph.nodes.reset_index(drop=True)
    cand = np.flatnonzero(nodes["type"].isin(["feature", "error", "token"]).to_numpy())
    order = cand[np.argsort(-np.asarray(scores)[cand], kind="stable")]
    fm = p.value(*p.masks(everything=True))
    f0 = p.value(*p.masks())
    rows = []
    for frac in fractions:
        k = int(round(frac * len(order)))
        sel = nodes.iloc[order[:k]]
        feats = [(int(r.layer), int(r.pos), int(r.feature)) for r in sel.itertuples() if r.type == "feature"]
        errs = [(int(r.layer), int(r.pos)) for r in sel.itertuples() if r.type == "error"]
        toks = [int(r.pos) for r in sel.itertuples() if r.type == "token"]
        rows.append({"fraction": float(frac), "n_kept": k,
                     "faithfulness": _normalised(p.value(*p.masks(feats, errs, toks)), f0, fm)})
    return pd.DataFrame(rows)
