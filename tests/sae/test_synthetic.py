"""Synthetic ground truth: the generator's statistics and the metrics on hand-worked cases."""

import itertools
from dataclasses import replace

import numpy as np
import pytest

import sae  # noqa: F401  (loads the optimised BLAS before mlx)
from sae.errors import ConfigError, ShapeMismatchError
from sae.synthetic import (
    SyntheticConfig, cpu_preset, generate, make_truth, mcc, sample, score, stream, uniqueness,
)

SMALL = SyntheticConfig(d=32, n_features=128, mean_l0=6.0, zipf_alpha=1.0, max_prob=0.3,
                        n_parents=8, children_per_parent=3, seed=3)


def test_firing_rates_match_probabilities():
    truth = make_truth(SMALL)
    n = 40000
    on = sample(truth, n).codes > 0
    p = truth.probs
    emp = on.mean(0)
    # 5 binomial standard errors per feature (128 features: a false alarm is ~1e-4).
    assert np.all(np.abs(emp - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-4)
    assert abs(on.sum(1).mean() - SMALL.mean_l0) < 0.1
    assert abs(p.sum() - SMALL.mean_l0) < 1e-6 and p.max() <= SMALL.max_prob + 1e-12


def test_hierarchy_holds_exactly():
    cfg = cpu_preset(d=32, n_features=256, mean_l0=8.0, n_parents=16, children_per_parent=4,
                     correlation_rank=4, correlation_strength=0.5)
    truth = make_truth(cfg)
    on = sample(truth, 5000).codes > 0
    pairs = truth.hierarchy_pairs
    assert len(pairs) == 64
    assert not np.any(on[:, pairs[:, 1]] & ~on[:, pairs[:, 0]])  # no child without its parent
    assert on[:, pairs[:, 1]].sum() > 0


def test_correlation_shows_in_cofiring():
    base = dict(d=32, n_features=64, mean_l0=16.0, zipf_alpha=0.3, max_prob=0.5, seed=1)
    n = 20000
    iu = np.triu_indices(64, 1)
    corr = make_truth(SyntheticConfig(correlation_rank=2, correlation_strength=0.8, **base))
    emp = np.corrcoef((sample(corr, n).codes > 0).T)[iu]
    latent = corr.latent_correlation[iu]
    assert np.corrcoef(emp, latent)[0, 1] > 0.9
    assert np.abs(emp).mean() > 0.1
    indep = make_truth(SyntheticConfig(**base))
    emp0 = np.corrcoef((sample(indep, n).codes > 0).T)[iu]
    assert np.abs(emp0).max() < 0.05


def test_determinism_and_streaming():
    a = generate(SMALL, 1000)
    b = generate(SMALL, 1000)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert a[0].dtype == np.float32 and a[1].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a[1], axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(a[2] @ a[1], a[0], atol=1e-4)
    truth = make_truth(SMALL)
    batches = list(stream(truth, 100, 3, start=5))
    np.testing.assert_array_equal(batches[1].x, sample(truth, 100, 6).x)
    assert batches[0].codes is None
    c = generate(replace(SMALL, seed=4), 1000)
    assert not np.array_equal(a[0], c[0])


def test_config_errors():
    with pytest.raises(ConfigError, match="orthogonalize"):
        SyntheticConfig(d=8, n_features=16, mean_l0=2, orthogonalize=True)
    with pytest.raises(ConfigError, match="mean_l0"):
        SyntheticConfig(d=8, n_features=16, mean_l0=20)
    ortho = make_truth(SyntheticConfig(d=16, n_features=8, mean_l0=2, orthogonalize=True))
    np.testing.assert_allclose(ortho.directions @ ortho.directions.T, np.eye(8), atol=1e-5)


def _exact_dictionary(seed=0):
    """The truth as a dictionary: permuted, each latent rescaled (decoder × s, codes / s)."""
    truth = make_truth(SMALL)
    b = sample(truth, 3000)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(SMALL.n_features)
    s = rng.uniform(0.5, 2.0, SMALL.n_features)
    decoder = truth.directions[perm] * s[:, None]
    latents = b.codes[:, perm] / s
    return truth, b, decoder, latents


def test_exact_dictionary_scores_perfectly():
    truth, b, decoder, latents = _exact_dictionary()
    r = score(decoder, truth.directions, latents, b.codes, x=b.x, x_hat=latents @ decoder,
              hierarchy_pairs=truth.hierarchy_pairs)
    assert r.mcc == pytest.approx(1, abs=1e-6)
    assert r.f1 == pytest.approx(1) and r.precision == pytest.approx(1)
    assert r.uniqueness == 1.0 and r.shrinkage == pytest.approx(1, abs=1e-5)
    assert r.fvu == pytest.approx(0, abs=1e-8) and r.absorption == 0.0
    assert r.absorption_firing == 0.0
    assert r.n_dead == int((b.codes.sum(0) == 0).sum())


def test_duplicated_latents_lower_uniqueness():
    truth = make_truth(SMALL)
    w = truth.directions
    # 128 latents: features 0..119 once, then 8 copies of feature 0 (replacing 120..127).
    dec = np.concatenate([w[:120], np.repeat(w[:1], 8, 0)])
    assert uniqueness(dec, w) == pytest.approx(120 / 128)
    b = sample(truth, 500)
    r = score(dec, w, b.codes, b.codes)  # activations: any [n, 128] array
    assert r.uniqueness == pytest.approx(120 / 128)
    assert r.mcc < 1


def test_absorbed_toy_is_flagged():
    # Orthonormal truth in 4-d: feature 0 parent, feature 1 its child, 2 and 3 unrelated.
    w = np.eye(4, dtype=np.float32)
    n = 1000
    rng = np.random.default_rng(0)
    par = rng.random(n) < 0.5
    child = par & (rng.random(n) < 0.5)
    codes = np.stack([par, child, rng.random(n) < 0.3, rng.random(n) < 0.3], 1).astype(np.float32)
    pairs = np.array([[0, 1]])
    # Absorbed dictionary: the parent's latent decodes parent + child and fires only for the
    # parent without the child; the child's latent decodes the child alone.
    dec = w.copy()
    dec[0] = (w[0] + w[1]) / np.sqrt(2)
    lat = codes.copy()
    lat[child, 0] = 0.0
    r = score(dec, w, lat, codes, hierarchy_pairs=pairs)
    assert r.absorption == 1.0 and r.absorption_firing == 1.0
    clean = score(w, w, codes, codes, hierarchy_pairs=pairs)
    assert clean.absorption == 0.0 and clean.absorption_firing == 0.0


def test_mcc_equals_brute_force_on_4x4():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    c = np.abs(an @ bn.T)
    brute = max(np.mean([c[i, p[i]] for i in range(4)]) for p in itertools.permutations(range(4)))
    assert mcc(a, b) == pytest.approx(brute, abs=1e-12)


def test_shape_errors():
    with pytest.raises(ShapeMismatchError, match="latents"):
        score(np.eye(4), np.eye(4), np.zeros((3, 5)), np.zeros((3, 4)))


def test_topk_sae_recovers_features_end_to_end():
    from attribution import Site
    from sae import ArraySource, TrainConfig, train
    from sae.synthetic import score_dictionary

    cfg = cpu_preset(d=32, n_features=128, mean_l0=4.0, n_parents=4, children_per_parent=2,
                     correlation_rank=2, correlation_strength=0.2, magnitude_spread=0.0)
    truth = make_truth(cfg)
    x = sample(truth, 8192, return_codes=False).x
    site = Site(0, "resid_post")
    tc = TrainConfig(kind="sae", arch="topk", sites=(site,), width=128, k=4, batch_tokens=256,
                     total_tokens=256 * 600, warmup_steps=50, lr=3e-3, dead_tokens=256 * 50,
                     log_every=10 ** 9)
    d = train(ArraySource({site: x}), tc, distributed=False).dictionaries[0]
    r = score_dictionary(d, truth, 4096)
    rng = np.random.default_rng(0)
    baseline = mcc(truth.directions, rng.standard_normal((128, 32)))
    assert r.mcc > baseline + 0.2, (r.mcc, baseline)
    assert r.mcc > 0.65 and r.fvu < 0.3
