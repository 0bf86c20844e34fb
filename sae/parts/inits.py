"""Initialisations: decoder rows, encoder, and how b_dec starts.

1. ``transpose``: W_dec rows Gaussian, normalised to ``dec_norm``; W_enc = W_dec^T when
   d_in == d_out (Gao et al.: far fewer dead latents), else independent columns of the
   same norm; b_enc = 0.
2. ``independent``: W_enc columns drawn independently of W_dec (norm ``dec_norm``).
``b_dec``: "geometric_median" / "mean" / "zeros" of the first batch, or None to follow
``TrainConfig.b_dec_init``; the trainer reads it (``ComposedDictionary.b_dec_init``).
The encoder part then adds its own arrays (deep encoder layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from sae.errors import ConfigError
from sae.parts.base import Part
from sae.parts.registry import register


def _unit_rows(w, norm):
    return w / mx.sqrt((w * w).sum(-1, keepdims=True)) * norm


@register("init", "transpose")
@dataclass(frozen=True)
class TransposeInit(Part):
    """W_enc = W_dec^T (module docstring, 1)."""

    dec_norm: float = 1.0
    """Initial norm of every decoder row."""
    b_dec: str | None = None
    """"geometric_median", "mean", "zeros", or None (the TrainConfig's choice)."""

    transpose = True

    def check(self, d) -> None:
        if self.b_dec not in (None, "geometric_median", "mean", "zeros"):
            raise ConfigError(f"init b_dec must be geometric_median, mean, zeros or None, "
                              f"got {self.b_dec!r}")
        if not self.dec_norm > 0:
            raise ConfigError("init dec_norm must be > 0")

    def init(self, d, key, b_dec=None) -> None:
        # the draws of ``Dictionary.init_weights`` exactly (same key -> same weights)
        k1, k2 = mx.random.split(key)
        d.W_dec = _unit_rows(mx.random.normal((d.width, d.d_out), key=k1), self.dec_norm)
        if not d.parts.decoder.tied:
            if self.transpose and d.d_in == d.d_out:
                d.W_enc = mx.array(d.W_dec.T)
            else:
                e = mx.random.normal((d.d_in, d.width), key=k2)
                d.W_enc = e / mx.sqrt((e * e).sum(0, keepdims=True)) * self.dec_norm
        d.b_enc = mx.zeros((d.width,))
        if b_dec is not None:
            d.b_dec = mx.array(b_dec).astype(mx.float32)
        d.parts.encoder.init(d, mx.random.split(key, 3)[2])


@register("init", "independent")
@dataclass(frozen=True)
class IndependentInit(TransposeInit):
    """Encoder columns independent of the decoder."""

    transpose = False
