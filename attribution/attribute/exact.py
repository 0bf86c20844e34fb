"""Exact linear attribution: graph rows by batched VJPs of the linearised model.

Algorithm (``exact_rows``):
  1. Targets are feature nodes (value: pre-activation) and logit nodes
     (value: final-norm output · direction at their position).
  2. A batch of B targets tiles the prompt B times. Copy b is seeded with its
     target's encoder row at the unit's input site and position (feature) or
     its direction at the final-norm output (logit): the objective is
     Σ_b seed_b · output_b, one VJP (``mx.grad``) w.r.t. zero write deltas at
     every write site gives each copy's gradient G_b at every write site.
  3. Row b over sources: token p: G_tok[b,p] · embed[p]; error (l,p):
     G_l[b,p] · error_l[p]; feature (i,p,a): f · Σ_j (G_j[b] @ W_dec(i→j)ᵀ)[p,a]
     (j over the unit's target layers; one matmul per layer, then a gather).
     Sources at or above the target's layer are zeroed (no such path exists;
     this only removes round-off).
  4. Each dense block goes to ``SparseRowBuilder`` (top-k / threshold,
     dropped mass recorded), so memory grows with the kept edges.
  5. With ``max_feature_nodes``: logit rows first; then repeatedly compute
     the influence of every feature on the logits from the rows so far
     (influence = Σ_k w·A_nᵏ, A_n the row-normalised |A|) and process the
     highest-influence unprocessed features, until the cap (circuit-tracer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import mlx.core as mx
import numpy as np
import scipy.sparse as sp

from attribution.attribute.config import GraphConfig
from attribution.attribute.nodes import NodeSet, flat_take
from attribution.graph.sparsify import SparseRowBuilder
from attribution.replacement.linear import linear_forward, zero_deltas
from attribution.replacement.units import targets_of, write_vectors

Progress = Callable[[str, int, int], None] | None


class ExactRows(NamedTuple):
    """Result of ``exact_rows``."""

    adjacency: sp.csr_matrix
    """[N,N] kept edges A[target, source] over the full node set."""
    dropped_mass: np.ndarray
    """[N] float64 |weight| dropped per target."""
    processed: np.ndarray
    """[N] bool: rows computed (all logits, processed features)."""
    backward_passes: int
    """Number of batched VJPs run."""


class _Ctx:
    """Per-graph constants: numpy encoders, write vectors, source layers."""

    def __init__(self, rm, state, nodes: NodeSet, targets, config: GraphConfig) -> None:
        self.rm, self.state, self.nodes, self.targets, self.config = rm, state, nodes, targets, config
        self.enc = {l: np.asarray(rm.encoder(l)[0], dtype=np.float32) for l in rm.units}
        self.dirs = np.asarray(targets.directions, dtype=np.float32)
        self.layer_of = nodes.layer_of(rm.model.n_layers)
        self.wdec_t = {(i, j.layer): write_vectors(u, j).T for i, u in rm.units.items()
                       for j in targets_of(u, rm.units)}
        self.feat_index = {}  # global feature index -> (layer, pos, feature)
        for f in nodes.features.values():
            for k in range(len(f.pos)):
                self.feat_index[f.offset + k] = (f.layer, int(f.pos[k]), int(f.feature[k]))


def _seeds(ctx: _Ctx, batch: list[int]):
    t, n_logit0 = ctx.nodes.n_tokens, ctx.nodes.logit_offset
    b, d = len(batch), ctx.rm.model.d_model
    per_layer: dict = {}
    norm = np.zeros((b, t, d), np.float32)
    use_norm = False
    for r, node in enumerate(batch):
        if node >= n_logit0:
            norm[r, -1] = ctx.dirs[node - n_logit0]
            use_norm = True
        else:
            layer, pos, feat = ctx.feat_index[node]
            s = per_layer.setdefault(layer, np.zeros((b, t, ctx.enc[layer].shape[0]), np.float32))
            s[r, pos] = ctx.enc[layer][:, feat]
    return {l: mx.array(s) for l, s in per_layer.items()}, (mx.array(norm) if use_norm else None)


def _block(ctx: _Ctx, batch: list[int]) -> np.ndarray:
    rm, st, nodes = ctx.rm, ctx.state, ctx.nodes
    seeds, norm_seed = _seeds(ctx, batch)
    layers = list(rm.units)

    def objective(deltas):
        lo = linear_forward(rm, st, deltas, ctx.config.unreplaced_mlps)
        total = mx.array(0.0)
        for l, s in seeds.items():
            total = total + mx.sum(lo.x_in[l] * s)
        if norm_seed is not None:
            total = total + mx.sum(lo.norm_out * norm_seed)
        return total

    grads = mx.grad(objective)(zero_deltas(rm, st, len(batch)))
    parts = [mx.sum(grads[0] * st.embed[None], axis=-1)]
    for i, f in nodes.features.items():
        u = rm.units[i]
        gw = None
        for j in targets_of(u, rm.units):
            term = grads[1 + layers.index(j.layer)] @ ctx.wdec_t[(i, j.layer)]
            gw = term if gw is None else gw + term
        parts.append(flat_take(gw, f.pos, f.feature, u.width) * mx.array(f.act)[None])
    for k, l in enumerate(layers):
        parts.append(mx.sum(grads[1 + k] * st.error[l][None], axis=-1))
    block = np.asarray(mx.concatenate(parts, axis=1), dtype=np.float32)
    tgt_layer = ctx.layer_of[np.asarray(batch)]
    block[ctx.layer_of[None, : block.shape[1]] >= tgt_layer[:, None]] = 0.0
    return np.concatenate([block, np.zeros((len(batch), nodes.n_logits), np.float32)], axis=1)


def _partial_influence(n: int, blocks: list, weights: np.ndarray, logit_offset: int,
                       depth: int) -> np.ndarray:
    """Σ_k w·A_nᵏ (k >= 1) from the sparse rows computed so far."""
    coos = [(t, m.tocoo()) for t, m in blocks]
    rows = np.concatenate([t[c.row] for t, c in coos])
    cols = np.concatenate([c.col for _, c in coos])
    vals = np.abs(np.concatenate([c.data for _, c in coos])).astype(np.float64)
    a = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    s = np.asarray(a.sum(axis=1)).ravel()
    s[s == 0] = 1.0
    a_n = sp.diags(1.0 / s) @ a
    x = np.zeros(n)
    x[logit_offset: logit_offset + len(weights)] = weights
    total = np.zeros(n)
    for _ in range(depth + 2):  # the graph is a DAG of depth <= n_layers + 1
        x = a_n.T @ x
        if not x.any():
            break
        total += x
    return total


def _keep_sparse(block: np.ndarray, k: int | None) -> sp.csr_matrix:
    if k is not None and k < block.shape[1]:
        idx = np.argpartition(-np.abs(block), k - 1, axis=1)[:, :k] if k > 0 else np.zeros((len(block), 0), int)
        keep = np.zeros_like(block, dtype=bool)
        np.put_along_axis(keep, idx, True, axis=1)
        block = np.where(keep, block, 0.0)
    return sp.csr_matrix(block)


def _order(ctx: _Ctx, blocks: list, done: np.ndarray, want: int) -> list[int]:
    nodes = ctx.nodes
    feats = np.arange(nodes.n_tokens, nodes.error_offset)
    todo = feats[~done[feats]]
    if ctx.config.max_feature_nodes is None:
        return todo[:want].tolist()
    infl = _partial_influence(nodes.n_nodes, blocks, ctx.targets.weights, nodes.logit_offset,
                              ctx.rm.model.n_layers)
    return todo[np.argsort(-infl[todo], kind="stable")][:want].tolist()


def exact_rows(rm, state, nodes: NodeSet, targets, config: GraphConfig,
               progress: Progress = None) -> ExactRows:
    """Compute and sparsify all target rows (module docstring)."""
    ctx = _Ctx(rm, state, nodes, targets, config)
    n, bs = nodes.n_nodes, config.batch_size
    builder = SparseRowBuilder(n, k=config.edges_per_target, threshold=config.edge_threshold)
    done = np.zeros(n, dtype=bool)
    cap = nodes.n_features if config.max_feature_nodes is None else min(config.max_feature_nodes,
                                                                        nodes.n_features)
    total_rows = nodes.n_logits + cap
    blocks: list = []
    passes = 0
    queue = list(range(nodes.logit_offset, n))
    processed_feats = 0
    while queue or processed_feats < cap:
        if not queue:
            want = min(cap - processed_feats, bs * 4)
            queue = _order(ctx, blocks, done, want)
            processed_feats += len(queue)
        batch, queue = queue[:bs], queue[bs:]
        block = _block(ctx, batch)
        passes += 1
        builder.add(batch, block)
        done[batch] = True
        if config.max_feature_nodes is not None:
            blocks.append((np.asarray(batch), _keep_sparse(block, config.edges_per_target)))
        if progress is not None:
            progress("exact", int(done.sum()), total_rows)
    rows = builder.finish()
    return ExactRows(rows.adjacency, rows.dropped_mass, done, passes)


__all__ = ["ExactRows", "exact_rows"]
