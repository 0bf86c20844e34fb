"""Encoders: pre-activations from the input.

1. ``linear``: pre = (x - b_dec) W_enc + b_enc (SAEs; transcoders skip b_dec). Training
   uses x W_enc + (b_enc - b_dec W_enc): the same map, but b_dec's gradient is a
   vector-matrix product instead of a [batch, width] GEMM (``Dictionary.train_pre_acts``).
2. ``deep``: the linear map plus a residual MLP, pre = linear(x~) + MLP(x~) with
   MLP(h) = ReLU(... ReLU(h W_h0 + b_h0) ...) W_out, ``depth`` hidden layers of width
   ``hidden``. W_out starts at zero, so training starts from the linear SAE (and keeps
   its encoder = decoder^T initialisation); arrays W_h{i}, b_h{i}, W_out live on the
   dictionary. Folding to raw units scales the first layer, W_h0 * s_in.
A tied decoder (``decoders.linear(tied=True)``) makes the encoder read W_dec^T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx

from sae.errors import ConfigError
from sae.parts.base import Part
from sae.parts.registry import register


def _input(d, x):
    return x - d.b_dec if d.apply_b_dec_to_input else x


@register("encoder", "linear")
@dataclass(frozen=True)
class LinearEncoder(Part):
    """The affine encoder of every standard SAE."""

    def pre_acts(self, d, x: mx.array) -> mx.array:
        """[..., d_in] -> [..., width]."""
        return mx.addmm(d.b_enc, _input(d, x), d.enc_weight())

    def train_pre_acts(self, d, x: mx.array) -> mx.array:
        """Same map; the b_dec subtraction folded into the bias (module docstring, 1)."""
        W = d.enc_weight()
        b = d.b_enc - d.b_dec @ W if d.apply_b_dec_to_input else d.b_enc
        return mx.addmm(b, x, W)

    def init(self, d, key) -> None:
        """Extra encoder arrays at initialisation (none)."""

    def fold(self, d, arrays: dict, s_in: float) -> None:
        """Scale input-side arrays other than W_enc for raw units (none)."""

    def linear_form(self, d):
        """(W [d_in, width], b_enc) when the encoder is affine; else None."""
        return d.enc_weight(), d.b_enc


@register("encoder", "deep")
@dataclass(frozen=True)
class DeepEncoder(LinearEncoder):
    """Linear encoder plus a residual ReLU MLP (module docstring, 2)."""

    hidden: int = 256
    """Width of each hidden layer."""
    depth: int = 1
    """Number of hidden layers (>= 1)."""

    def check(self, d) -> None:
        if not (isinstance(self.hidden, int) and self.hidden >= 1
                and isinstance(self.depth, int) and self.depth >= 1):
            raise ConfigError(f"deep encoder needs integer hidden >= 1 and depth >= 1, got "
                              f"hidden={self.hidden!r}, depth={self.depth!r}")

    def setup(self, d) -> None:
        dims = [d.d_in] + [self.hidden] * self.depth
        for i in range(self.depth):
            setattr(d, f"W_h{i}", mx.zeros((dims[i], dims[i + 1])))
            setattr(d, f"b_h{i}", mx.zeros((dims[i + 1],)))
        d.W_out = mx.zeros((self.hidden, d.width))

    def hidden_out(self, d, h: mx.array) -> mx.array:
        """The last hidden layer [..., hidden] (what W_out reads)."""
        for i in range(self.depth):
            h = mx.maximum(mx.addmm(getattr(d, f"b_h{i}"), h, getattr(d, f"W_h{i}")), 0)
        return h

    def mlp(self, d, h: mx.array) -> mx.array:
        return self.hidden_out(d, h) @ d.W_out

    def pre_acts(self, d, x):
        h = _input(d, x)
        # addmm accumulates the second GEMM into the first's output: no extra [.., width] add
        return mx.addmm(mx.addmm(d.b_enc, h, d.enc_weight()), self.hidden_out(d, h), d.W_out)

    def train_pre_acts(self, d, x):
        return self.pre_acts(d, x)

    def init(self, d, key) -> None:
        keys = mx.random.split(key, self.depth)
        dims = [d.d_in] + [self.hidden] * self.depth
        for i in range(self.depth):  # He init: the hidden ReLU layers keep the input's scale
            w = mx.random.normal((dims[i], dims[i + 1]), key=keys[i]) * math.sqrt(2.0 / dims[i])
            setattr(d, f"W_h{i}", w)
            setattr(d, f"b_h{i}", mx.zeros((dims[i + 1],)))
        d.W_out = mx.zeros((self.hidden, d.width))  # start as the linear SAE

    def fold(self, d, arrays: dict, s_in: float) -> None:
        arrays["W_h0"] = arrays["W_h0"] * s_in

    def linear_form(self, d):
        return None
