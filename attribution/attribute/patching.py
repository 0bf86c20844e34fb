"""Patching-style node scores: attribution patching, integrated gradients, exact patching.

Nodes are feature activations (active on the clean or the ablated prompt)
and error terms of the spliced (unfrozen) replacement model; the metric M is
Σ_k w_k · (final-norm output · direction_k) at the last position (or a user
function of the logits). Every method estimates M(node ablated) − M(clean):
  1. Ablated values (``ablated_values``): zero; mean over the positions of
     ``reference`` prompts (default: the prompt itself); or counterfactual:
     the activations and errors of a corrupted prompt of the same length.
  2. ``atp``: one forward + backward at the clean point:
     score = ∂M/∂node · (ablated − clean)   (DESIGN B5).
  3. ``ig``: per dictionary layer, every node of that layer (features and
     errors) is moved jointly to clean + α(ablated − clean) for midpoint
     α_k = (k+½)/steps, the gradient through the full model is averaged over
     the steps, and score = mean gradient · (ablated − clean).
  4. ``patching``: one forward per node (batched as copies of the prompt)
     with that node set to its ablated value; score = M(patched) − M(clean).
A node is changed by adding (ablated − clean) to the live latent (or to the
error term): upstream of the edit nothing changes, so the live latent equals
the clean one and the node takes exactly its ablated value.
  5. With ``feature_edges=True`` each method also estimates every feature-to-feature
     edge u -> v (v's activation change when u is ablated); see ``patch_edges``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import mlx.core as mx
import numpy as np

from attribution.attribute.patch_edges import (
    Sources,
    Targets,
    atp_rows,
    ig_rows,
    patching_columns,
)
from attribution.graph.keys import ErrorNode, FeatureNode
from attribution.graph.sparsify import SparseRowBuilder, SparseRows
from attribution.model.tokens import as_tokens
from attribution.replacement.errors import AttributionMethodError
from attribution.replacement.spliced import spliced_forward


class NodeScores(NamedTuple):
    """Patching-style scores of feature and error nodes."""

    keys: list
    """FeatureNode / ErrorNode per score."""
    scores: np.ndarray
    """[n] float64 estimated M(node ablated) − M(clean)."""
    activation: np.ndarray
    """[n] clean feature activation / clean error-vector norm."""
    clean_metric: float
    """M on the clean prompt."""
    method: str
    """atp | ig | patching."""
    ablation: str
    """zero | mean | counterfactual."""
    forward_passes: int
    """Batched forwards (with or without backward) run."""
    edges: SparseRows | None = None
    """Feature-to-feature edges (``feature_edges=True``): CSR [n+1, n+1] over ``keys`` plus
    the metric node last (row = target feature, column = source), sparsified by
    ``edges_per_target`` / ``edge_threshold``, with the dropped mass per row."""


def ablated_values(rm, state, ablation: str, counterfactual=None, reference=None):
    """(latents {l: [T,m]}, errors {l: [T,d]}) of the ablation (module docstring, step 1)."""
    t = state.tokens.shape[1]
    if ablation == "zero":
        return ({l: mx.zeros_like(a) for l, a in state.acts.items()},
                {l: mx.zeros_like(e) for l, e in state.error.items()})
    if ablation == "counterfactual":
        if counterfactual is None:
            raise AttributionMethodError("ablation='counterfactual' needs counterfactual=<tokens or text>")
        cf = rm.clean(_tokens(rm.model, counterfactual))
        if cf.tokens.shape[1] != t:
            raise AttributionMethodError(
                f"the counterfactual prompt has {cf.tokens.shape[1]} tokens but the prompt has {t}; "
                "corrupted prompts must align position by position")
        return dict(cf.acts), dict(cf.error)
    if ablation == "mean":
        refs = [state] if reference is None else [rm.clean(_tokens(rm.model, r)) for r in reference]
        acts = {l: mx.broadcast_to(mx.concatenate([s.acts[l] for s in refs]).mean(0), state.acts[l].shape)
                for l in state.acts}
        errs = {l: mx.broadcast_to(mx.concatenate([s.error[l] for s in refs]).mean(0), state.error[l].shape)
                for l in state.error}
        return acts, errs
    raise AttributionMethodError(f"unknown ablation {ablation!r}; use zero, mean or counterfactual")


def _tokens(model, x):
    return as_tokens(model.encode(x) if isinstance(x, str) else x, model)


def integrated_gradients(grad_fn: Callable, clean: mx.array, ablated: mx.array, steps: int) -> mx.array:
    """(ablated − clean) ⊙ mean_k ∇F(clean + α_k (ablated − clean)), α_k = (k+½)/steps.

    ``grad_fn`` maps points [S, ...] to gradients [S, ...] of F at each point."""
    diff = ablated - clean
    alphas = mx.array((np.arange(steps) + 0.5) / steps, dtype=mx.float32)
    pts = clean[None] + alphas.reshape((-1,) + (1,) * diff.ndim) * diff[None]
    return diff * grad_fn(pts).mean(axis=0)


class _Metric:
    def __init__(self, rm, state, targets, metric) -> None:
        self.rm, self.state, self.metric = rm, state, metric
        self.w = mx.array((targets.weights[:, None] * np.asarray(targets.directions)).astype(np.float32))
        self.pos = int(targets.keys[0].pos) if targets.keys else state.tokens.shape[1] - 1
        self.passes = 0

    def run(self, d_f: dict, d_e: dict):
        """(per-copy metric [B], ``SplicedOut``) with latent deltas d_f and error deltas d_e
        ({layer: [B,T,.]}; layers may be missing)."""
        b = next(iter(d_f.values())).shape[0] if d_f else next(iter(d_e.values())).shape[0]
        toks = mx.broadcast_to(self.state.tokens, (b, self.state.tokens.shape[1]))
        out = spliced_forward(self.rm, toks, self.state, edit=lambda l, f: f + d_f[l] if l in d_f else f,
                              error_delta=d_e)
        self.passes += 1
        if self.metric is not None:
            return self.metric(out.logits).reshape(b), out
        return mx.sum(out.norm_out[:, self.pos] * self.w.sum(0)[None], axis=-1), out

    def __call__(self, d_f: dict, d_e: dict) -> mx.array:
        """Per-copy metric [B] (see ``run``)."""
        return self.run(d_f, d_e)[0]


def _node_list(state, f_abl: dict, threshold: float):
    keys, where = [], []
    for l, a in state.acts.items():
        c, ab = np.asarray(a), np.asarray(f_abl[l])
        pos, feat = np.nonzero((np.abs(c) > threshold) | (c != ab))
        keys += [FeatureNode(l, int(p), int(f)) for p, f in zip(pos, feat)]
        where += [("f", l, int(p), int(f)) for p, f in zip(pos, feat)]
    for l in state.error:
        for p in range(state.tokens.shape[1]):
            keys.append(ErrorNode(l, p))
            where.append(("e", l, p, -1))
    return keys, where


def _atp(m: _Metric, state, f_abl, e_abl):
    zf = {l: mx.zeros_like(a)[None] for l, a in state.acts.items()}
    ze = {l: mx.zeros_like(e)[None] for l, e in state.error.items()}
    gf, ge = mx.grad(lambda a, b: m(a, b).sum(), argnums=(0, 1))(zf, ze)
    sf = {l: gf[l][0] * (f_abl[l] - state.acts[l]) for l in zf}
    se = {l: (ge[l][0] * (e_abl[l] - state.error[l])).sum(-1) for l in ze}
    return sf, se


def _ig(m: _Metric, state, f_abl, e_abl, steps: int, batch: int):
    sf, se = {}, {}
    for l in state.acts:
        width = state.acts[l].shape[-1]
        clean = mx.concatenate([state.acts[l], state.error[l]], axis=-1)
        abl = mx.concatenate([f_abl[l], e_abl[l]], axis=-1)

        def grad_fn(pts, l=l, clean=clean, width=width):
            outs = []
            for s in range(0, pts.shape[0], batch):
                d = pts[s: s + batch] - clean[None]
                g = mx.grad(lambda x: m({l: x[..., :width]}, {l: x[..., width:]}).sum())(d)
                outs.append(g)
            return mx.concatenate(outs)

        score = integrated_gradients(grad_fn, clean, abl, steps)
        sf[l], se[l] = score[..., :width], score[..., width:].sum(-1)
    return sf, se


def node_scores(rm, state, targets, method: str, *, ablation: str = "zero", steps: int = 16,
                batch_size: int = 32, feature_threshold: float = 0.0, counterfactual=None,
                reference=None, metric: Callable | None = None, feature_edges: bool = False,
                edges_per_target: int | None = None, edge_threshold: float | None = None,
                max_edge_bytes: int = 2 ** 31) -> NodeScores:
    """Scores of every feature and error node by ``method`` (module docstring); with
    ``feature_edges`` also feature-to-feature edges (``attribution.attribute.patch_edges``)."""
    if method not in ("atp", "ig", "patching"):
        raise AttributionMethodError(f"unknown patching method {method!r}; use atp, ig or patching")
    f_abl, e_abl = ablated_values(rm, state, ablation, counterfactual, reference)
    m = _Metric(rm, state, targets, metric)
    clean_metric = float(m({}, {l: mx.zeros_like(e)[None] for l, e in state.error.items()})[0])
    keys, where = _node_list(state, f_abl, feature_threshold)
    n = len(where)
    tg = Targets(where) if feature_edges else None
    rows = SparseRowBuilder(n + 1, edges_per_target, edge_threshold) if feature_edges else None

    def emit(cols, block):  # one zero column for the metric node
        rows.add(tg.node[cols], np.concatenate([block, np.zeros((len(block), 1))], axis=1))

    if method == "patching":
        scores, block = patching_columns(m, state, f_abl, e_abl, where, batch_size, tg, n,
                                         max_edge_bytes)
        if feature_edges:
            for s in range(0, len(tg), 1024):
                cols = np.arange(s, min(s + 1024, len(tg)))
                emit(cols, block[cols])
    else:
        sf, se = (_atp(m, state, f_abl, e_abl) if method == "atp"
                  else _ig(m, state, f_abl, e_abl, steps, batch_size))
        sf = {l: np.asarray(v) for l, v in sf.items()}
        se = {l: np.asarray(v) for l, v in se.items()}
        scores = np.array([sf[l][p, f] if k == "f" else se[l][p] for k, l, p, f in where], np.float64)
        if feature_edges:
            src = Sources(where, state, f_abl, e_abl)
            gen = (atp_rows(m, state, src, tg, batch_size, n) if method == "atp" else
                   ig_rows(m, state, f_abl, e_abl, src, tg, steps, batch_size, n))
            for cols, block in gen:
                emit(cols, block)
    acts = {l: np.asarray(a) for l, a in state.acts.items()}
    errn = {l: np.linalg.norm(np.asarray(e), axis=-1) for l, e in state.error.items()}
    act = np.array([acts[l][p, f] if k == "f" else errn[l][p] for k, l, p, f in where], np.float64)
    return NodeScores(keys, scores, act, clean_metric, method, ablation, m.passes,
                      rows.finish() if feature_edges else None)


__all__ = ["NodeScores", "ablated_values", "integrated_gradients", "node_scores"]
