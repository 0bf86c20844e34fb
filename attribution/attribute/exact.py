"""Exact linear attribution: graph rows by batched VJPs of the linearised model.

Algorithm (``exact_rows``):
  1. Targets are feature nodes (value: pre-activation) and logit nodes
     (value: final-norm output · direction at their position). Each target's
     row holds its direct effect from every token, feature and error node.
  2. Order (circuit-tracer's feature budget): the logit rows first; then, with
     ``max_feature_nodes``, repeatedly (every ``update_interval`` ×
     ``batch_size`` targets) the partial influence of every feature on the
     logits is computed from the kept rows so far, influence = Σ_k w·A_nᵏ with
     A_n = |A| row-normalised by each row's full |mass| (kept + dropped), and
     the highest-influence unprocessed features are taken next until the
     budget is spent. Without a budget every active feature is processed. Each chunk is sorted by
     (position, layer) or (layer, position), whichever makes its batches
     cheaper, so that a batch's targets share a short prompt prefix or a low
     top layer (step 3 then does less work).
  3. One batch of b targets is one VJP of the linearised model: the forward
     runs once on the prompt prefix [0, P) that holds every target of the
     batch (causality: later positions cannot reach them), and ``mx.vmap``
     maps its VJP over b cotangents: target r's cotangent is its encoder
     column at (its layer's encoder input, its position), or its direction
     at the final-norm output. Only write sites below the batch's top target
     layer are differentiated, and only the seeded outputs are returned, so
     MLX never computes the layers above. Every copy shares the same primal
     (zero write deltas), so this equals the tiled batched VJP at 1/b of the
     forward cost. A quantized model's attention projections (the only live
     matmuls: MLPs and patterns are frozen constants) are swapped for float32
     dequantized copies for the duration (``attribution.model.dequant``), so
     the VJP is vmapped with BLAS matmuls; the tiled path remains for a
     quantized layer outside attention.
  4. Row r over sources: token p: G_tok[r,p] · embed[p]; error (l,p):
     G_l[r,p] · error_l[p]; feature (i,p,a) of activation f:
     f · Σ_j G_j[r,p] · W_dec(i→j)[a] (j over the unit's target layers). The
     feature part never forms G_j @ W_decᵀ over the full width (b·P·d·m
     FLOPs): features are grouped in rows sharing a position
     (``nodes.feature_rows``), and per row the decoder rows of its K active
     features are gathered and multiplied with the gradient at that one
     position, G_j[:, p] [b, d] · W[K, d]ᵀ, on numpy views of the evaluated
     gradients (b·F·d FLOPs in all). Sources at or above the target's layer
     are zeroed (no path exists; this only removes round-off).
  5. Each dense block [b, N] goes to ``SparseRowBuilder`` (top-k / threshold,
     dropped mass recorded), which keeps the only copy of the kept edges; the
     influence of step 2 reads those rows in place.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import time
from collections.abc import Callable
from typing import NamedTuple

import mlx.core as mx
import numpy as np
import scipy.sparse as sp

from attribution.attribute.config import GraphConfig
from attribution.attribute.nodes import NodeSet, feature_rows
from attribution.attribute.preflight import check_exact_memory
from attribution.graph.sparsify import SparseRowBuilder
from attribution.replacement.linear import linear_forward
from attribution.model.dequant import dequantized_attention
from attribution.replacement.units import encoder as probe_encoder
from attribution.replacement.units import pre_acts, targets_of, write_vectors

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
    seconds: dict | None = None
    """Wall seconds per phase: ``vjp`` (the batched VJPs and the rows' contraction),
    ``rows`` (sparsification and row masses), ``order`` (partial influence)."""


def encoder_matrix(unit) -> mx.array:
    """The unit's affine encoder matrix W [d_in, m] (pre_acts(x) = x @ W + b).

    The dictionary's own ``W_enc`` (a view: no copy) when it has one of the expected
    shapes ([d_in, m], circuit-tracer's [m, d_in], or a CLT's [L, d_in, m]) and a
    seeded probe confirms pre_acts(x) − pre_acts(0) = x @ W; otherwise W is recovered
    by probing ``pre_acts`` on the identity (a [d_in, m] copy)."""
    d = unit.dictionary
    d_in, m = int(d.d_in), unit.width
    w = getattr(d, "W_enc", None)
    if w is not None and unit.kind == "clt" and w.ndim == 3:
        w = w[unit.layer]  # evaluating this slice copies it: see encoder_gather for graphs
    if w is not None and w.ndim == 2:
        if tuple(w.shape) == (m, d_in) and m != d_in:
            w = w.T
        if tuple(w.shape) == (d_in, m):
            x = mx.random.normal((3, d_in), key=mx.random.key(12345))
            lhs = pre_acts(unit, x) - pre_acts(unit, mx.zeros((1, d_in)))
            rhs = x @ (w if w.dtype == mx.float32 else w.astype(mx.float32))
            err = float(mx.max(mx.abs(lhs.astype(mx.float32) - rhs)))
            if err <= 1e-3 * max(1.0, float(mx.max(mx.abs(rhs)))):
                return w
    w = probe_encoder(unit)[0]
    mx.eval(w)
    return w


def encoder_gather(unit):
    """How ``_cotangents`` reads encoder columns: ``(W, None)`` for a [d_in, m] matrix, or
    a CLT's ``([L, d_in, m] W_enc, layer)`` when a probe on a column sample confirms it.

    Why: MLX copies an evaluated slice W_enc[layer] (a CLT's encoders would exist twice,
    L·d·m·4 bytes, measured); gathering the few columns a batch needs from the 3-D array
    and then picking the layer copies only [L, d_in, b]."""
    d = unit.dictionary
    w = getattr(d, "W_enc", None)
    d_in, m = int(d.d_in), unit.width
    if unit.kind == "clt" and w is not None and w.ndim == 3 and tuple(w.shape[1:]) == (d_in, m):
        cols = mx.arange(0, m, max(1, m // 64))
        x = mx.random.normal((3, d_in), key=mx.random.key(12345))
        lhs = mx.take(pre_acts(unit, x) - pre_acts(unit, mx.zeros((1, d_in))), cols, axis=1)
        rhs = x @ mx.take(w, cols, axis=2)[unit.layer].astype(mx.float32)
        err = float(mx.max(mx.abs(lhs.astype(mx.float32) - rhs)))
        if err <= 1e-3 * max(1.0, float(mx.max(mx.abs(rhs)))):
            return w, unit.layer
    return encoder_matrix(unit), None


def _encoder_columns(enc: tuple, latents: mx.array) -> mx.array:
    """[d_in, b] encoder columns of ``latents`` (see ``encoder_gather``)."""
    w, layer = enc
    return mx.take(w, latents, axis=1) if layer is None else mx.take(w, latents, axis=2)[layer]


class _Plan:
    """Per-graph constants: encoder views, decoder views, feature rows, node tables."""

    def __init__(self, rm, state, nodes: NodeSet, targets, config: GraphConfig) -> None:
        self.rm, self.state, self.nodes, self.config = rm, state, nodes, config
        self.layers = list(rm.units)
        self.site_layer = np.array([-1] + self.layers)  # write site k's layer (0: tokens)
        self.enc = {l: encoder_gather(rm.units[l]) for l in self.layers}
        self.dirs = targets.directions
        self.weights = np.asarray(targets.weights, dtype=np.float64)
        self.layer_of = nodes.layer_of(rm.model.n_layers)
        self.pos_of = nodes.pos_of
        self.latent_of = nodes.latent_of
        self.rows = {l: feature_rows(f, nodes.n_tokens) for l, f in nodes.features.items()}
        self.writes = {l: [(self.layers.index(j.layer), j.layer) for j in targets_of(rm.units[l], rm.units)]
                       for l in self.layers}
        self.dec = {(i, j): write_vectors(rm.units[i], rm.units[j]) for i in self.layers
                    for _, j in self.writes[i]}
        self.tiled = bool(getattr(rm.model, "quantized", False))
        self._dec_np = {key: np.asarray(w) for key, w in self.dec.items() if w.dtype == mx.float32}

    def dec_np(self, i: int, j: int, r: int) -> np.ndarray:
        """Decoder rows of layer i's features at target j: the float32 [m, d] matrix (a
        numpy view, gathered per row by the caller) or, for other dtypes, the first r
        feature rows gathered and cast by MLX ([r, K, d])."""
        w = self._dec_np.get((i, j))
        if w is not None:
            return w
        fr = self.rows[i]
        idx = mx.array(fr.feature[:r].reshape(-1))
        w = mx.take(self.dec[(i, j)], idx, axis=0).astype(mx.float32)
        return np.asarray(w).reshape(r, fr.feature.shape[1], -1)


def _truncate(state, n_pos: int):
    """The clean state restricted to positions [0, n_pos) (lazy slices; unused ones never run)."""
    if n_pos == int(state.tokens.shape[1]):
        return state
    p = n_pos
    return dataclasses.replace(
        state, tokens=state.tokens[:, :p], embed=state.embed[:p],
        x_in={l: v[:p] for l, v in state.x_in.items()}, out={l: v[:p] for l, v in state.out.items()},
        error={l: v[:p] for l, v in state.error.items()},
        mlp_out={l: v[:p] for l, v in state.mlp_out.items()},
        patterns={l: v[..., :p, :p] for l, v in state.patterns.items()})


def _cotangents(plan: _Plan, batch: np.ndarray, n_pos: int, seeded: list, logits: bool):
    """Per seeded output: [b, 1, P, d] zeros except each target's seed at its position."""
    nodes, st = plan.nodes, plan.state
    b = len(batch)
    rows = np.arange(b)
    out = []
    lay, pos = plan.layer_of[batch], plan.pos_of[batch]
    is_feat = batch < nodes.error_offset
    for l in seeded:
        sel = np.flatnonzero(is_feat & (lay == l))
        cols = _encoder_columns(plan.enc[l], mx.array(plan.latent_of[batch[sel]].astype(np.int32))).T
        d = int(cols.shape[1])
        z = mx.zeros((b * n_pos, d), dtype=st.x_in[l].dtype)
        z[mx.array((rows[sel] * n_pos + pos[sel]).astype(np.int32))] = cols.astype(z.dtype)
        out.append(z.reshape(b, 1, n_pos, d))
    if logits:
        sel = np.flatnonzero(batch >= nodes.logit_offset)
        dirs = mx.take(plan.dirs, mx.array((batch[sel] - nodes.logit_offset).astype(np.int32)), axis=0)
        d = int(dirs.shape[1])
        z = mx.zeros((b * n_pos, d), dtype=st.norm_out.dtype)
        z[mx.array((rows[sel] * n_pos + n_pos - 1).astype(np.int32))] = dirs.astype(z.dtype)
        out.append(z.reshape(b, 1, n_pos, d))
    return out


