"""Quantized models on a CPU: float32 BLAS matmuls from dequantized weights.

Two tools, one reason: MLX's CPU ``quantized_matmul`` is a single-threaded loop
(measured 1.5 GFLOP/s against 46 for the float32 BLAS matmul at 128 x 2048 x 8192,
so a 4-bit Llama-3.2-1B forward of 128 tokens took minutes).

``use_dequantized_matmuls`` (applied by ``load_model`` on the CPU device):
  1. Every ``QuantizedLinear`` and ``QuantizedEmbedding`` of the module keeps its packed
     weights (memory stays 4-bit) but computes products with at least
     ``MIN_ROWS`` rows as ``x @ dequantize(W)ᵀ``, in blocks of at most
     ``BLOCK_VALUES`` dequantized values (so a 256k-word tied head never needs its
     whole float32 copy); fewer rows (decoding) keep the quantized kernel, which reads
     8x less memory and wins there (crossover measured at about 8 rows).
  2. The values are those of ``mx.dequantize``, the reference quantized graphs are
     tested against; only the summation order differs from the quantized kernel.

Why: exact graphs run one VJP of the linearised forward per batch of targets
(``attribution.replacement.linear``). In that forward the MLPs, QKᵀ and softmax
are dead code (frozen constants); only the attention value and output
projections (and, for fused layouts, the whole qkv projection) run, on every
target's copy of the prompt. For a quantized model those are
``quantized_matmul``s, which on a CPU run as a single-threaded loop (measured
about 100x slower than the float32 BLAS matmul) and which MLX 0.32 cannot
``vmap``, so the prompt had to be tiled b times. Dequantizing just these layers
(about a fifth of a Llama's weights) gives the same values in float32: the
arithmetic ``mx.dequantize`` would give, i.e. the reference the quantized
graph is tested against, at the cost of ``attention_dequant_bytes`` of memory
while the graph is built.

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


def _dequantized(q: nn.QuantizedLinear) -> nn.Linear:
    w = mx.dequantize(q.weight, q.scales, q.get("biases"), group_size=q.group_size, bits=q.bits,
                      mode=getattr(q, "mode", "affine")).astype(mx.float32)
    has_bias = "bias" in q
    lin = nn.Linear(int(w.shape[1]), int(w.shape[0]), bias=has_bias)
    lin.weight = w
    if has_bias:
        lin.bias = q.bias.astype(mx.float32)
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


MIN_ROWS = 8
"""Products with at least this many rows dequantize (step 1); fewer use the quantized kernel."""
BLOCK_VALUES = 2**24
"""At most this many weight values (64 MiB in float32) are dequantized at once."""


def _blocked_product(layer, x: mx.array) -> mx.array:
    """x @ dequantize(W)ᵀ, over blocks of W's output rows (step 1)."""
    w, scales, biases = layer["weight"], layer["scales"], layer.get("biases")
    n_out = int(w.shape[0])
    per_row = max(1, int(w.shape[1]) * 32 // int(layer.bits))
    step = max(1, min(n_out, BLOCK_VALUES // per_row))
    outs = []
    for a in range(0, n_out, step):
        b = min(n_out, a + step)
        wd = mx.dequantize(w[a:b], scales[a:b], None if biases is None else biases[a:b],
                           group_size=layer.group_size, bits=layer.bits,
                           mode=getattr(layer, "mode", "affine"))
        outs.append(x @ wd.astype(x.dtype).T)
    return outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=-1)


def _rows(x: mx.array) -> int:
    return int(x.size // max(1, int(x.shape[-1])))


class DequantizedMatmulLinear(nn.QuantizedLinear):
    """``QuantizedLinear`` computing products of >= ``MIN_ROWS`` rows from dequantized blocks."""

    def __call__(self, x):
        if _rows(x) < MIN_ROWS:
            return super().__call__(x)
        y = _blocked_product(self, x)
        return y + self["bias"] if "bias" in self else y


class DequantizedMatmulEmbedding(nn.QuantizedEmbedding):
    """``QuantizedEmbedding`` whose tied-head product (``as_linear``) dequantizes in blocks."""

    def as_linear(self, x):
        if _rows(x) < MIN_ROWS:
            return super().as_linear(x)
        return _blocked_product(self, x)


def use_dequantized_matmuls(module) -> int:
    """Switch every quantized layer of ``module`` to the blocked dequantized products
    (step 1); returns how many layers were switched. Parameters are untouched."""
    n = 0
    for _, m in module.named_modules():
        for old, new in ((nn.QuantizedLinear, DequantizedMatmulLinear),
                         (nn.QuantizedEmbedding, DequantizedMatmulEmbedding)):
            if type(m) is old:
                m.__class__ = new
                n += 1
    return n


__all__ = ["ATTENTION_NAMES", "BLOCK_VALUES", "MIN_ROWS", "DequantizedMatmulEmbedding",
           "DequantizedMatmulLinear", "attention_dequant_bytes", "dequantized_attention",
           "use_dequantized_matmuls"]
