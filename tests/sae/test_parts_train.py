"""sae.parts end to end: composed dictionaries train with ``sae.train``, recover synthetic
features, save/load, export, and get the trainer's progress, resampling and dead masks."""

from __future__ import annotations

from dataclasses import dataclass

import attribution  # noqa: F401  (BLAS preload before mlx)
import mlx.core as mx
import numpy as np
import pytest

from attribution import Site
from sae import ArraySource, TrainConfig, train
from sae.errors import UnknownArchitectureError
from sae.io import (
    export_circuit_tracer,
    export_saelens,
    import_circuit_tracer,
    import_saelens,
    load_dictionary,
    save_dictionary,
)
from sae.parts import NEW, RECIPES, ComposedDictionary, Recipe, register
from sae.parts.base import Part
from sae.synthetic import cpu_preset, make_truth, mcc, sample, score_dictionary

SITE = Site(0, "resid_post")
COEF = {"prolu": 0.5, "sqrt_l1": 0.5, "lp_anneal": 1.5, "cauchy": 0.3, "deep": None,
        "ghost_grads": 2.0, "resample": 2.0}


@pytest.fixture(scope="module")
def synthetic():
    cfg = cpu_preset(d=32, n_features=128, mean_l0=4.0, n_parents=4, children_per_parent=2,
                     correlation_rank=2, correlation_strength=0.2, magnitude_spread=0.0)
    truth = make_truth(cfg)
    return truth, sample(truth, 8192, return_codes=False).x


def _config(name, steps=800, **kw):
    base = dict(kind="sae", arch=name, sites=(SITE,), width=128, k=4, batch_tokens=256,
                total_tokens=256 * steps, warmup_steps=50, lr=3e-3, dead_tokens=256 * 50,
                log_every=100, sparsity_coef=COEF.get(name))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(synthetic):
    _, x = synthetic
    return {name: train(ArraySource({SITE: x}), _config(name), distributed=False)
            for name in NEW}


@pytest.mark.parametrize("name", NEW)
def test_new_architectures_recover_synthetic_features(name, synthetic, trained):
    truth, _ = synthetic
    d = trained[name].dictionaries[0]
    assert isinstance(d, ComposedDictionary) and d.recipe.name == name
    r = score_dictionary(d, truth, 4096)
    baseline = mcc(truth.directions, np.random.default_rng(0).standard_normal((128, 32)))
    assert r.mcc > baseline + 0.15, (name, r.mcc, baseline)
    assert r.fvu < 0.35, (name, r.fvu)
    assert trained[name].history[-1]["l0"] < 30  # sparse (true L0 = 4)


@pytest.mark.parametrize("name", NEW)
def test_save_load_round_trip(name, trained, tmp_path, synthetic):
    d = trained[name].dictionaries[0]
    save_dictionary(d, tmp_path / "d")
    e = load_dictionary(tmp_path / "d")
    assert type(e) is ComposedDictionary and e.recipe == d.recipe
    assert e.describe() == d.describe()
    for k, v in d.arrays().items():
        np.testing.assert_array_equal(np.array(e.arrays()[k]), np.array(v))
    x = mx.array(synthetic[1][:64])
    np.testing.assert_array_equal(np.array(e(x)), np.array(d(x)))


@pytest.mark.parametrize("name", [n for n in NEW if n != "deep"])
def test_export_to_saelens_and_circuit_tracer(name, trained, tmp_path, synthetic):
    d = trained[name].dictionaries[0]
    x = mx.array(synthetic[1][:256])
    export_saelens(d, tmp_path / "sl")
    e = import_saelens(tmp_path / "sl")
    np.testing.assert_allclose(np.array(e.encode(x)), np.array(d.encode(x)), atol=1e-4)
    np.testing.assert_allclose(np.array(e(x)), np.array(d(x)), atol=1e-4)
    export_circuit_tracer({0: d}, tmp_path / "ct")
    c = import_circuit_tracer(tmp_path / "ct")[0]
    np.testing.assert_allclose(np.array(c.encode(x)), np.array(d.encode(x)), atol=1e-4)


def test_deep_encoder_export_refused(trained, tmp_path):
    with pytest.raises(UnknownArchitectureError, match="save_dictionary"):
        export_saelens(trained["deep"].dictionaries[0], tmp_path / "sl")
    assert not (tmp_path / "sl").exists()


@register("penalty", "test_progress")
@dataclass(frozen=True)
class ProgressProbe(Part):
    """Penalty = training progress (checks the trainer passes it)."""

    default_coef = 0.0

    def __call__(self, d, a, pre, ctx):
        return 0 * a.sum() + ctx.progress


def test_trainer_passes_progress(synthetic):
    _, x = synthetic
    tc = TrainConfig(kind="sae", arch="composed", recipe=Recipe(penalty="test_progress"),
                     sites=(SITE,), width=16, batch_tokens=128, total_tokens=128 * 10,
                     log_every=1, warmup_steps=1)
    hist = train(ArraySource({SITE: x}), tc, distributed=False).history
    np.testing.assert_allclose([r["sparsity"] for r in hist], np.arange(10) / 10, atol=1e-6)


def test_resample_part_runs_in_the_trainer(synthetic, monkeypatch):
    import importlib

    trainer = importlib.import_module("sae.train.trainer")  # (sae.train is also a function)

    _, x = synthetic
    calls = []
    real = trainer.resample_dead

    def spy(t, xx, yy, rng):
        calls.append(trainer.resample_every(t))
        return real(t, xx, yy, rng)

    monkeypatch.setattr(trainer, "resample_dead", spy)
    recipe = RECIPES["resample"].with_params(dead={"every": 4})
    tc = TrainConfig(kind="sae", arch="composed", recipe=recipe, sites=(SITE,), width=16,
                     batch_tokens=128, total_tokens=128 * 12, log_every=100, warmup_steps=1)
    train(ArraySource({SITE: x}), tc, distributed=False)
    assert calls == [4, 4, 4]


def test_resample_reinitialises_dead_latents(synthetic):
    from sae.train.trainee import build_trainees, resample_dead

    _, x = synthetic
    tc = _config("resample", steps=4, dead_tokens=100)
    (t,) = build_trainees(tc, {SITE: 32}, {SITE: x[:512]}, mx.random.key(0))
    tsf = np.zeros(128, np.int32)
    tsf[[3, 50]] = 1000
    t.tsf = mx.array(tsf)
    w_before = np.array(t.dictionary.W_dec)
    xm = mx.array(x[:512])
    assert resample_dead(t, xm, xm, np.random.default_rng(0)) == 2
    w = np.array(t.dictionary.W_dec)
    changed = np.nonzero(np.abs(w - w_before).sum(1) > 0)[0]
    assert list(changed) == [3, 50]
    alive = np.linalg.norm(w_before[np.setdiff1d(np.arange(128), [3, 50])], axis=1).mean()
    np.testing.assert_allclose(np.linalg.norm(w[[3, 50]], axis=1), alive, rtol=1e-5)
    assert int(np.array(t.tsf).max()) == 0


def test_ghost_grads_switch_on_with_dead_latents(synthetic):
    """With a dead-latent window shorter than the run, the trainer turns the ghost loss on."""
    _, x = synthetic
    tc = _config("ghost_grads", steps=60, dead_tokens=256 * 5, log_every=10, sparsity_coef=20.0)
    hist = train(ArraySource({SITE: x}), tc, distributed=False).history
    assert any(r["aux"] > 0 for r in hist[1:]), [r["aux"] for r in hist]
