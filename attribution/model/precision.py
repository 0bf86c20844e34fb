"""Float precision of a loaded model: where attribution's float32 comes from.

Policy: ``load_model(path)`` (``dtype="float32"``) casts every floating
parameter to float32 once, at load; packed quantized weights stay packed
(their float scales and biases are cast). From then on every activation is
float32: embeddings (dequantised with float32 scales), matmuls (quantized
ones too: ``quantized_matmul`` with float32 scales returns float32), norms,
attention, logits. So capture, interventions, gradients and attribution
graphs are float32 arithmetic on the checkpoint's exact values (bf16 and
fp16 convert to float32 without rounding), and the numpy conversions in
attribution see float32. On Linux CPUs this is also the fast path: MLX's
bf16/fp16 matmuls run about 50x slower than float32 there (DESIGN A2).
Cost: a bf16 checkpoint takes twice its file size in memory (a quantized one
grows only by its scales). ``dtype=None`` keeps the stored dtypes (the
forward then runs in bf16/fp16 as mlx-lm runs it: capture, interventions and
gradients work; numerical results differ from float32 by bf16 round-off).

Algorithm (``cast_floats``):
  1. Walk the module's parameters; select the floating ones whose dtype is
     not ``dtype`` (integer tensors, i.e. packed quantized weights, never).
  2. Replace them by ``astype(dtype)`` in one ``update``. Called before the
     weights are first evaluated (mlx-lm loads lazily), so the stored-dtype
     copies are never kept as evaluated parameters next to the float32 ones.
"""

from __future__ import annotations

import mlx.core as mx

from attribution.errors import AttributionError

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
"""Accepted ``load_model(dtype=...)`` names."""


def resolve_dtype(dtype) -> mx.Dtype | None:
    """The MLX dtype for a ``load_model`` ``dtype`` argument (a name, an ``mx.Dtype`` or None)."""
    if dtype is None:
        return None
    if isinstance(dtype, mx.Dtype):
        if dtype in DTYPES.values():
            return dtype
    elif str(dtype) in DTYPES:
        return DTYPES[str(dtype)]
    raise AttributionError(f"dtype={dtype!r} is not a float dtype to load weights in; pass one of "
                           f"{', '.join(DTYPES)}, or None to keep the checkpoint's dtypes")


def dtype_name(dtype: mx.Dtype) -> str:
    """``mx.bfloat16`` -> "bfloat16"."""
    return str(dtype).rsplit(".", 1)[-1]


def cast_floats(module, dtype: mx.Dtype) -> int:
    """Cast every floating parameter of ``module`` to ``dtype`` (module docstring); returns how many."""
    from mlx.utils import tree_flatten, tree_unflatten

    new = [(k, v.astype(dtype)) for k, v in tree_flatten(module.parameters())
           if mx.issubdtype(v.dtype, mx.floating) and v.dtype != dtype]
    if new:
        module.update(tree_unflatten(new))
    return len(new)


def float_dtypes(module) -> tuple[str, ...]:
    """Sorted names of the floating dtypes among ``module``'s parameters."""
    from mlx.utils import tree_flatten

    return tuple(sorted({dtype_name(v.dtype) for _, v in tree_flatten(module.parameters())
                         if mx.issubdtype(v.dtype, mx.floating)}))


__all__ = ["DTYPES", "cast_floats", "dtype_name", "float_dtypes", "resolve_dtype"]
