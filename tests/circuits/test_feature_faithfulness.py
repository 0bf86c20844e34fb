"""Feature-circuit faithfulness against independent public-API patching runs."""

import mlx.core as mx
import numpy as np
import pytest

from attribution import Replace, Site, capture, load_model, run
from attribution.replacement import ReplacementModel
from attribution.testing_dicts import random_transcoders
from attribution.tiny import make_tiny_model
from circuits.pipeline.feature_faithfulness import (
    FaithfulnessUndefinedError, _Patcher, feature_faithfulness,
)

A, B = 5, 9


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = load_model(make_tiny_model("llama", tmp_path_factory.mktemp("ff") / "m", seed=3))
    dicts = random_transcoders(model, width=48, seed=1, bias=-0.3)
    rm = ReplacementModel(model, dicts)
    rng = np.random.default_rng(0)
    toks = [2] + [int(t) for t in rng.integers(4, model.vocab_size, size=7)]
    cf = [2] + [int(t) for t in rng.integers(4, model.vocab_size, size=7)]
    return model, dicts, rm, toks, cf


def metric(last):
    return last[A] - last[B]


def _plain(model, toks, interventions=()):
    logits = run(model, mx.array([toks], dtype=mx.int32), interventions=interventions).logits
    return float(metric(logits[0, -1]))


def _clean_errors(model, dicts, toks):
    sites = [s for d in dicts for s in (d.in_site, d.out_site)]
    cache = capture(model, mx.array([toks], dtype=mx.int32), sites)
    return {d.out_site.layer: cache[d.out_site][0] - d.decode(d.encode(cache[d.in_site][0]))
            for d in dicts}


def test_full_circuit_is_the_model(setup):
    model, dicts, rm, toks, cf = setup
    p = _Patcher(rm, toks, metric, "zero")
    assert abs(p.value(*p.masks(everything=True)) - _plain(model, toks)) < 1e-4


def test_empty_circuit_under_zero_ablation_is_bias_only_mlps(setup):
    model, dicts, rm, toks, cf = setup
    p = _Patcher(rm, toks, metric, "zero", inactive="ablate")
    T = len(toks)
    reps = [Replace(d.out_site, mx.broadcast_to(d.b_dec, (1, T, model.d_model))) for d in dicts]
    assert abs(p.value(*p.masks()) - _plain(model, toks, reps)) < 1e-4


def test_empty_circuit_under_counterfactual_is_the_corrupted_prompt(setup):
    model, dicts, rm, toks, cf = setup
    p = _Patcher(rm, toks, metric, "counterfactual", cf, inactive="ablate")
    assert abs(p.value(*p.masks()) - _plain(model, cf)) < 1e-4


def test_whole_graph_is_the_model_when_inactive_features_stay_live(setup):
    from attribution import GraphConfig, build_graph, logit_diff
    from circuits.pipeline.feature_faithfulness import feature_faithfulness_curve

    model, dicts, rm, toks, cf = setup
    g = build_graph(model, dicts, toks, targets=logit_diff(model, A, B), config=GraphConfig())
    curve = feature_faithfulness_curve(rm, toks, g, np.arange(len(g.nodes), dtype=float), metric,
                                       [0.0, 1.0], "counterfactual", cf)
    assert curve["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-4)
    assert curve["faithfulness"].iloc[0] == pytest.approx(0.0, abs=1e-4)


def test_kept_tokens_are_clean_and_the_rest_counterfactual(setup):
    """Keeping every feature/error but only some tokens equals the hybrid-token model."""
    model, dicts, rm, toks, cf = setup
    p = _Patcher(rm, toks, metric, "counterfactual", cf)
    keep = [0, 2, 5]
    keep_f, keep_e, _ = p.masks(everything=True)
    _, _, keep_t = p.masks(tokens=keep)
    hybrid = [t if i in keep else c for i, (t, c) in enumerate(zip(toks, cf))]
    # every feature live and every error at its clean value, on hybrid tokens:
    # Replace each MLP output by its live reconstruction plus the clean error.
    err = _clean_errors(model, dicts, toks)
    T = len(toks)
    x = mx.array([hybrid], dtype=mx.int32)
    reps, cache = [], {}
    for d in dicts:  # layer by layer, so each layer's input sees earlier replacements
        c = capture(model, x, [d.in_site], ) if not reps else run(
            model, x, interventions=reps, capture=[d.in_site]).cache
        y = d.decode(d.encode(c[d.in_site][0])) + err[d.out_site.layer]
        reps.append(Replace(d.out_site, y.reshape(1, T, -1)))
    assert abs(p.value(keep_f, keep_e, keep_t) - _plain(model, hybrid, reps)) < 1e-4


def test_one_kept_error_node_adds_exactly_that_error(setup):
    model, dicts, rm, toks, cf = setup
    p = _Patcher(rm, toks, metric, "zero", inactive="ablate")
    T, keep = len(toks), (1, 4)
    err = _clean_errors(model, dicts, toks)
    reps = []
    for d in dicts:
        v = mx.broadcast_to(d.b_dec, (T, model.d_model))
        if d.out_site.layer == keep[0]:
            v = v + mx.where(mx.arange(T)[:, None] == keep[1], err[keep[0]], 0.0)
        reps.append(Replace(d.out_site, v[None]))
    got = p.value(*p.masks(errors=[keep], tokens=range(T)))
    assert abs(got - _plain(model, toks, reps)) < 1e-4


def test_faithfulness_normalisation_and_complement(setup):
    from attribution import GraphConfig, build_graph, logit_diff

    model, dicts, rm, toks, cf = setup
    g = build_graph(model, dicts, toks, targets=logit_diff(model, A, B), config=GraphConfig())
    res = feature_faithfulness(rm, toks, g, metric, ablation="counterfactual", counterfactual=cf)
    assert abs(res.f_full - _plain(model, toks)) < 1e-4
    assert res.faithfulness == pytest.approx((res.f_circuit - res.f_empty) / (res.f_full - res.f_empty))
    assert res.completeness == pytest.approx((res.f_complement - res.f_empty) / (res.f_full - res.f_empty))


def test_undefined_when_metric_does_not_move(setup):
    model, dicts, rm, toks, cf = setup
    from attribution import GraphConfig, build_graph, logit_diff

    g = build_graph(model, dicts, toks, targets=logit_diff(model, A, B), config=GraphConfig())
    with pytest.raises(FaithfulnessUndefinedError, match="undefined"):
        # the counterfactual equal to the prompt ablates nothing: F(M) = F(∅)
        feature_faithfulness(rm, toks, g, metric, ablation="counterfactual", counterfactual=toks)
