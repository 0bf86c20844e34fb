"""Sparsity penalties: per-token mean of sum_i rho(a_i), before the coefficient.

``a`` is what the activation exposes (``penalty_input``: f, or ReLU(pi_gate) for gated);
with ``weighted`` (default) a_i is scaled by ||W_dec,i|| so the penalty cannot be dodged
by shrinking f and growing the decoder (Anthropic April 2024). rho per penalty:
1. ``l1``: a.                      2. ``sqrt_l1``: sqrt(a + eps) - sqrt(eps).
3. ``lp``: (a + eps)^p - eps^p, p = p_start + (p_end - p_start) * s(progress), where
   s is the recipe's schedule (p-annealing, Karvonen et al. 2024).
4. ``tanh``: tanh(scale * a) (Anthropic's smooth L0).
5. ``cauchy``: log(1 + (a / scale)^2) (the negative log of a Cauchy prior).
6. ``l0_ste``: H(pre - theta) with theta the activation's threshold (0 when it has none);
   d/dtheta := -(1/eps) K((pre - theta)/eps) (rectangle K, as Gemma Scope); with
   ``pre_grad`` also d/dpre := +(1/eps) K(...) (needed when theta is not learned).
7. ``none``: 0 (the TopK family controls sparsity with k).
eps keeps the gradient of the concave penalties finite at a = 0.
The concave and smooth penalties (2-5) give rho and, optionally, ``drho(u, r)``: the derivative
written with r = rho(u) (sqrt: 1 / (2 (r + sqrt(eps))); lp: p (r + eps^p) / (u + eps);
tanh: c (1 - r^2); cauchy: 2u / (scale^2 + u^2)), so the backward pass over [batch, width]
repeats no pow / log / tanh: on [batch, width] one pass writes rho's row sums and drho
(``sae.ops.row_penalty``), on the pair path's [P] arrays ``sae.ops.map_rows`` keeps r;
the costly ones run on row blocks over two CPU streams (inside the trainer's split step,
one block each). A part without ``drho`` is differentiated by MLX.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from sae.errors import ConfigError
from sae.ops import heaviside, map_rows, row_penalty
from sae.parts.base import Part, zero
from sae.parts.registry import register


@register("penalty", "none")
@dataclass(frozen=True)
class NoPenalty(Part):
    """No penalty (TopK family)."""

    default_coef = 0.0

    def __call__(self, d, a, pre, ctx):
        return zero()


@dataclass(frozen=True)
class _Elementwise(Part):
    weighted: bool = True
    """Scale a_i by ||W_dec,i|| (module docstring)."""

    default_coef = 1.0

    def scaled(self, d, a):
        return mx.abs(a) * d.decoder_norms() if self.weighted else mx.abs(a)

    def rho(self, u, ctx):
        """rho at every entry of u >= 0 (rho(0) = 0)."""
        raise NotImplementedError

    drho = None
    """Optional ``drho(u, r, ctx)``: d rho / du from u and r = rho(u) (module docstring)."""
    costly = True
    """rho is a transcendental function worth splitting over CPU streams (``map_rows``)."""

    def fns(self, d, ctx):
        """(rho, drho or None) as functions of u (and r), bound to this step's ``ctx``."""
        dfn = None if self.drho is None else (lambda v, r: self.drho(v, r, ctx))
        return (lambda v: self.rho(v, ctx)), dfn

    def per_entry(self, d, u, ctx):
        """rho(u) at every entry (also the sparse pair path's penalty, on [P] arrays)."""
        fn, dfn = self.fns(d, ctx)
        return map_rows(fn, dfn, u, split=2 if self.costly else 1)

    def __call__(self, d, a, pre, ctx):
        fn, dfn = self.fns(d, ctx)
        if dfn is None or a.ndim != 2:  # autodiff through rho (e.g. a user's new part)
            return self.per_entry(d, self.scaled(d, a), ctx).sum(-1).mean()
        norms = d.decoder_norms() if self.weighted else None
        return row_penalty(fn, dfn, a, norms, split=2 if self.costly else 1).mean()


@register("penalty", "l1")
@dataclass(frozen=True)
class L1(_Elementwise):
    """sum_i a_i ||W_dec,i||; written as a matrix-vector product (one pass less)."""

    default_coef = 5.0

    def __call__(self, d, a, pre, ctx):
        if self.weighted:
            return (a @ d.decoder_norms()).mean()
        return mx.abs(a).sum(-1).mean()


