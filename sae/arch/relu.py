"""ReLU + L1 dictionary, Anthropic April-2024 form.

1. f = ReLU((x - b_dec) W_enc + b_enc)      (no b_dec subtraction for transcoders)
2. y^ = f W_dec + b_dec
3. L = ||y - y^||^2 + lambda * sum_i f_i ||W_dec,i||  (no unit-norm constraint;
   decoder rows initialised at norm 0.1 and W_enc = W_dec^T).
A thin composition of parts (``sae.parts.RECIPES["relu"]``): linear encoder, relu
activation, decoder-norm-weighted l1 penalty, free-norm decoder, transpose init.
"""

from __future__ import annotations

from sae.parts import RECIPES, ComposedDictionary


class ReLUDictionary(ComposedDictionary):
    """ReLU SAE / transcoder with the decoder-norm-weighted L1 penalty."""

    arch = "relu"
    dec_init_norm = 0.1
    default_sparsity_coef = 5.0

    def _check_hparams(self) -> None:
        pass

    def make_recipe(self):
        return RECIPES["relu"]