def _site_grads(plan: _Plan, st, batch: np.ndarray, n_pos: int, top: int, seeded: list,
                logits: bool) -> dict:
    """Gradient [b, P, d] of each target at every write site below ``top`` (step 3).

    ``mx.vmap`` of one VJP over the targets' cotangents: the primal (the linearised
    forward at zero write deltas) is the same for every target, so it runs once.
    MLX 0.32 cannot vmap quantized matmuls, so a quantized model tiles the prompt
    b times and takes one ``mx.grad`` of Σ_r seed_r · output_r instead."""
    cts = _cotangents(plan, batch, n_pos, seeded, logits)
    d_model, b = plan.rm.model.d_model, len(batch)
    diff = [k for k, l in enumerate(plan.site_layer) if l < top]  # sites that can reach a target
    zeros = mx.zeros((1, n_pos, d_model), dtype=st.embed.dtype)

    def outputs(live: list) -> list:
        deltas = [zeros] * len(plan.site_layer)
        for k, v in zip(diff, live):
            deltas[k] = v
        lo = linear_forward(plan.rm, st, deltas, plan.config.unreplaced_mlps)
        return [lo.x_in[l] for l in seeded] + ([lo.norm_out] if logits else [])

    if plan.tiled:
        def objective(live):
            return sum(mx.sum(o * c[:, 0]) for o, c in zip(outputs(live), cts))

        grads = mx.grad(objective)([mx.zeros((b, n_pos, d_model), dtype=zeros.dtype) for _ in diff])
        return dict(zip(diff, grads))
    primals = [zeros] * len(diff)

    def vjp(*c):
        return mx.vjp(lambda *live: outputs(list(live)), primals, list(c))[1]

    return {k: g[:, 0] for k, g in zip(diff, mx.vmap(vjp)(*cts))}


