"""Dead-latent handling. ``aux(d, x, y, pre, f, y_hat, ctx)`` adds a loss term; ``ctx.dead``
is the [width] mask of latents silent for ``TrainConfig.dead_tokens`` and ``ctx.use_aux``
the host's "some latent is dead" switch (checked every ``log_every`` steps).
1. ``auxk`` (Gao et al. 2024): the k_aux largest ReLU pre-activations among dead latents
   reconstruct the residual e = sg(y - y^): coef * ||e - e^||^2 / ||e||^2.
2. ``ghost_grads`` (Anthropic, Feb 2024 update): dead latents get exp(pre) activations
   (no ReLU: every dead latent gets a gradient), ghost = exp(pre_dead) W_dec, rescaled per
   token to half the residual norm (factor detached); its loss ||ghost - e||^2 is
   normalised by ||e - mean e|| and rescaled (detached) to the main mse's magnitude, times
   ``coef``. exp is clamped at pre <= 20 to stay finite.
3. ``pre_act`` (Anthropic, JumpReLU): coef * sum_i ReLU(theta_i - pre_i) ||W_dec,i||.
4. ``resample`` (Anthropic, 2023; host side, every ``every`` steps, ``resample_dead``):
   dead latents are re-initialised toward badly reconstructed inputs: tokens drawn with
   probability proportional to their squared error; decoder row = the residual direction
   at the mean alive decoder norm; encoder column = the input direction at
   ``enc_scale`` x the mean alive encoder norm; b_enc = 0; their Adam moments and
   dead counters reset.
5. ``none``.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from sae.errors import ConfigError
from sae.ops import kth_largest
from sae.parts.base import Part, zero
from sae.parts.registry import register


@register("dead", "none")
@dataclass(frozen=True)
class NoDead(Part):
    """Nothing."""

    needs_dead = False
    resample_every = None

    def aux(self, d, x, y, pre, f, y_hat, ctx):
        return zero()


@register("dead", "auxk")
@dataclass(frozen=True)
class AuxK(NoDead):
    """AuxK (module docstring, 1)."""

    k_aux: int | None = None
    """Dead latents used; None -> d_out // 2."""
    coef: float = 1.0 / 32
    """Coefficient."""

    needs_dead = True

    def n_aux(self, d) -> int:
        return min(d.width, max(1, d.d_out // 2) if self.k_aux is None else int(self.k_aux))

    def aux(self, d, x, y, pre, f, y_hat, ctx):
        if not ctx.use_aux or ctx.dead is None:
            return zero()
        e = mx.stop_gradient(y - y_hat)
        dead_pre = mx.where(ctx.dead, mx.maximum(pre, 0), mx.zeros_like(pre))
        thr = mx.stop_gradient(kth_largest(dead_pre, self.n_aux(d)))
        f_aux = mx.where((dead_pre >= thr) & (dead_pre > 0), dead_pre, mx.zeros_like(pre))
        e_hat = f_aux @ d.W_dec
        num = ((e - e_hat) ** 2).sum(-1).mean()
        den = mx.maximum((e * e).sum(-1).mean(), 1e-12)
        return self.coef * ctx.dead.any().astype(num.dtype) * num / den


@register("dead", "ghost_grads")
@dataclass(frozen=True)
class GhostGrads(NoDead):
    """Ghost gradients (module docstring, 2)."""

    coef: float = 1.0
    """Coefficient of the (rescaled) ghost loss."""

    needs_dead = True

    def aux(self, d, x, y, pre, f, y_hat, ctx):
        if not ctx.use_aux or ctx.dead is None:
            return zero()
        e = mx.stop_gradient(y - y_hat)
        g = mx.where(ctx.dead, mx.exp(mx.minimum(pre, 20.0)), mx.zeros_like(pre))
        ghost = g @ d.W_dec
        e_norm = mx.sqrt((e * e).sum(-1, keepdims=True))
        g_norm = mx.sqrt((ghost * ghost).sum(-1, keepdims=True))
        ghost = ghost * mx.stop_gradient(e_norm / (2 * g_norm + 1e-6))
        ec = e - e.mean(0)
        denom = mx.stop_gradient(mx.sqrt((ec * ec).sum(-1, keepdims=True)) + 1e-6)
        per_tok = ((ghost - e) ** 2 / denom).sum(-1)
        mse = mx.stop_gradient((e * e).sum(-1))
        scale = mx.stop_gradient(mse / (per_tok + 1e-6))
        loss = (scale * per_tok).mean()
        return self.coef * ctx.dead.any().astype(loss.dtype) * loss


@register("dead", "pre_act")
@dataclass(frozen=True)
class PreAct(NoDead):
    """Pre-activation loss toward the threshold (module docstring, 3)."""

    coef: float = 3e-6
    """Coefficient."""

    def aux(self, d, x, y, pre, f, y_hat, ctx):
        if self.coef == 0:
            return zero()
        theta = d.parts.activation.threshold(d)
        if theta is None:
            theta = mx.zeros((d.width,), pre.dtype)
        gap = mx.maximum(theta - pre, 0)
        return self.coef * (gap @ d.decoder_norms()).mean()


@register("dead", "resample")
@dataclass(frozen=True)
class Resample(NoDead):
    """Resampling toward high-loss inputs (module docstring, 4); the trainer calls it."""

    every: int = 2500
    """Steps between resamplings."""
    enc_scale: float = 0.2
    """Encoder column norm, relative to the mean alive one."""

    def check(self, d) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(f"resample every must be an integer >= 1, got {self.every!r}")
        if d.parts.decoder.tied:
            raise ConfigError("resampling needs an untied decoder (it sets W_enc columns)")

    @property
    def resample_every(self) -> int:
        return self.every


def resample_dead(d, opt: dict, tsf, dead_tokens: int, x, y, rng: np.random.Generator,
                  enc_scale: float = 0.2) -> tuple[int, mx.array]:
    """Re-initialise d's dead latents (module docstring, 4), resetting their Adam moments
    in ``opt`` ({"m": {...}, "v": {...}}) in place; returns (count, new tokens-since-fired).
    Host side, rare; ``d`` is a single-site dictionary with W_enc, b_enc, W_dec."""
    dead = np.nonzero(np.array(tsf) >= dead_tokens)[0]
    if dead.size == 0:
        return 0, tsf
    err = np.array(y - d(x))
    p = (err ** 2).sum(1) + 1e-12
    rows = rng.choice(err.shape[0], size=dead.size, p=p / p.sum())
    xin = np.array(x)[rows]
    W_dec, W_enc = np.array(d.W_dec), np.array(d.W_enc)
    alive = np.setdiff1d(np.arange(d.width), dead)
    dn = np.linalg.norm(W_dec[alive], axis=1).mean() if alive.size else d.dec_init_norm
    en = np.linalg.norm(W_enc[:, alive], axis=0).mean() if alive.size else d.dec_init_norm
    r = err[rows] / np.maximum(np.linalg.norm(err[rows], axis=1, keepdims=True), 1e-12)
    u = xin / np.maximum(np.linalg.norm(xin, axis=1, keepdims=True), 1e-12)
    W_dec[dead], W_enc[:, dead] = r * dn, (u * enc_scale * en).T
    b_enc = np.array(d.b_enc)
    b_enc[dead] = 0
    d.W_dec, d.W_enc, d.b_enc = mx.array(W_dec), mx.array(W_enc), mx.array(b_enc)
    for mom in ("m", "v"):
        for name, axis in (("W_dec", 0), ("W_enc", 1), ("b_enc", 0)):
            if name not in opt[mom]:
                continue
            a = np.array(opt[mom][name])
            if axis == 0:
                a[dead] = 0
            else:
                a[:, dead] = 0
            opt[mom][name] = mx.array(a)
    tsf = np.array(tsf)
    tsf[dead] = 0
    return int(dead.size), mx.array(tsf)
