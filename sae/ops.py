"""Array kernels shared by the dictionary architectures.

1. Per-row top-k selection (``topk_index``) in two stages, because MLX's selection
   kernels are single-threaded and slow on long rows: split each row into blocks of
   b (<= 32) entries, keep the k blocks with the largest maxima, then select the top
   k among those k*b candidates. Exact: an entry outside the kept blocks is at most
   its block's maximum, which is at most the k kept maxima, all distinct entries.
   Rows are split across two CPU streams. ``topk_relu`` keeps every entry at least
   the k-th largest (``kth_largest``).
2. ``batch_topk`` keeps the k*B largest entries of the whole batch: the threshold is
   found by the same block argument over the flattened batch (n_keep blocks).
3. ``jumprelu`` / ``heaviside``: JumpReLU and step with straight-through
   pseudo-derivatives w.r.t. the threshold (rectangle kernel of bandwidth eps).
4. ``sparse_pairs``: the encoder-decoder on the active (token, latent) pairs only
   (``topk_pairs``: k per token; ``batch_topk_pairs``: k*B over the batch): the
   decoder is a segmented GEMM over the pairs sorted by token, and the custom VJP's
   weight gradients are segmented GEMMs over the pairs sorted by latent (one per
   CPU stream).
5. ``map_rows``: an elementwise map r = fn(u) whose backward is dfn(u, r) (a derivative
   that reads the forward's output, so the backward pass repeats no transcendental
   function), both run on row blocks over two CPU streams: MLX's elementwise CPU
   kernels are single-threaded, and over [batch, width] the concave penalties' pow / log
   were a third of a training step.
6. ``row_penalty``: the dense penalty's per-row sums of fn(|a| s) in one pass that also
   writes the derivative g = dfn(u, r), so the backward pass reads g alone.
"""

from __future__ import annotations

import threading

import mlx.core as mx

_STREAMS: list = []
_OWNER: list = []  # the thread that created _STREAMS (held, so no later thread can equal it)
_TINY = 1.1754944e-38  # smallest normal float32


def cpu_streams(n: int) -> list | None:
    """``n`` extra CPU streams, or None when called from another thread than the one that
    made them: MLX streams are thread-local ("There is no Stream(cpu, i) in current
    thread" elsewhere), and making streams per thread would grow MLX's threads with
    every thread of a server. Callers then run on the default stream (same result).
    Also None inside a block already running on one of these streams (the trainer's split
    step, ``sae.train.trainee.split_value_and_grad``): the blocks already fill the cores,
    and a nested split would make each block wait on the other's stream."""
    # Created lazily (no work at import); reused so MLX does not grow threads.
    me = threading.current_thread()
    if not _OWNER:
        _OWNER.append(me)
    elif _OWNER[0] is not me:
        return None
    if _STREAMS and mx.default_stream(mx.default_device()) in _STREAMS:
        return None
    while len(_STREAMS) < n:
        _STREAMS.append(mx.new_stream(mx.default_device()))
    return _STREAMS[:n]


