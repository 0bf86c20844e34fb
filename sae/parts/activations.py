"""Activations: latents f from pre-activations, for training and inference.

Hooks: ``train(d, pre) -> (f, stats)``, ``infer(d, pre)``, ``protocol_pre`` (what
``pre_acts`` returns), ``penalty_input`` (what the sparsity penalty sees), ``aux``
(an activation's own auxiliary loss), ``update_stats`` (frozen state), ``threshold``
and ``export_form`` (the JumpReLU / ReLU / TopK form the file formats write).
1. ``relu``: f = ReLU(pre).
2. ``topk``: f = TopK_k(ReLU(pre)) per token (``sae.ops.topk_relu``).
3. ``batchtopk``: training keeps the k*B largest entries of the batch; the smallest kept
   value updates an EMA threshold (frozen array ``threshold``, set to the first batch's
   value, then theta <- (1 - r) theta + r thr_batch, r = ``threshold_ema``). After the last
   step the trainer replaces it by the final weights' own batch threshold on the last
   batch (``calibrate``; ranks averaged): the batch threshold keeps falling while the
   encoder trains, so any EMA lags it, and the lag, not the per-batch noise of a quantile
   over k*B entries, dominated the error (inference L0 5.3 for k = 25 after 96 steps at
   rate 0.01; ``benchmarks/dead_latents.py``). Inference is the JumpReLU
   f = pre * 1[pre > theta].
4. ``jumprelu``: f = pre * H(pre - theta), theta = exp(log_threshold) per latent, with the
   rectangle-kernel straight-through gradient for theta (``sae.ops.jumprelu``).
5. ``gated``: W_enc/b_enc are the gate path; pi_mag = (pi_gate - b_gate) exp(r_mag) + b_mag;
   f = 1[pi_gate > 0] ReLU(pi_mag); the penalty sees ReLU(pi_gate); the auxiliary loss
   reconstructs y from ReLU(pi_gate) through the frozen decoder. Inference is the
   equivalent JumpReLU on pi_mag with theta = max(b_mag - exp(r) b_gate, 0).
6. ``prolu`` (Taggart 2024): with m = pre - b_enc (the bias-free projection),
   f = ReLU(m) * 1[m + b_enc > 0]: the bias only gates, it never shifts a firing latent's
   magnitude. The true gradient w.r.t. b_enc is zero; two synthetic ones (``grad``):
   - "relu": d f / d b := 1[gate], as if f were ReLU(m + b) (Taggart's ProLU-ReLU);
   - "ste": d f / d b := m * (1/eps) K((m + b)/eps) 1[m > 0], the step's rectangle-kernel
     straight-through derivative (bandwidth eps), as for JumpReLU thresholds.
   d f / d m = 1[gate] in both. Inference and export: a JumpReLU with b = 0 and
   theta = max(-b_enc, 0), exactly (m > 0 and m > -b  <=>  m > max(0, -b)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from sae.errors import ConfigError
from sae.ops import batch_topk, jumprelu, topk_relu
from sae.parts.base import Part, zero
from sae.parts.registry import register


@register("activation", "relu")
@dataclass(frozen=True)
class ReLU(Part):
    """f = ReLU(pre)."""

    def train(self, d, pre):
        return self.infer(d, pre), {}

    def infer(self, d, pre):
        return mx.maximum(pre, 0)

    def protocol_pre(self, d, pre):
        return pre

    def penalty_input(self, d, f, pre):
        return f

    def aux(self, d, x, y, pre, f, y_hat, ctx):
        return zero()

    def update_stats(self, d, stats) -> None:
        pass

    def threshold(self, d):
        """Per-latent theta of a step (L0 penalty), or None (theta = 0)."""
        return None

    def export_form(self, d, W, b):
        """(W, b, kind, threshold, k) for the file formats (numpy arrays)."""
        return W, b, "relu", None, None


@register("activation", "topk")
@dataclass(frozen=True)
class TopK(ReLU):
    """f = TopK_k(ReLU(pre))."""

    k: int = 32
    """Active latents per token."""

    def check(self, d) -> None:
        if not (isinstance(self.k, int) and not isinstance(self.k, bool) and 1 <= self.k <= d.width):
            raise ConfigError(f"k must be an int in 1..width={d.width}, got {self.k!r}")

    def infer(self, d, pre):
        return topk_relu(pre, self.k)

    def export_form(self, d, W, b):
        return W, b, "topk", None, self.k


@register("activation", "batchtopk")
@dataclass(frozen=True)
class BatchTopK(TopK):
    """k*B largest over the batch in training; EMA-threshold JumpReLU at inference."""

    threshold_ema: float = 0.1
    """EMA rate of the inference threshold (started at the first batch's value). 0.1: a
    ~10-step window. The batch threshold falls steeply while the encoder trains (x0.47 over
    the first half of a 96-step synthetic run), so the EMA's lag, not the per-batch noise of
    a quantile over k*B entries, sets its error: at 0.01 the first batches kept 38% weight
    after 96 steps and inference fired 5 latents per row for k = 25 (0.1: 25.2;
    ``benchmarks/dead_latents.py``)."""

    def setup(self, d) -> None:
        d.threshold = mx.array(-1.0)  # < 0: not yet estimated
        d.freeze(keys=["threshold"], recurse=False)

    def train(self, d, pre):
        f, thr = batch_topk(pre, self.k)
        return f, {"batch_threshold": thr}

    def infer(self, d, pre):
        return pre * (pre > mx.maximum(d.threshold, 0)).astype(pre.dtype)

    def update_stats(self, d, stats) -> None:
        if "batch_threshold" not in stats:
            return
        thr, old = mx.stop_gradient(stats["batch_threshold"]), d.threshold
        d.threshold = mx.where(old < 0, thr, (1 - self.threshold_ema) * old + self.threshold_ema * thr)

    def calibrate(self, d, pre) -> mx.array:
        """The batch threshold of the current weights on ``pre`` (one batch's training
        pre-activations): the trainer's end-of-run value of ``threshold`` (module
        docstring, 3)."""
        return mx.stop_gradient(batch_topk(pre, self.k)[1])

    def export_form(self, d, W, b):
        thr = np.full((d.width,), max(float(np.array(d.threshold)), 0.0), np.float32)
        return W, b, "jumprelu", thr, None


@register("activation", "jumprelu")
@dataclass(frozen=True)
class JumpReLU(ReLU):
    """f = pre * H(pre - theta), learned log-threshold per latent."""

    bandwidth: float = 0.05
    """Rectangle-kernel width of the straight-through threshold gradient."""
    threshold_init: float = 0.01
    """Initial theta."""

    def check(self, d) -> None:
        if self.bandwidth <= 0 or self.threshold_init <= 0:
            raise ConfigError("jumprelu bandwidth and threshold_init must be > 0")

    def setup(self, d) -> None:
        d.log_threshold = mx.full((d.width,), math.log(self.threshold_init))

    def threshold(self, d):
        return mx.exp(d.log_threshold)

    def train(self, d, pre):
        return jumprelu(pre, self.threshold(d), self.bandwidth), {}

    def infer(self, d, pre):
        return pre * (pre > self.threshold(d)).astype(pre.dtype)

    def export_form(self, d, W, b):
        return W, b, "jumprelu", np.array(self.threshold(d)), None


@register("activation", "gated")
@dataclass(frozen=True)
class Gated(ReLU):
    """Gated SAE activation with tied gate / magnitude weights (module docstring, 5)."""

    def setup(self, d) -> None:
        d.r_mag = mx.zeros((d.width,))
        d.b_mag = mx.zeros((d.width,))

    def mag(self, d, gate):
        return (gate - d.b_enc) * mx.exp(d.r_mag) + d.b_mag

    def protocol_pre(self, d, pre):
        return self.mag(d, pre)

    def threshold(self, d):
        return mx.maximum(d.b_mag - mx.exp(d.r_mag) * d.b_enc, 0)

    def train(self, d, pre):
        mag = self.mag(d, pre)
        return (pre > 0).astype(mag.dtype) * mx.maximum(mag, 0), {}

    def infer(self, d, pre):  # ``pre`` is pi_mag here (protocol view)
        return pre * (pre > self.threshold(d)).astype(pre.dtype)

    def penalty_input(self, d, f, pre):
        return mx.maximum(pre, 0)

    def aux(self, d, x, y, pre, f, y_hat, ctx):
        y_aux = mx.maximum(pre, 0) @ mx.stop_gradient(d.W_dec) + mx.stop_gradient(d.b_dec)
        if d.W_skip is not None:
            y_aux = y_aux + x @ mx.stop_gradient(d.W_skip)
        return d.recon_loss(y, y_aux)

    def export_form(self, d, W, b):
        return (W * np.exp(np.array(d.r_mag)), np.array(d.b_mag), "jumprelu",
                np.array(self.threshold(d)), None)


def _rect(u):
    return (mx.abs(u) < 0.5).astype(u.dtype)


def prolu(pre: mx.array, b: mx.array, grad: str = "relu", eps: float = 1.0) -> mx.array:
    """ReLU(m) * 1[pre > 0], m = pre - b, with a synthetic gradient for b (module docstring,
    6). ``pre`` includes b (the encoder's output): the VJP returns b's gradient net of
    what reaches it through ``pre`` (synthetic - d/dm), which for "relu" is exactly 0, so
    no [batch, width] reduction runs for it (the encoder's bias reduction gives it all)."""

    @mx.custom_function
    def f(pre, b):
        m = pre - b
        return m * ((m > 0) & (pre > 0)).astype(m.dtype)

    @f.vjp
    def f_vjp(primals, cotangent, output):
        pre, b = primals
        m = pre - b
        gm = cotangent * ((m > 0) & (pre > 0)).astype(m.dtype)
        if grad == "relu":  # synthetic d/db = 1[gate] = d/dm: they cancel
            return gm, mx.zeros_like(b)
        gb = cotangent * m * (m > 0).astype(m.dtype) * _rect(pre / eps) / eps
        return gm, (gb - gm).reshape(-1, *b.shape).sum(axis=0)

    return f(pre, b)


@register("activation", "prolu")
@dataclass(frozen=True)
class ProLU(ReLU):
    """ProLU (module docstring, 6): the encoder bias gates but does not shift."""

    grad: str = "relu"
    """Synthetic bias gradient: "relu" (ProLU-ReLU) or "ste" (rectangle-kernel STE)."""
    bandwidth: float = 1.0
    """Kernel width eps of the "ste" gradient."""

    def check(self, d) -> None:
        if self.grad not in ("relu", "ste"):
            raise ConfigError(f"prolu grad must be 'relu' or 'ste', got {self.grad!r}")
        if self.bandwidth <= 0:
            raise ConfigError("prolu bandwidth must be > 0")
        if d.parts.encoder.linear_form(d) is None:
            raise ConfigError("prolu needs an affine encoder (its bias is the gate)")

    def train(self, d, pre):
        return prolu(pre, d.b_enc, self.grad, self.bandwidth), {}

    def protocol_pre(self, d, pre):
        return pre - d.b_enc  # m: inference is the JumpReLU m * 1[m > max(-b, 0)]

    def threshold(self, d):
        return mx.maximum(-d.b_enc, 0)

    def infer(self, d, pre):
        return pre * (pre > self.threshold(d)).astype(pre.dtype)

    def export_form(self, d, W, b):
        return W, np.zeros_like(np.asarray(b)), "jumprelu", np.array(self.threshold(d)), None