@register("penalty", "sqrt_l1")
@dataclass(frozen=True)
class SqrtL1(_Elementwise):
    """sum_i sqrt(a_i + eps) - sqrt(eps)."""

    eps: float = 1e-4
    """Smoothing at 0."""

    def check(self, d) -> None:
        if self.eps <= 0:
            raise ConfigError("sqrt_l1 eps must be > 0")

    def rho(self, u, ctx):
        return mx.sqrt(u + self.eps) - self.eps ** 0.5

    costly = False  # sqrt is one vector instruction: fused with its neighbours, unsplit

    def drho(self, u, r, ctx):
        return 0.5 / (r + self.eps ** 0.5)


@register("penalty", "lp")
@dataclass(frozen=True)
class Lp(_Elementwise):
    """sum_i (a_i + eps)^p - eps^p with p annealed by the recipe's schedule."""

    p_start: float = 1.0
    """p at schedule value 0."""
    p_end: float = 0.5
    """p at schedule value 1."""
    eps: float = 1e-4
    """Smoothing at 0."""

    def check(self, d) -> None:
        if not (0 < self.p_end <= 1 and 0 < self.p_start <= 1) or self.eps <= 0:
            raise ConfigError("lp needs 0 < p_start, p_end <= 1 and eps > 0")

    def p(self, d, progress):
        s = d.parts.schedule.value(progress)
        return self.p_start + (self.p_end - self.p_start) * s

    def fns(self, d, ctx):
        p = self.p(d, ctx.progress)
        ep = mx.power(mx.array(self.eps), p)
        return (lambda v: mx.power(v + self.eps, p) - ep,
                lambda v, r: p * (r + ep) / (v + self.eps))


@register("penalty", "tanh")
@dataclass(frozen=True)
class Tanh(_Elementwise):
    """sum_i tanh(scale * a_i)."""

    scale: float = 4.0
    """c in tanh(c a)."""

    default_coef = 0.02

    def rho(self, u, ctx):
        return mx.tanh(self.scale * u)

    def drho(self, u, r, ctx):
        return self.scale * (1 - mx.square(r))


@register("penalty", "cauchy")
@dataclass(frozen=True)
class Cauchy(_Elementwise):
    """sum_i log(1 + (a_i / scale)^2)."""

    scale: float = 1.0
    """Cauchy scale gamma."""

    def check(self, d) -> None:
        if self.scale <= 0:
            raise ConfigError("cauchy scale must be > 0")

    def rho(self, u, ctx):
        return mx.log1p(mx.square(u / self.scale))

    def drho(self, u, r, ctx):
        return 2 * u / (self.scale ** 2 + mx.square(u))


def step_ste(z: mx.array, theta: mx.array, eps: float) -> mx.array:
    """H(z - theta) with d/dz := (1/eps) K, d/dtheta := -(1/eps) K (K rectangle)."""

    @mx.custom_function
    def f(z, theta):
        return (z > theta).astype(z.dtype)

    @f.vjp
    def f_vjp(primals, cotangent, output):
        z, theta = primals
        k = (mx.abs((z - theta) / eps) < 0.5).astype(z.dtype) * cotangent / eps
        return k, (-k).reshape(-1, *theta.shape).sum(axis=0)

    return f(z, theta)


@register("penalty", "l0_ste")
@dataclass(frozen=True)
class L0STE(Part):
    """Counted active latents with a straight-through gradient (module docstring, 6)."""

    bandwidth: float = 0.05
    """Rectangle-kernel width eps."""
    pre_grad: bool = False
    """Also pass the kernel's gradient to the pre-activations."""

    default_coef = 0.02

    def check(self, d) -> None:
        if self.bandwidth <= 0:
            raise ConfigError("l0_ste bandwidth must be > 0")

    def __call__(self, d, a, pre, ctx):
        theta = d.parts.activation.threshold(d)
        if theta is None:
            theta = mx.zeros((d.width,), pre.dtype)
        if self.pre_grad:
            return step_ste(pre, theta, self.bandwidth).sum(-1).mean()
        return heaviside(pre, theta, self.bandwidth).sum(-1).mean()