def _block(plan: _Plan, batch: np.ndarray) -> np.ndarray:
    """Dense rows [b, N] of one batch of targets (module docstring, steps 3-4)."""
    rm, nodes = plan.rm, plan.nodes
    b = len(batch)
    n_pos = int(plan.pos_of[batch].max()) + 1
    top = int(plan.layer_of[batch].max())
    st = _truncate(plan.state, n_pos)
    is_feat = batch < nodes.error_offset
    seeded = sorted(set(plan.layer_of[batch[is_feat]].tolist()))
    logits = bool((~is_feat).any())
    grads = _site_grads(plan, st, batch, n_pos, top, seeded, logits)  # site -> [b, P, d]
    parts = [(np.arange(n_pos), mx.sum(grads[0] * st.embed[None].astype(grads[0].dtype), axis=-1))]
    for k in sorted(grads)[1:]:
        l = int(plan.site_layer[k])
        cols = nodes.error_offset + plan.layers.index(l) * nodes.n_tokens + np.arange(n_pos)
        parts.append((cols, mx.sum(grads[k] * st.error[l][None].astype(grads[k].dtype), axis=-1)))
    mx.eval(list(grads.values()), [v for _, v in parts])
    block = np.zeros((b, nodes.n_nodes), dtype=np.float32)
    for cols, vals in parts:
        block[:, cols] = np.asarray(vals.astype(mx.float32))
    del parts
    g_np = {k: np.asarray(g if g.dtype == mx.float32 else g.astype(mx.float32)) for k, g in grads.items()}
    del grads
    with _single_threaded_numpy_blas():
        for i in plan.layers:
            fr = plan.rows.get(i)
            r = 0 if fr is None or i >= top else fr.prefix(n_pos)
            if r:
                vals = _feature_edges(plan, i, r, g_np)
                ok = fr.node[:r] >= 0
                block[:, fr.node[:r][ok]] = vals[:, ok]
    # No path reaches a target from its own layer or above: zero any round-off there.
    block[plan.layer_of[None, :] >= plan.layer_of[batch][:, None]] = 0.0
    return block


