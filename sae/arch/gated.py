"""Gated dictionary (Rajamanoharan et al. 2024) with tied gate/magnitude weights.

1. x~ = x - b_dec (SAEs); pi_gate = x~ W_gate + b_gate; W_mag = exp(r_mag) * W_gate
   (column-wise), pi_mag = x~ W_mag + b_mag.
2. f = 1[pi_gate > 0] * ReLU(pi_mag); y^ = f W_dec + b_dec.
3. L = ||y - y^||^2 + lambda * sum_i ReLU(pi_gate)_i ||W_dec,i||
       + ||y - (ReLU(pi_gate) sg(W_dec) + sg(b_dec))||^2   (aux path, frozen decoder).
Protocol view: ``W_enc``/``b_enc`` hold W_gate/b_gate; ``pre_acts`` returns pi_mag and
``activation`` is the equivalent JumpReLU with threshold max(b_mag - exp(r) b_gate, 0).
A thin composition of parts (``sae.parts.RECIPES["gated"]``: the gated activation holds
r_mag / b_mag, the gate-path penalty input and the auxiliary loss).
"""

from __future__ import annotations

import mlx.core as mx

from sae.dictionary import Dictionary
from sae.parts import RECIPES, ComposedDictionary


class GatedDictionary(ComposedDictionary):
    """Gated SAE / transcoder; exactly a JumpReLU at inference."""

    arch = "gated"
    dec_init_norm = 0.1
    default_sparsity_coef = 1.0

    def _check_hparams(self) -> None:
        pass

    def make_recipe(self):
        return RECIPES["gated"]

    def gate_pre_acts(self, x: mx.array) -> mx.array:
        """pi_gate [..., width]."""
        return Dictionary.pre_acts(self, x)

    @property
    def threshold(self) -> mx.array:
        """JumpReLU threshold on pi_mag equivalent to the gate pi_gate > 0."""
        return self.parts.activation.threshold(self)
