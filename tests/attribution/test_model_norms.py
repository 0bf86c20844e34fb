"""Norm identification by probing, and the frozen forms' values and gradients."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from attribution.model.norms import frozen_override, norm_form


class GemmaStyleNorm(nn.Module):
    """Named like nothing we know; computes rms_norm with (1 + w)."""

    def __init__(self, dims):
        super().__init__()
        self.weight = mx.random.normal((dims,), key=mx.random.key(3)) * 0.3
        self.eps = 1e-6

    def __call__(self, x):
        return mx.fast.rms_norm(x, 1.0 + self.weight, self.eps)


def _perturbed(m, seed=0):
    m.update({k: v + 0.3 * mx.random.normal(v.shape, key=mx.random.key(seed + i))
              for i, (k, v) in enumerate(m.parameters().items())})
    return m


CASES = [
    (lambda: _perturbed(nn.RMSNorm(16)), "rms"),
    (lambda: GemmaStyleNorm(16), "rms_1p"),
    (lambda: _perturbed(nn.LayerNorm(16)), "layer"),
    (lambda: nn.LayerNorm(16, affine=False), "layer"),
]


@pytest.mark.parametrize("make,form", CASES)
def test_form_is_identified_and_frozen_form_keeps_value_not_scale_gradient(make, form):
    m = make()
    assert norm_form(m) == form
    x = mx.random.normal((3, 16), key=mx.random.key(9)) * 2 + 0.5
    frozen = frozen_override(form)
    np.testing.assert_allclose(np.array(frozen(m, None, x)), np.array(m(x)), atol=1e-5)
    r = mx.random.normal((3, 16), key=mx.random.key(10))
    g = mx.grad(lambda v: mx.sum(frozen(m, None, v) * r))(x)
    xn = np.array(x, dtype=np.float64)
    w = np.array(m.weight, dtype=np.float64) if "weight" in m else np.ones(16)
    w = 1 + w if form == "rms_1p" else w
    if form == "layer":  # d/dx of (x - mean x) * s * w with s constant
        s = 1 / np.sqrt(xn.var(-1, keepdims=True) + m.eps)
        rw = np.array(r) * w * s
        want = rw - rw.mean(-1, keepdims=True)
    else:
        s = 1 / np.sqrt((xn**2).mean(-1, keepdims=True) + m.eps)
        want = np.array(r) * w * s
    np.testing.assert_allclose(np.array(g), want, rtol=1e-4, atol=1e-5)


def test_non_norms_are_not_identified():
    assert norm_form(nn.Linear(16, 16)) is None
    assert norm_form(nn.Embedding(10, 16)) is None


def test_half_precision_norm_is_identified():
    m = _perturbed(nn.RMSNorm(32))
    m.set_dtype(mx.bfloat16)
    assert norm_form(m) == "rms"