_NUMPY_BLAS: list = []  # [(set_num_threads, get_num_threads) or None], found once


def _numpy_blas_threads():
    """(set, get) thread-count functions of the OpenBLAS numpy calls, or None.

    numpy wheels bundle their own OpenBLAS (symbols prefixed ``scipy_``); a distro
    numpy uses the system one. Found through the shared objects mapped into the
    process; anything else (Accelerate, MKL, no /proc) gives None."""
    if not _NUMPY_BLAS:
        found = None
        try:
            with open("/proc/self/maps") as f:
                paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
        except OSError:
            paths = set()
        for path in sorted(paths, key=lambda p: "scipy" not in p):  # numpy's own first
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix, suffix in (("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", "")):
                set_fn = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
                get_fn = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
                if set_fn is not None and get_fn is not None:
                    found = (set_fn, get_fn)
                    break
            if found:
                break
        _NUMPY_BLAS.append(found)
    return _NUMPY_BLAS[0]


@contextlib.contextmanager
def _single_threaded_numpy_blas():
    """numpy's BLAS on one thread inside the block (restored after).

    The feature products are hundreds of small GEMMs ([b, d]·[d, K]); split across
    threads each one waits for a sibling thread, and on a loaded machine (another
    process on the cores) that wait is a scheduler slice: measured 0.4-1.2 s per
    GPT-2 batch on 2 threads against 0.04-0.06 s on one."""
    fns = _numpy_blas_threads()
    if fns is None:
        yield
        return
    set_fn, get_fn = fns
    before = int(get_fn())
    set_fn(1)
    try:
        yield
    finally:
        set_fn(before)


