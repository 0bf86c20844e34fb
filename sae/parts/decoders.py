"""Decoders: reconstruction from latents and the reconstruction loss.

1. ``linear``: y^ = f W_dec + b_dec (+ x W_skip); loss ||y - y^||^2 (mean over tokens).
   ``norm``: "free" (the norm sits in the penalty, Anthropic April 2024) or "unit" (rows
   renormalised to 1 after every optimiser step, ``post_update``). ``tied``: the encoder
   reads W_dec^T and W_enc is not stored; folding to raw units unties (W_enc = W_dec^T s_in,
   a tied matrix cannot carry both scales), so a folded copy has ``tied=False``.
2. ``matryoshka``: the loss sums the reconstruction losses of the nested prefixes of the
   latents (``group_fractions``); the last prefix is the full reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from sae.errors import ConfigError
from sae.parts.base import Part
from sae.parts.registry import register


@register("decoder", "linear")
@dataclass(frozen=True)
class LinearDecoder(Part):
    """y^ = f W_dec + b_dec."""

    norm: str = "free"
    """"free" or "unit" (rows renormalised after each step)."""
    tied: bool = False
    """Encoder = W_dec^T (W_enc not stored)."""

    def check(self, d) -> None:
        if self.norm not in ("free", "unit"):
            raise ConfigError(f"decoder norm must be 'free' or 'unit', got {self.norm!r}")
        if self.tied and d.d_in != d.d_out:
            raise ConfigError("a tied decoder needs d_in == d_out (W_enc = W_dec^T)")

    def decode(self, d, f):
        return f @ d.W_dec + d.b_dec

    def recon(self, d, x, y, f):
        """(reconstruction loss, full-reconstruction mse, y^)."""
        y_hat = self.decode(d, f)
        if d.W_skip is not None:
            y_hat = y_hat + x @ d.W_skip
        mse = d.recon_loss(y, y_hat)
        return mse, mse, y_hat

    def post_update(self, d) -> None:
        if self.norm == "unit":
            w = d.W_dec
            d.W_dec = w / mx.maximum(mx.sqrt((w * w).sum(-1, keepdims=True)), 1e-12)


@register("decoder", "matryoshka")
@dataclass(frozen=True)
class MatryoshkaDecoder(LinearDecoder):
    """Sum of nested-prefix reconstruction losses."""

    group_fractions: tuple = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 17 / 32)
    """Group sizes as fractions of the width (positive, sum to 1)."""

    def check(self, d) -> None:
        super().check(d)
        fr = list(self.group_fractions)
        if not fr or min(fr) <= 0 or abs(sum(fr) - 1) > 1e-6:
            raise ConfigError(f"group_fractions must be positive and sum to 1, got {fr}")

    def bounds(self, width: int) -> list[int]:
        ends, acc = [], 0.0
        for fr in self.group_fractions:
            acc += fr
            ends.append(min(width, max(1, round(acc * width))))
        ends[-1] = width
        return sorted(set(ends))

    def recon(self, d, x, y, f):
        y_hat = d.b_dec + (x @ d.W_skip if d.W_skip is not None else 0)
        total, start, mse = mx.array(0.0), 0, None
        for end in self.bounds(d.width):  # prefixes share one pass over W_dec
            y_hat = y_hat + f[:, start:end] @ d.W_dec[start:end]
            mse = d.recon_loss(y, y_hat)
            total = total + mse
            start = end
        return total, mse, y_hat
