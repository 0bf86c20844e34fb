"""Quantized models on a CPU: float32 from dequantized weights, where it pays.

Why: MLX's CPU ``quantized_matmul`` is a single-threaded loop (measured 1.5 GFLOP/s
against 46 for the float32 BLAS matmul at 128 x 2048 x 8192), so a 4-bit model's
forward on a Linux CPU runs about 30x slower than the same model in float32.

``dequantize_layers`` (``load_model(path, dequantize=True)``): every quantized layer
becomes a float32 layer holding ``mx.dequantize`` of its weights, one layer at a time:
float32 speed, float32 memory (the 4-bit file saves disk, not RAM). The values are
those the quantized graph is tested against. (A lazy variant that dequantized blocks
inside each product was tried and dropped: MLX evaluates a whole forward's independent
dequantizations together, so every layer's float32 weights existed at once; measured
10.8 GB of growth for a 4-bit Llama-3.2-1B graph.)

``dequantized_attention`` (float32 copies of attention projections, for batched backward passes):
  1. Walk the model's modules; an attention block is a module named
     ``self_attn`` or ``attn`` (mlx-lm's names for all supported architectures).
  2. Replace each of its ``QuantizedLinear`` children by an ``nn.Linear`` whose
     weight is ``mx.dequantize(weight, scales, biases)`` in float32 (bias cast
     to float32), evaluated once.
  3. Yield whether anything was replaced; on exit (errors included) put the
     quantized modules back, so the caller's model is unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import mlx.core as mx
import mlx.nn as nn

ATTENTION_NAMES = ("self_attn", "attn")
"""Module names of attention blocks in mlx-lm's model classes."""


def _attention_quantized(module) -> list[tuple[nn.Module, str, nn.QuantizedLinear]]:
    """(attention block, child name, quantized layer) for every quantized projection (step 1)."""
    out = []
    for path, mod in module.named_modules():
        if path.rsplit(".", 1)[-1] not in ATTENTION_NAMES:
            continue
        for name, child in mod.children().items():
            if isinstance(child, nn.QuantizedLinear):
                out.append((mod, name, child))
    return out


def attention_dequant_bytes(model) -> int:
    """Bytes of the float32 copies ``dequantized_attention`` makes (0 for a float model)."""
    if not getattr(model, "quantized", False):
        return 0
    total = 0
    for _, _, q in _attention_quantized(model.module):
        rows, packed = q.weight.shape
        total += 4 * int(rows) * int(packed) * 32 // int(q.bits)
    return total


def _dequantized(q: nn.QuantizedLinear, dtype=mx.float32) -> nn.Linear:
    w = mx.dequantize(q.weight, q.scales, q.get("biases"), group_size=q.group_size, bits=q.bits,
                      mode=getattr(q, "mode", "affine")).astype(dtype)
    has_bias = "bias" in q
    lin = nn.Linear(int(w.shape[1]), int(w.shape[0]), bias=has_bias)
    lin.weight = w
    if has_bias:
        lin.bias = q.bias.astype(dtype)
    mx.eval(lin.parameters())
    return lin


@contextlib.contextmanager
def dequantized_attention(model) -> Iterator[bool]:
    """Within the block, ``model``'s quantized attention projections compute in float32
    from their dequantized weights (module docstring); True when any were replaced."""
    swaps = _attention_quantized(model.module) if getattr(model, "quantized", False) else []
    try:
        for mod, name, q in swaps:
            setattr(mod, name, _dequantized(q))
        yield bool(swaps)
    finally:
        for mod, name, q in swaps:
            setattr(mod, name, q)


def dequantize_layers(module) -> int:
    """Replace every ``QuantizedLinear`` / ``QuantizedEmbedding`` of ``module`` by a float32
    ``Linear`` / ``Embedding`` holding ``mx.dequantize`` of its weights (``load_model(...,
    dequantize=True)``); each layer is evaluated before the next is made, so the peak is the
    float32 model plus one layer. Returns how many layers were replaced."""
    n = 0
    for _, parent in list(module.named_modules()):
        for name, child in list(parent.children().items()):
            if isinstance(child, nn.QuantizedLinear):
                setattr(parent, name, _dequantized(child, child.scales.dtype))
            elif isinstance(child, nn.QuantizedEmbedding):
                w = mx.dequantize(child.weight, child.scales, child.get("biases"),
                                  group_size=child.group_size, bits=child.bits,
                                  mode=getattr(child, "mode", "affine")).astype(child.scales.dtype)
                emb = nn.Embedding(int(w.shape[0]), int(w.shape[1]))
                emb.weight = w
                mx.eval(emb.weight)
                setattr(parent, name, emb)
            else:
                continue
            n += 1
    return n


__all__ = ["ATTENTION_NAMES", "attention_dequant_bytes", "dequantize_layers", "dequantized_attention"]
