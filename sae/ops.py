"""Array kernels shared by the dictionary architectures.

1. ``topk_mask_values``: per-row top-k of ReLU(pre) as a dense array, found as
   the k-th largest value per row (``mx.topk`` values only), rows split across
   two CPU streams because MLX's selection kernels are single-threaded.
2. ``topk_indices``: indices + values of the per-row top k (for the sparse decoder).
3. ``batch_topk``: keep the k*B largest entries of the whole batch (global threshold).
4. ``jumprelu`` / ``heaviside``: JumpReLU and step with straight-through
   pseudo-derivatives w.r.t. the threshold (rectangle kernel of bandwidth eps).
5. ``sparse_decode``: sum_j vals[b,j] * W[idx[b,j]] with a custom VJP that only
   touches the k active rows (gather forward, scatter-add backward).
"""

from __future__ import annotations

import mlx.core as mx

_STREAMS: list = []
_TINY = 1.1754944e-38  # smallest normal float32


def _cpu_streams(n: int) -> list:
    # Created lazily (no work at import); reused so MLX does not grow threads.
    while len(_STREAMS) < n:
        _STREAMS.append(mx.new_stream(mx.default_device()))
    return _STREAMS[:n]


def kth_largest(a: mx.array, k: int, split: int = 2) -> mx.array:
    """The k-th largest value of each row of 2-D ``a`` -> [rows, 1] (rows split over streams)."""
    rows = a.shape[0]
    if split <= 1 or rows < 2 * split or mx.default_device() != mx.cpu:
        return mx.topk(a, k, axis=-1).min(axis=-1, keepdims=True)
    bounds = [rows * i // split for i in range(split + 1)]
    parts = [mx.topk(a[s:e], k, axis=-1, stream=st).min(axis=-1, keepdims=True)
             for s, e, st in zip(bounds[:-1], bounds[1:], _cpu_streams(split))]
    return mx.concatenate(parts, axis=0)


def topk_relu(pre: mx.array, k: int) -> mx.array:
    """Dense TopK(ReLU(pre)) over the last axis; ties at the k-th value are all kept."""
    shape = pre.shape
    p2 = pre.reshape(-1, shape[-1])
    # Clamping the threshold to the smallest positive float folds the ReLU into one compare.
    thr = mx.maximum(mx.stop_gradient(kth_largest(p2, k)), _TINY)
    f = mx.where(p2 >= thr, p2, mx.zeros_like(p2))
    return f.reshape(shape)


def topk_indices(pre: mx.array, k: int, split: int = 2) -> tuple[mx.array, mx.array]:
    """(values [N,k] = ReLU of the top-k pre-activations, indices [N,k]) per row of 2-D pre."""
    rows = pre.shape[0]
    neg = mx.stop_gradient(-pre)
    if split <= 1 or rows < 2 * split or mx.default_device() != mx.cpu:
        idx = mx.argpartition(neg, k - 1, axis=-1)[:, :k]
    else:  # rows split over CPU streams: the selection kernel is single-threaded
        b = [rows * i // split for i in range(split + 1)]
        idx = mx.concatenate([mx.argpartition(neg[s:e], k - 1, axis=-1, stream=st)[:, :k]
                              for s, e, st in zip(b[:-1], b[1:], _cpu_streams(split))])
    vals = mx.maximum(mx.take_along_axis(pre, idx, axis=-1), 0)
    return vals, idx


def batch_topk_threshold(pre: mx.array, n_keep: int, split: int = 2) -> mx.array:
    """Scalar: the n_keep-th largest entry of the whole array.

    Exact in parallel: the global top n_keep lie in the union of each part's top
    n_keep, so each part is partitioned on its own CPU stream, then the union.
    """
    flat = mx.stop_gradient(pre).reshape(-1)
    n = flat.size
    n_keep = max(1, min(n_keep, n))
    if split > 1 and n >= 4 * split * n_keep and mx.default_device() == mx.cpu:
        b = [n * i // split for i in range(split + 1)]
        flat = mx.concatenate([mx.partition(flat[s:e], (e - s) - n_keep, stream=st)[-n_keep:]
                               for s, e, st in zip(b[:-1], b[1:], _cpu_streams(split))])
        n = flat.size
    return mx.partition(flat, n - n_keep)[n - n_keep]


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


@mx.custom_function
def _sparse_decode(vals: mx.array, idx: mx.array, W: mx.array) -> mx.array:
    # [N,1,k] @ [N,k,d]: a batched matmul over the gathered rows.
    return (vals[:, None, :] @ W[idx])[:, 0, :]


@_sparse_decode.vjp
def _sparse_decode_vjp(primals, cotangent, output):
    vals, idx, W = primals
    rows = W[idx]                                               # [N,k,d]
    g_vals = (rows @ cotangent[:, :, None])[..., 0]             # [N,k]
    upd = (vals[:, :, None] * cotangent[:, None, :]).reshape(-1, W.shape[-1])
    g_W = mx.zeros_like(W).at[idx.reshape(-1)].add(upd)
    return g_vals, mx.zeros_like(idx), g_W


def sparse_decode(vals: mx.array, idx: mx.array, W: mx.array) -> mx.array:
    """sum_j vals[n,j] * W[idx[n,j]] -> [N,d]; backward touches only the gathered rows."""
    return _sparse_decode(vals, idx, W)


def scatter_rows(vals: mx.array, idx: mx.array, width: int) -> mx.array:
    """Dense [N,width] array with vals placed at idx (zeros elsewhere)."""
    out = mx.zeros((vals.shape[0], width), dtype=vals.dtype)
    return mx.put_along_axis(out, idx, vals, axis=-1)
