"""Gated dictionary (Rajamanoharan et al. 2024) with tied gate/magnitude weights.

1. x~ = x - b_dec (SAEs); pi_gate = x~ W_gate + b_gate; W_mag = exp(r_mag) * W_gate
   (column-wise), pi_mag = x~ W_mag + b_mag.
2. f = 1[pi_gate > 0] * ReLU(pi_mag); y^ = f W_dec + b_dec.
3. L = ||y - y^||^2 + lambda * sum_i ReLU(pi_gate)_i ||W_dec,i||
       + ||y - (ReLU(pi_gate) sg(W_dec) + sg(b_dec))||^2   (aux path, frozen decoder).
Protocol view: ``W_enc``/``b_enc`` hold W_gate/b_gate; ``pre_acts`` returns pi_mag and
``activation`` is the equivalent JumpReLU with threshold max(b_mag - exp(r) b_gate, 0).
"""

from __future__ import annotations

import mlx.core as mx

from sae.dictionary import Dictionary, LossContext


class GatedDictionary(Dictionary):
    """Gated SAE / transcoder; exactly a JumpReLU at inference."""

    arch = "gated"
    dec_init_norm = 0.1
    default_sparsity_coef = 1.0

    def __init__(self, d_in: int, width: int, **kw):
        super().__init__(d_in, width, **kw)
        self.r_mag = mx.zeros((width,))
        self.b_mag = mx.zeros((width,))

    def gate_pre_acts(self, x: mx.array) -> mx.array:
        """pi_gate [..., width]."""
        return super().pre_acts(x)

    def pre_acts(self, x: mx.array) -> mx.array:
        """pi_mag = x~ W_gate exp(r) + b_mag (the magnitude path)."""
        return (super().pre_acts(x) - self.b_enc) * mx.exp(self.r_mag) + self.b_mag

    @property
    def threshold(self) -> mx.array:
        """JumpReLU threshold on pi_mag equivalent to the gate pi_gate > 0."""
        return mx.maximum(self.b_mag - mx.exp(self.r_mag) * self.b_enc, 0)

    def activation(self, pre: mx.array) -> mx.array:
        return pre * (pre > self.threshold).astype(pre.dtype)

    def train_forward(self, x: mx.array):
        gate = self.gate_pre_acts(x)
        mag = (gate - self.b_enc) * mx.exp(self.r_mag) + self.b_mag
        f = (gate > 0).astype(mag.dtype) * mx.maximum(mag, 0)
        y_hat = self.decode(f)
        if self.W_skip is not None:
            y_hat = y_hat + x @ self.W_skip
        return gate, f, y_hat, {}

    def sparsity(self, f: mx.array, pre: mx.array) -> mx.array:
        return (mx.maximum(pre, 0) @ self.decoder_norms()).mean()

    def aux_loss(self, x, y, pre, f, y_hat, ctx: LossContext) -> mx.array:
        g = mx.maximum(pre, 0)
        y_aux = g @ mx.stop_gradient(self.W_dec) + mx.stop_gradient(self.b_dec)
        if self.W_skip is not None:
            y_aux = y_aux + x @ mx.stop_gradient(self.W_skip)
        return self.recon_loss(y, y_aux)