def _feature_edges(plan: _Plan, i: int, r: int, grads: dict) -> np.ndarray:
    """[b, r, K] edges from layer i's first r feature rows: f · Σ_j G_j[:, pos] · W_dec(i→j)[a].

    One small BLAS product per row (G_j[:, pos] is a strided [b, d] view, so nothing
    is copied or transposed), on numpy views of MLX's buffers: MLX's gathers and
    transposes of [b, P, d] arrays cost more than the products themselves."""
    fr = plan.rows[i]
    b = next(iter(grads.values())).shape[0]
    acc = np.zeros((r, b, fr.feature.shape[1]), np.float32)
    for site, j in plan.writes[i]:
        g = grads.get(site + 1)
        if g is None:  # a CLT write site above every target of the batch
            continue
        dec = plan.dec_np(i, j, r)
        for row in range(r):
            w = dec[fr.feature[row]] if dec.ndim == 2 else dec[row]
            acc[row] += g[:, fr.pos[row], :] @ w.T
    acc *= fr.act[:r, None, :]
    return acc.transpose(1, 0, 2)


def partial_influence(builder: SparseRowBuilder, inv_mass: np.ndarray, weights: np.ndarray,
                      logit_offset: int, depth: int) -> np.ndarray:
    """Σ_k w·A_nᵏ (k >= 1) over the rows kept so far, read in place from ``builder``.

    A_n[t, s] = |A[t, s]| · inv_mass[t]; one pass over the kept edges per step,
    at most ``depth`` steps (the graph is a DAG of that depth)."""
    n = builder.n_nodes
    x = np.zeros(n)
    x[logit_offset: logit_offset + len(weights)] = weights
    total = np.zeros(n)
    for _ in range(depth):
        v = x * inv_mass
        y = np.zeros(n)
        for t, rows in builder.batches:
            vt = v[t]
            if rows.nnz and vt.any():
                mag = sp.csr_matrix((np.abs(rows.data), rows.indices, rows.indptr), shape=rows.shape)
                y += mag.T @ vt
        x = y
        if not x.any():
            break
        total += x
    return total


def _cost_order(plan: _Plan, idx: np.ndarray, bs: int) -> np.ndarray:
    """``idx`` in the cheaper of (position, layer) and (layer, position) order.

    A batch's backward pass runs over its longest prompt prefix and up to its top
    layer, so it costs about b · (max position + 1) · (top layer + 1); consecutive
    batches of ``bs`` in either order share prefixes or layers, and the order whose
    batches cost less in total is used."""
    pos, lay = plan.pos_of[idx], plan.layer_of[idx] + 1  # tokens would be layer 0
    best, best_cost = idx, None
    for keys in ((idx, lay, pos), (idx, pos, lay)):
        order = np.lexsort(keys)
        p, l = pos[order], lay[order]
        cost = sum(len(p[s: s + bs]) * (int(p[s: s + bs].max()) + 1) * int(l[s: s + bs].max())
                   for s in range(0, len(order), bs))
        if best_cost is None or cost < best_cost:
            best, best_cost = idx[order], cost
    return best


