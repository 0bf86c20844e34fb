"""JumpReLU dictionary with straight-through threshold gradients.

1. z = (x - b_dec) W_enc + b_enc; theta = exp(log_threshold) (init ``threshold_init``).
2. f = z * H(z - theta); d f/d theta uses the rectangle kernel of width ``bandwidth``:
   -(theta/eps) 1[|z - theta| < eps/2].
3. L0 penalty, ``l0_form``:
   - "step": sum_i H(z_i - theta_i), d/dtheta = -(1/eps) K((z-theta)/eps) (Gemma Scope);
   - "tanh": sum_i tanh(c * f_i * ||W_dec,i||) (Anthropic, c = ``tanh_scale``).
4. Pre-activation loss ``pre_act_coef`` * sum_i ReLU(theta_i - z_i) ||W_dec,i||
   (gives dead latents a gradient towards firing).
5. L = ||y - y^||^2 + lambda * L0 + pre-act loss.
A thin composition of parts (``sae.parts.RECIPES["jumprelu"]``): jumprelu activation,
l0_ste (or tanh) penalty, pre_act dead part, transpose init at decoder norm 0.1.
"""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx

from sae.errors import ConfigError
from sae.parts import RECIPES, ComposedDictionary


class JumpReLUDictionary(ComposedDictionary):
    """JumpReLU SAE / transcoder (threshold per latent, held as a log)."""

    arch = "jumprelu"
    dec_init_norm = 0.1
    default_sparsity_coef = 0.02

    def __init__(self, d_in: int, width: int, **kw):
        kw.setdefault("bandwidth", 0.05)
        kw.setdefault("threshold_init", 0.01)
        kw.setdefault("l0_form", "step")
        kw.setdefault("tanh_scale", 4.0)
        kw.setdefault("pre_act_coef", 3e-6)
        super().__init__(d_in, width, **kw)  # the jumprelu part adds ``log_threshold``

    def _check_hparams(self) -> None:
        h = self.hparams
        if h["l0_form"] not in ("step", "tanh"):
            raise ConfigError(f"l0_form must be 'step' or 'tanh', got {h['l0_form']!r}")
        if h["bandwidth"] <= 0 or h["threshold_init"] <= 0:
            raise ConfigError("bandwidth and threshold_init must be > 0")

    def make_recipe(self):
        h = self.hparams
        r = RECIPES["jumprelu"].with_params(
            activation={"bandwidth": h["bandwidth"], "threshold_init": h["threshold_init"]},
            dead={"coef": h["pre_act_coef"]})
        if h["l0_form"] == "tanh":
            return replace(r, penalty="tanh").with_params(penalty={"scale": h["tanh_scale"]})
        return r.with_params(penalty={"bandwidth": h["bandwidth"]})

    @property
    def threshold(self) -> mx.array:
        """theta [width] in the units of the pre-activations."""
        return mx.exp(self.log_threshold)
