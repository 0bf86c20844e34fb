"""Site gradients against finite differences, with and without freezing."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from model_reference import Reference, make_tokens

from attribution import Ablate, Add, Site, frozen, run, site_grads
from attribution.model.hooks import active_count

SITES = [Site(0, "resid_pre"), Site(0, "resid_mid"), Site(0, "attn_out"), Site(1, "attn_z"),
         Site(1, "mlp_in"), Site(1, "mlp_out"), Site(1, "attn_pattern"), Site(0, "resid_post")]


def _metric_weights(model, seed=0):
    return np.random.default_rng(seed).normal(size=(model.vocab_size,)).astype(np.float32)


def _directions(grads, seed=1):
    rng = np.random.default_rng(seed)
    return {s: rng.normal(size=g.shape).astype(np.float32) for s, g in grads.items()}


def test_gradients_match_float32_finite_differences(model, tokens):
    """Central differences with one Richardson step (cancels the eps^2 term), in float32.

    Tolerance: 5e-3 of ||grad|| * rms(u), the typical size of a projection on a
    random direction (observed errors are ~1e-4 of it; a wrong gradient is off
    by O(1) of it).
    """
    r = mx.array(_metric_weights(model))

    def metric(logits):
        return mx.sum(logits[:, -1, :] * r)

    value, grads = site_grads(model, tokens, SITES, metric)
    assert abs(float(value) - float(metric(model(tokens)))) < 1e-5
    acts = run(model, tokens, capture=SITES).cache

    def central(s, u, eps):
        f = [float(metric(run(model, tokens, [Add(s, mx.array(sign * eps * u))]).logits)) for sign in (1, -1)]
        return (f[0] - f[1]) / (2 * eps)

    for s, u in _directions(grads).items():
        eps = 1e-2 * float(np.sqrt(np.mean(np.array(acts[s]) ** 2))) / np.sqrt(np.mean(u**2))
        fd = (4 * central(s, u, eps / 2) - central(s, u, eps)) / 3
        an = float(np.sum(np.array(grads[s]) * u))
        scale = float(np.linalg.norm(np.array(grads[s]))) * float(np.sqrt(np.mean(u**2)))
        assert abs(fd - an) <= 5e-3 * scale, f"{s}: fd {fd} vs grad {an} (scale {scale})"


def _ref_fd(ref, tokens, site, u, w, frozen_vals=None, eps=1e-4):
    """Central differences of the float64 reference metric along ``u`` at ``site``."""
    vals = []
    for sign in (1, -1):
        logits = ref.forward(tokens, inject={(site.layer, site.kind): sign * eps * u}, frozen=frozen_vals)
        vals.append(float(np.sum(logits[:, -1, :] * w)))
    return (vals[0] - vals[1]) / (2 * eps)


@pytest.mark.parametrize("freeze", [False, True])
def test_gradients_match_reference_forward(model, tokens, freeze):
    """Frozen grads equal FD of a hand-built forward whose norm scales and patterns are held fixed."""
    w = _metric_weights(model)
    r = mx.array(w)
    _, grads = site_grads(model, tokens, SITES, lambda lg: mx.sum(lg[:, -1, :] * r), freeze=freeze)
    ref, toks = Reference(model), np.array(tokens)
    record: dict = {}
    ref.forward(toks, record=record)
    for s, u in _directions(grads, seed=2).items():
        fd = _ref_fd(ref, toks, s, u.astype(np.float64), w, record if freeze else None)
        an = float(np.sum(np.array(grads[s], dtype=np.float64) * u))
        assert abs(fd - an) <= 1e-3 * max(1.0, abs(fd)), f"{s} freeze={freeze}: fd {fd} vs grad {an}"


def test_freeze_changes_gradient_not_value(model, tokens):
    r = mx.array(_metric_weights(model))

    def metric(lg):
        return mx.sum(lg[:, -1, :] * r)

    v0, g0 = site_grads(model, tokens, [Site(0, "resid_pre")], metric)
    v1, g1 = site_grads(model, tokens, [Site(0, "resid_pre")], metric, freeze=True)
    assert abs(float(v0) - float(v1)) <= 1e-4 * max(1.0, abs(float(v0)))
    assert float(mx.max(mx.abs(g0[Site(0, "resid_pre")] - g1[Site(0, "resid_pre")]))) > 1e-4
    with frozen(model):
        inside = model(tokens)
    np.testing.assert_allclose(np.array(inside), np.array(model(tokens)), rtol=1e-4, atol=1e-4)
    assert active_count() == 0


def test_grads_respect_interventions(tiny_models):
    """With an MLP zero-ablated, nothing upstream reaches the logits through it."""
    model = tiny_models["llama"]
    toks = make_tokens(model, seed=3)
    last = model.n_layers - 1
    ivs = [Ablate(Site(last, "mlp_out"))]
    _, g = site_grads(model, toks, [Site(last, "mlp_in")], lambda lg: lg[:, -1, 5].sum(), interventions=ivs)
    assert float(mx.max(mx.abs(g[Site(last, "mlp_in")]))) == 0.0