def effective_batch_size(config: GraphConfig, n_tokens: int) -> int:
    """Targets per VJP: ``batch_size``, capped so batch × tokens <= ``max_batch_tokens``."""
    if config.max_batch_tokens is None:
        return config.batch_size
    return max(1, min(config.batch_size, config.max_batch_tokens // max(1, n_tokens)))


def exact_rows(rm, state, nodes: NodeSet, targets, config: GraphConfig,
               progress: Progress = None) -> ExactRows:
    """Compute and sparsify all target rows (module docstring).

    Raises ``GraphMemoryError`` before any backward pass when the preflight
    (``preflight.estimate_exact_memory``) says the build does not fit."""
    check_exact_memory(rm, nodes.n_tokens, config, nodes, nodes.n_logits)
    mx.clear_cache()  # the clean forward's freed buffers: the batches reallocate what they need
    # A quantized model's live projections in float32 (attribution.model.dequant): BLAS
    # matmuls instead of single-threaded quantized ones, and vmap instead of tiling.
    with dequantized_attention(rm.model) as dequantized:
        return _exact_rows(rm, state, nodes, targets, config, progress, dequantized)


def _exact_rows(rm, state, nodes: NodeSet, targets, config: GraphConfig, progress: Progress,
                dequantized: bool) -> ExactRows:
    plan = _Plan(rm, state, nodes, targets, config)
    plan.tiled = plan.tiled and not dequantized
    mx.clear_cache()  # the encoder probes' temporaries: not kept in RSS for the whole build
    n = nodes.n_nodes
    bs = effective_batch_size(config, nodes.n_tokens)
    builder = SparseRowBuilder(n, k=config.edges_per_target, threshold=config.edge_threshold)
    done = np.zeros(n, dtype=bool)
    inv_mass = np.zeros(n)
    n_feat = nodes.n_features
    cap = n_feat if config.max_feature_nodes is None else min(config.max_feature_nodes, n_feat)
    total_rows = nodes.n_logits + cap
    depth = len(plan.layers) + 2
    feats = np.arange(nodes.n_tokens, nodes.error_offset)
    secs = {"vjp": 0.0, "rows": 0.0, "order": 0.0}
    passes = 0

    def run(queue: np.ndarray) -> None:
        nonlocal passes
        for s in range(0, len(queue), bs):
            batch = queue[s: s + bs]
            t0 = time.perf_counter()
            block = _block(plan, batch)
            t1 = time.perf_counter()
            passes += 1
            mass = builder.add(batch, block)  # full row |mass|: kept + dropped
            del block
            inv_mass[batch] = np.where(mass > 0, 1.0 / np.where(mass > 0, mass, 1.0), 0.0)
            done[batch] = True
            secs["rows"] += time.perf_counter() - t1
            secs["vjp"] += t1 - t0
            if progress is not None:
                progress("exact", int(done.sum()), total_rows)

    run(np.arange(nodes.logit_offset, n))
    if cap >= n_feat:
        run(_cost_order(plan, feats, bs))
    else:
        chunk = config.update_interval * config.batch_size  # same cadence at any prompt length
        processed = 0
        while processed < cap:
            t0 = time.perf_counter()
            infl = partial_influence(builder, inv_mass, plan.weights, nodes.logit_offset, depth)
            todo = feats[~done[feats]]
            want = min(cap - processed, chunk)
            # Highest influence first, ties by index (deterministic), then cost order.
            pick = todo[np.lexsort((todo, -infl[todo]))[:want]]
            secs["order"] += time.perf_counter() - t0
            run(_cost_order(plan, pick, bs))
            processed += want
    rows = builder.finish()
    return ExactRows(rows.adjacency, rows.dropped_mass, done, passes, secs)


__all__ = ["ExactRows", "effective_batch_size", "encoder_gather", "encoder_matrix", "exact_rows",
           "partial_influence"]
