"""Interventions against hand computations: head ablation, patching, mean/resample, composition."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from model_reference import Reference, make_tokens

from attribution import Ablate, Add, Patch, Replace, Scale, Site, capture, intervene, run
from attribution.errors import InterventionError


def _np(a):
    return np.array(a, dtype=np.float64)


def _close(a, b, tol=1e-5):
    a, b = _np(a), _np(b)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, np.abs(b).max()))


def test_zero_ablating_a_head_equals_zeroing_its_output_weights(model, tokens):
    layer, head = model.n_layers - 1, 1
    ablated = run(model, tokens, [Ablate(Site(layer, "attn_z"), head=head)]).logits
    proj = model.layers[layer].out_proj
    original = proj.weight
    lo, hi = head * model.d_head, (head + 1) * model.d_head
    cols = mx.arange(original.shape[1])
    try:
        proj.weight = mx.where((cols >= lo) & (cols < hi), 0.0, original)
        by_weights = model(tokens)
        mx.eval(by_weights)
    finally:
        proj.weight = original
    _close(ablated, by_weights, 1e-5)
    assert float(mx.max(mx.abs(ablated - model(tokens)))) > 1e-4  # the head mattered


def test_patch_all_resid_pre_layer0_reproduces_clean(model):
    clean, corrupt = make_tokens(model, seed=1), make_tokens(model, seed=2)
    site = Site(0, "resid_pre")
    clean_run = run(model, clean, capture=[site])
    patched = run(model, corrupt, [Patch(site, clean_run.cache)]).logits
    _close(patched, clean_run.logits, 1e-6)
    # a RunResult and a plain array work as sources too
    _close(run(model, corrupt, [Patch(site, clean_run)]).logits, clean_run.logits, 1e-6)
    _close(run(model, corrupt, [Patch(site, clean_run.cache[site])]).logits, clean_run.logits, 1e-6)


def _ref_with_replacement(model, tokens, layer, kind, value):
    """Reference logits with the site's activation replaced by ``value`` (via inject = value - x)."""
    ref = Reference(model)
    ref.forward(np.array(tokens))
    x = ref.acts[(layer, kind)]
    return ref.forward(np.array(tokens), inject={(layer, kind): value - x})


@pytest.mark.parametrize("kind", ["mlp_out", "attn_z"])
def test_mean_and_resample_ablation_equal_hand_computation(tiny_models, arch, kind):
    model = tiny_models[arch]
    toks = make_tokens(model, batch=2, seed=5)
    site = Site(model.n_layers - 1, kind)
    reference = capture(model, make_tokens(model, batch=5, seed=6), [site])[site]
    ref_np = _np(reference)
    got = run(model, toks, [Ablate(site, "mean", reference=reference)]).logits
    want = _ref_with_replacement(model, toks, site.layer, kind, ref_np.mean(0, keepdims=True))
    _close(got, want, 1e-4)
    idx = np.random.default_rng(7).integers(0, 5, size=2)
    got = run(model, toks, [Ablate(site, "resample", reference=reference, seed=7)]).logits
    want = _ref_with_replacement(model, toks, site.layer, kind, ref_np[idx])
    _close(got, want, 1e-4)


def test_mean_ablation_of_one_head_at_positions(tiny_models):
    model = tiny_models["qwen3"]
    toks = make_tokens(model, seed=8)
    site = Site(1, "attn_z")
    reference = _np(capture(model, make_tokens(model, batch=4, seed=9), [site])[site])
    got = run(model, toks, [Ablate(site, "mean", reference=mx.array(reference.astype(np.float32)),
                                   head=2, positions=[3, 5])]).logits
    ref = Reference(model)
    ref.forward(np.array(toks))
    z = ref.acts[(1, "attn_z")].copy()
    new = z.copy()
    new[:, [3, 5], 2] = reference.mean(0)[[3, 5], 2]
    want = ref.forward(np.array(toks), inject={(1, "attn_z"): new - z})
    _close(got, want, 1e-4)


def test_replace_add_scale_compose_in_order(model, tokens):
    site = Site(0, "resid_mid")
    x = _np(capture(model, tokens, [site])[site])
    rng = np.random.default_rng(0)
    value = rng.normal(size=x.shape[-1]).astype(np.float32)
    delta = rng.normal(size=x.shape).astype(np.float32)
    ivs = [Replace(site, mx.array(value), positions=[1, 2]), Scale(site, 2.0), Add(site, mx.array(delta))]
    res = run(model, tokens, ivs, capture=[site])
    want = x.copy()
    want[:, [1, 2]] = value
    want = want * 2.0 + delta
    _close(res.cache[site], want, 1e-5)
    ref = Reference(model)
    ref.forward(np.array(tokens))
    ref_logits = ref.forward(np.array(tokens), inject={(0, "resid_mid"): want - ref.acts[(0, "resid_mid")]})
    _close(res.logits, ref_logits, 1e-4)