def _by_rows(fn, *arrays, split: int = 2, min_size: int = 1 << 16):
    """fn(*arrays) for same-shaped arrays, computed on row blocks over ``split`` CPU
    streams and concatenated (small arrays, other devices and other threads: one call)."""
    a = arrays[0]
    streams = (cpu_streams(split) if split > 1 and a.ndim >= 1 and a.size >= min_size
               and a.shape[0] >= 2 * split and mx.default_device() == mx.cpu else None)
    if streams is None:
        return fn(*arrays)
    n = a.shape[0]
    bounds = [n * i // split for i in range(split + 1)]
    outs = []
    for s, e, st in zip(bounds[:-1], bounds[1:], streams):
        with mx.stream(st):
            outs.append(fn(*(b[s:e] for b in arrays)))
    if isinstance(outs[0], tuple):  # several outputs: concatenated one by one
        return tuple(mx.concatenate(list(o)) for o in zip(*outs))
    return mx.concatenate(outs)


def map_rows(fn, dfn, u: mx.array, split: int = 2) -> mx.array:
    """Elementwise r = fn(u), on row blocks over ``split`` CPU streams (module docstring, 5).

    ``dfn(u, r)``: dr/du from u and the forward's r, used as the VJP (cotangent *
    dfn); None -> MLX differentiates ``fn``. ``split=1`` keeps one stream: for a cheap fn
    (sqrt) the blocks cost more than they save, because they stop ``mx.compile`` fusing
    fn with the ops around it."""
    if dfn is None:
        return _by_rows(fn, u, split=split)

    @mx.custom_function
    def f(u):
        return _by_rows(fn, u, split=split)

    @f.vjp
    def f_vjp(primals, cotangent, output):  # one primal: ``primals`` is the array itself
        return _by_rows(lambda c, v, r: c * dfn(v, r), cotangent, primals, output, split=split)

    return f(u)


def row_penalty(fn, dfn, a: mx.array, scale: mx.array | None = None,
                split: int = 2) -> mx.array:
    """Per-row sums p_i = sum_j fn(|a_ij| s_j) of 2-D ``a`` -> [rows] (s = ``scale``, or 1).

    One pass computes u = |a| s, r = fn(u), the row sums of r and g = ``dfn(u, r)``; the
    custom VJP then reads g alone (w = cotangent_i g_ij: da = w s sign(a), ds = sum_i w
    |a|), so the backward pass repeats no transcendental function and u and r are never
    stored. Row blocks run over ``split`` CPU streams, as ``map_rows``."""
    s = mx.ones((a.shape[-1],), a.dtype) if scale is None else scale

    def block(ab, s):
        u = mx.abs(ab) * s
        r = fn(u)
        return r.sum(-1), dfn(u, r)

    @mx.custom_function
    def f(a, s):
        return _by_rows(lambda ab: block(ab, s), a, split=split)

    @f.vjp
    def f_vjp(primals, cotangents, outputs):
        a, s = primals
        w = cotangents[0][:, None] * outputs[1]
        return w * s * mx.sign(a), (w * mx.abs(a)).sum(0)

    return f(a, s)[0]


def _block(m: int, k: int) -> int:
    """Block length for the two-stage selection: the largest of 32..2 dividing m with >= 2k blocks."""
    for b in (32, 16, 8, 4, 2):
        if m % b == 0 and m // b >= 2 * k:
            return b
    return 1


def _topk_index_part(a: mx.array, k: int, stream=None) -> mx.array:
    """Indices [n,k] of the k largest entries of each row of 2-D ``a`` (module docstring, 1)."""
    n, m = a.shape
    b = _block(m, k)
    if b == 1:
        return mx.argpartition(a, m - k, axis=-1, stream=stream)[:, m - k:]
    nb = m // b
    blocks = a.reshape(n, nb, b)
    top = mx.argpartition(blocks.max(axis=-1, stream=stream), nb - k, axis=-1, stream=stream)[:, nb - k:]
    cand = mx.take_along_axis(blocks, top[:, :, None], axis=1, stream=stream).reshape(n, k * b)
    j = mx.argpartition(cand, k * b - k, axis=-1, stream=stream)[:, k * b - k:]
    return mx.take_along_axis(top, j // b, axis=-1, stream=stream) * b + j % b


def topk_index(a: mx.array, k: int, split: int = 2) -> mx.array:
    """Indices [rows,k] of the per-row top k of 2-D ``a`` (no gradient; rows split over streams)."""
    a = mx.stop_gradient(a)
    rows = a.shape[0]
    streams = None if split <= 1 or rows < 2 * split or mx.default_device() != mx.cpu else cpu_streams(split)
    if streams is None:
        return _topk_index_part(a, k)
    bounds = [rows * i // split for i in range(split + 1)]
    return mx.concatenate([_topk_index_part(a[s:e], k, st)
                           for s, e, st in zip(bounds[:-1], bounds[1:], streams)])


def kth_largest(a: mx.array, k: int, split: int = 2) -> mx.array:
    """The k-th largest value of each row of 2-D ``a`` -> [rows, 1] (exact, ties included)."""
    a = mx.stop_gradient(a)
    return mx.take_along_axis(a, topk_index(a, k, split), axis=-1).min(axis=-1, keepdims=True)


def topk_relu(pre: mx.array, k: int) -> mx.array:
    """Dense TopK(ReLU(pre)) over the last axis; ties at the k-th value are all kept."""
    shape = pre.shape
    p2 = pre.reshape(-1, shape[-1])
    # Clamping the threshold to the smallest positive float folds the ReLU into one compare.
    thr = mx.maximum(kth_largest(p2, k), _TINY)
    f = mx.where(p2 >= thr, p2, mx.zeros_like(p2))
    return f.reshape(shape)


def _global_top(a: mx.array, n_keep: int, split: int = 2) -> mx.array:
    """Flat positions [n_keep] of the n_keep largest entries of 2-D ``a`` (module docstring, 2).

    Exact: the global top n_keep lie in the n_keep blocks with the largest maxima
    (block maxima computed on ``split`` CPU streams), so only those are partitioned."""
    rows, m = a.shape
    n = a.size
    b = _block(m, 1)
    while b > 1 and (m % b or n // b < 2 * n_keep):
        b //= 2
    if b == 1:
        return mx.argpartition(a.reshape(-1), n - n_keep)[n - n_keep:]
    blocks = a.reshape(rows, -1, b)
    streams = cpu_streams(split) if split > 1 and rows >= 2 * split and mx.default_device() == mx.cpu else None
    if streams is not None:
        bd = [rows * i // split for i in range(split + 1)]
        bmax = mx.concatenate([blocks[s:e].max(axis=-1, stream=st)
                               for s, e, st in zip(bd[:-1], bd[1:], streams)])
    else:
        bmax = blocks.max(axis=-1)
    nb = bmax.size
    top = mx.argpartition(bmax.reshape(-1), nb - n_keep)[nb - n_keep:]
    cand = blocks.reshape(-1, b)[top].reshape(-1)
    c = cand.size
    j = mx.argpartition(cand, c - n_keep)[c - n_keep:]
    return top[j // b] * b + j % b


def _as_2d(pre: mx.array) -> mx.array:
    a = mx.stop_gradient(pre)
    return a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)


def batch_topk_threshold(pre: mx.array, n_keep: int, split: int = 2) -> mx.array:
    """Scalar: the n_keep-th largest entry of the whole array (exact, ties included)."""
    a = _as_2d(pre)
    n_keep = max(1, min(n_keep, a.size))
    return a.reshape(-1)[_global_top(a, n_keep, split)].min()


def batch_topk_pairs(pre: mx.array, n_keep: int, split: int = 2):
    """(tok, lat, pre_p) of the n_keep largest entries of 2-D ``pre``, sorted by token."""
    a = _as_2d(pre)
    n_keep = max(1, min(n_keep, a.size))
    pos = mx.sort(_global_top(a, n_keep, split).astype(mx.uint32))  # row-major: by token
    m = a.shape[1]
    return pos // m, pos % m, a.reshape(-1)[pos]


def batch_topk(pre: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """Keep the k*B largest positive entries of pre [B,m]; returns (f, threshold used)."""
    thr = batch_topk_threshold(pre, k * pre.shape[0])
    f = mx.where(pre >= mx.maximum(thr, _TINY), pre, mx.zeros_like(pre))
    return f, mx.maximum(thr, 0)


def _sum_to(g: mx.array, shape: tuple) -> mx.array:
    """Sum a broadcast gradient [..., *shape] back to ``shape`` (theta's shape)."""
    return g.reshape(-1, *shape).sum(axis=0)


def _rect(u: mx.array) -> mx.array:
    return (mx.abs(u) < 0.5).astype(u.dtype)


def jumprelu(z: mx.array, theta: mx.array, eps: float) -> mx.array:
    """z * H(z - theta); d/dtheta := -(theta/eps) K((z-theta)/eps) (rectangle K)."""

    @mx.custom_function
    def f(z, theta):
        return z * (z > theta).astype(z.dtype)

    @f.vjp
    def f_vjp(primals, cotangent, output):
        z, theta = primals
        gz = cotangent * (z > theta).astype(z.dtype)
        gt = -(theta / eps) * _rect((z - theta) / eps) * cotangent
        gt = _sum_to(gt, theta.shape)
        return gz, gt

    return f(z, theta)


def heaviside(z: mx.array, theta: mx.array, eps: float) -> mx.array:
    """H(z - theta); d/dtheta := -(1/eps) K((z-theta)/eps), d/dz := 0."""

    @mx.custom_function
    def f(z, theta):
        return (z > theta).astype(z.dtype)

    @f.vjp
    def f_vjp(primals, cotangent, output):
        z, theta = primals
        gt = -(1.0 / eps) * _rect((z - theta) / eps) * cotangent
        gt = _sum_to(gt, theta.shape)
        return mx.zeros_like(z), gt

    return f(z, theta)


def _segments(keys: mx.array, n: int) -> mx.array:
    """[n, 2] uint32 (start, end) of each key's run once the pairs are sorted by key."""
    counts = mx.zeros((n,), mx.int32).at[keys].add(1)
    ends = mx.cumsum(counts)
    return mx.stack([ends - counts, ends], axis=-1).astype(mx.uint32)


def _weight_grads(x, b_enc, W_dec, tok, lat, vals, g_pre, g_y):
    """(dW_enc, db_enc, dW_dec) from the active pairs: regrouped by latent, each weight
    gradient is one segmented GEMM (a segment per latent) instead of a scatter-add."""
    order = mx.argsort(lat)
    segs = _segments(lat, W_dec.shape[0])
    t = tok[order]
    dec_s, enc_s = ((cpu_streams(2) if mx.default_device() == mx.cpu else None)
                    or (mx.default_stream(mx.default_device()),) * 2)
    with mx.stream(dec_s):
        g_dec = mx.segmented_mm(vals[order][None], g_y[t], segs)[:, 0, :]
    with mx.stream(enc_s):
        g_enc = mx.segmented_mm(g_pre[order][None], x[t], segs)[:, 0, :].T
    g_b = mx.zeros_like(b_enc).at[lat].add(g_pre)
    return g_enc, g_b, g_dec


def _pair_dots(g_y: mx.array, W_dec: mx.array, tok: mx.array, lat: mx.array) -> mx.array:
    """[P]: g_y[tok_p] . W_dec[lat_p] for every pair, as one gather_mm of 1xd by dx1 products.

    Why not ``(W_dec[lat] * g_y[tok]).sum(-1)``: that materialises two [P, d] gathers
    (630 MB each at 4096 tokens, k=50, d=768) and their product; gather_mm indexes the
    operands in place and measured 2.2x faster on the step's largest backward term."""
    return mx.gather_mm(g_y[:, None, :], W_dec[:, :, None], lhs_indices=tok,
                        rhs_indices=lat).reshape(-1)


@mx.custom_function
def _sparse_pairs(x, W_enc, b_enc, W_dec, tok, lat, pre_p):
    vals = mx.maximum(pre_p, 0)
    # Pairs arrive sorted by token: the decoder is one segmented GEMM, a segment per token.
    y = mx.segmented_mm(vals[None], W_dec[lat], _segments(tok, x.shape[0]))[:, 0, :]
    return vals, y


@_sparse_pairs.vjp
def _sparse_pairs_vjp(primals, cotangents, outputs):
    x, W_enc, b_enc, W_dec, tok, lat, pre_p = primals
    g_vals, g_y = cotangents
    vals = outputs[0]
    g = g_vals + _pair_dots(g_y, W_dec, tok, lat)
    g_pre = mx.where(pre_p > 0, g, mx.zeros_like(g))
    g_enc, g_b, g_dec = _weight_grads(x, b_enc, W_dec, tok, lat, vals, g_pre, g_y)
    return (mx.zeros_like(x), g_enc, g_b, g_dec, mx.zeros_like(tok), mx.zeros_like(lat),
            mx.zeros_like(pre_p))


@mx.custom_function
def _sparse_rows(x, W_enc, b_enc, W_dec, tok, idx, pre_k):
    # k pairs per token ([N,k] idx): [N,1,k] @ [N,k,d], a batched GEMM over gathered rows.
    vals = mx.maximum(pre_k, 0)
    return vals, (vals[:, None, :] @ W_dec[idx])[:, 0, :]


@_sparse_rows.vjp
def _sparse_rows_vjp(primals, cotangents, outputs):
    x, W_enc, b_enc, W_dec, tok, idx, pre_k = primals
    g_vals, g_y = cotangents
    vals = outputs[0]
    g = g_vals + _pair_dots(g_y, W_dec, tok, idx.reshape(-1)).reshape(idx.shape)
    g_pre = mx.where(pre_k > 0, g, mx.zeros_like(g))
    g_enc, g_b, g_dec = _weight_grads(x, b_enc, W_dec, tok, idx.reshape(-1), vals.reshape(-1),
                                      g_pre.reshape(-1), g_y)
    return (mx.zeros_like(x), g_enc, g_b, g_dec, mx.zeros_like(tok), mx.zeros_like(idx),
            mx.zeros_like(pre_k))


def sparse_pairs(x, W_enc, b_enc, W_dec, tok, lat, pre_p):
    """Sparse encoder-decoder over active (token, latent) pairs, for training.

    ``tok``/``lat`` [P]: the active pairs sorted by token; ``pre_p`` [P]: their
    pre-activations (x W_enc + b_enc), computed by the caller without gradient.
    Returns (vals = ReLU(pre_p) [P], y [N, d_out] = sum over a token's pairs of
    vals * W_dec[lat]). The backward touches only the active columns of W_enc /
    b_enc and rows of W_dec: the pairs are regrouped by latent and each weight
    gradient is one segmented GEMM; no [N, width] array is formed. No gradient
    flows to ``x``, the indices or ``pre_p``: activations are data.
    With [N,k] ``lat`` and ``pre_p`` (k pairs per token, ``topk_pairs``) the decoder
    is a batched GEMM over the gathered rows, and vals come back as [N,k]."""
    if lat.ndim == 2:
        return _sparse_rows(x, W_enc, b_enc, W_dec, tok, lat, pre_p)
    return _sparse_pairs(x, W_enc, b_enc, W_dec, tok, lat, pre_p)


def topk_pairs(pre: mx.array, k: int, split: int = 2):
    """(tok [N*k], lat [N,k], pre_p [N,k]) of the per-row top k of 2-D ``pre``."""
    idx = topk_index(pre, k, split)
    n = pre.shape[0]
    tok = mx.broadcast_to(mx.arange(n, dtype=mx.uint32)[:, None], (n, k)).reshape(-1)
    pre_p = mx.take_along_axis(mx.stop_gradient(pre), idx, axis=-1)
    return tok, idx.astype(mx.uint32), pre_p


# ---- pairs with a differentiable activation in between (``sae.parts.sparse``) ----------
# ``sparse_pairs`` fuses ReLU into one custom VJP. The composed dictionaries' sparse path
# needs other pair activations (ProLU's gate, a deep encoder's dense pre-activations), so
# the encoder side and the decoder side are two custom functions here, and whatever
# elementwise activation sits between them is differentiated by MLX on [P] arrays.


@mx.custom_function
def _pair_encode(x, W_enc, b_enc, tok, lat, pre_p):
    return mx.stop_gradient(pre_p) * 1  # a fresh array: the caller's pre_p is data


@_pair_encode.vjp
def _pair_encode_vjp(primals, cotangent, output):
    x, W_enc, b_enc, tok, lat, pre_p = primals
    order = mx.argsort(lat)
    segs = _segments(lat, W_enc.shape[1])
    g_enc = mx.segmented_mm(cotangent[order][None], x[tok[order]], segs)[:, 0, :].T
    g_b = mx.zeros_like(b_enc).at[lat].add(cotangent)
    # x's gradient (a deep encoder's hidden layer needs it; lazily dropped when unused):
    # per token, sum over its pairs of g_p W_enc[:, lat_p] (pairs sorted by token)
    # (rows gathered from a contiguous copy of W_enc^T: gathering rows of the transposed
    # view reads with a stride of width floats and measured 4x slower at d 256, m 4096)
    g_x = mx.segmented_mm(cotangent[None], mx.contiguous(W_enc.T)[lat],
                          _segments(tok, x.shape[0]))[:, 0, :]
    return (g_x, g_enc, g_b, mx.zeros_like(tok), mx.zeros_like(lat), mx.zeros_like(pre_p))


def pair_encode(x, W_enc, b_enc, tok, lat, pre_p):
    """[P] pre-activations of the pairs (x W_enc + b_enc at (tok, lat)), for training.

    ``pre_p`` is computed by the caller without gradient; the value returned equals it,
    and its VJP gives W_enc [d, width] and b_enc [width] their gradients from the pairs
    only (a segmented GEMM over the pairs sorted by latent, as ``sparse_pairs``), and
    x [N, d] its gradient (a segmented GEMM over the pairs sorted by token; ``tok``
    must be sorted)."""
    return _pair_encode(x, W_enc, b_enc, tok, lat, pre_p)


@mx.custom_function
def _pair_decode(x, W_dec, tok, lat, vals):
    # pairs sorted by token: one segmented GEMM, a segment per token (x only gives N)
    return mx.segmented_mm(vals[None], W_dec[lat], _segments(tok, x.shape[0]))[:, 0, :]


@_pair_decode.vjp
def _pair_decode_vjp(primals, cotangent, output):
    x, W_dec, tok, lat, vals = primals
    g_vals = _pair_dots(cotangent, W_dec, tok, lat)
    order = mx.argsort(lat)
    segs = _segments(lat, W_dec.shape[0])
    g_dec = mx.segmented_mm(vals[order][None], cotangent[tok[order]], segs)[:, 0, :]
    return mx.zeros_like(x), g_dec, mx.zeros_like(tok), mx.zeros_like(lat), g_vals


def pair_decode(x, W_dec, tok, lat, vals):
    """[N, d_out]: sum over each token's pairs of vals_p W_dec[lat_p] (no bias).

    ``tok``/``lat`` [P] sorted by token, ``x`` [N, ...] only gives N. The VJP gives
    ``vals`` (one gather_mm of pair dot products) and the touched rows of W_dec (a
    segmented GEMM per latent); no [N, width] array is formed."""
    return _pair_decode(x, W_dec, tok, lat, vals)