def test_pattern_intervention_matches_reference(tiny_models, arch):
    model = tiny_models[arch]
    toks = make_tokens(model, seed=11)
    site = Site(0, "attn_pattern")
    got = run(model, toks, [Scale(site, 0.5, head=1, positions=[4])]).logits
    ref = Reference(model)
    ref.forward(np.array(toks))
    p = ref.acts[(0, "attn_pattern")]
    delta = np.zeros_like(p)
    delta[:, 1, 4] = -0.5 * p[:, 1, 4]
    _close(got, ref.forward(np.array(toks), inject={(0, "attn_pattern"): delta}), 1e-4)


def test_intervene_context_affects_plain_calls(model, tokens):
    site = Site(0, "mlp_out")
    base = model(tokens)
    with intervene(model, [Ablate(site)]):
        inside = model(tokens)
    after = model(tokens)
    _close(inside, run(model, tokens, [Ablate(site)]).logits, 1e-6)
    assert mx.array_equal(after, base)
    assert float(mx.max(mx.abs(inside - base))) > 1e-5


def test_nested_intervene_and_capture_compose(tiny_models):
    model = tiny_models["gemma2"]
    toks = make_tokens(model, seed=4)
    a, b = Site(0, "attn_out"), Site(1, "resid_pre")
    with intervene(model, [Scale(a, 0.0)]):
        inner = run(model, toks, [Add(b, 1.0)], capture=[a, b])
    direct = run(model, toks, [Scale(a, 0.0), Add(b, 1.0)], capture=[a, b])
    assert float(mx.max(mx.abs(inner.cache[a]))) == 0.0
    _close(inner.logits, direct.logits, 1e-6)
    _close(inner.cache[b], direct.cache[b], 1e-6)


def test_bad_interventions_raise(tiny_models):
    model = tiny_models["llama"]
    toks = make_tokens(model)
    with pytest.raises(InterventionError, match="head"):
        Ablate(Site(0, "resid_pre"), head=0)
    with pytest.raises(InterventionError, match="reference"):
        Ablate(Site(0, "mlp_out"), "mean")
    with pytest.raises(InterventionError, match="broadcast"):
        run(model, toks, [Replace(Site(0, "mlp_out"), mx.zeros((3, 3)))])
    with pytest.raises(InterventionError, match="out of range"):
        run(model, toks, [Ablate(Site(0, "attn_z"), head=7)])


def test_patch_one_head_clean_to_corrupted(tiny_models, arch):
    """Patching attn_z head h equals injecting (clean_z - corrupt_z) on that head in the reference."""
    model = tiny_models[arch]
    clean, corrupt = make_tokens(model, seed=12), make_tokens(model, seed=13)
    site = Site(0, "attn_z")
    clean_z = capture(model, clean, [site])[site]
    got = run(model, corrupt, [Patch(site, clean_z, head=3, positions=[-1, -2])]).logits
    ref = Reference(model)
    ref.forward(np.array(clean))
    cz = ref.acts[(0, "attn_z")]
    ref.forward(np.array(corrupt))
    delta = np.zeros_like(cz)
    delta[:, [-1, -2], 3] = (cz - ref.acts[(0, "attn_z")])[:, [-1, -2], 3]
    _close(got, ref.forward(np.array(corrupt), inject={(0, "attn_z"): delta}), 1e-4)


def test_edits_follow_forward_order_across_sites(tiny_models):
    """resid_mid edits see attn_out edits even when listed first (they share a hook point)."""
    model = tiny_models["gemma3"]
    toks = make_tokens(model, seed=14)
    mid, att, pre = Site(1, "resid_mid"), Site(1, "attn_out"), Site(1, "resid_pre")
    res = run(model, toks, [Add(mid, 1.5), Scale(att, 0.0)], capture=[pre, mid])
    _close(res.cache[mid], _np(res.cache[pre]) + 1.5, 1e-6)


@pytest.mark.parametrize("positions,rows", [
    (None, [0, 1, 2, 3, 4]), (-1, [4]), ([0, 2], [0, 2]), (slice(1, 3), [1, 2]),
    ([True, False, False, False, True], [0, 4]),
])
def test_position_and_head_selection(positions, rows):
    from attribution.model.interventions import apply

    z = np.arange(2 * 5 * 3 * 2, dtype=np.float32).reshape(2, 5, 3, 2)  # attn_z [B,T,H,dh]
    got = np.array(apply(Replace(Site(0, "attn_z"), -1.0, positions=positions, head=[0, 2]), mx.array(z)))
    want = z.copy()
    for r in rows:
        want[:, r, [0, 2]] = -1.0
    np.testing.assert_array_equal(got, want)
    p = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)  # pattern [B,H,Tq,Tk]
    got = np.array(apply(Scale(Site(0, "attn_pattern"), 0.0, positions=positions, head=1), mx.array(p)))
    want = p.copy()
    want[:, 1, rows] = 0.0
    np.testing.assert_array_equal(got, want)
