"""feature_stats, logit effects, decoder geometry, text helpers and bad input, each against
an independent dense numpy computation on a tiny random llama."""

import warnings

import mlx.core as mx
import numpy as np
import pytest

import sae  # noqa: F401  (BLAS preload before mlx)
from attribution import capture, load_model
from attribution.sites import Site
from attribution.testing_dicts import random_dictionary
from attribution.tiny import make_tiny_model
from sae.features import (
    DictionaryModelMismatchError,
    EmptyDatasetError,
    FeatureIndexError,
    FeatureStatsConfig,
    StreamConfig,
    TruncationWarning,
    decoder_geometry,
    feature_examples,
    feature_stats,
    logit_effects,
    top_features,
)

SITE = Site(1, "resid_post")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(make_tiny_model("llama", tmp_path_factory.mktemp("llama"), seed=0))


@pytest.fixture(scope="module")
def sae_dict(model):
    return random_dictionary(model.d_model, SITE.layer, 48, seed=1, kind="sae", site=SITE.kind, bias=-0.3)


@pytest.fixture(scope="module")
def contexts(model):
    rng = np.random.default_rng(0)
    bos = model.tokenizer.bos_token_id
    out = []
    for n in rng.integers(5, 30, 24):
        out.append(np.concatenate([[bos], rng.integers(4, model.vocab_size, n - 1)]).astype(np.int32))
    return out


def _dense(model, d, contexts):
    """Counted activations [N, m] (position 0 / BOS dropped), one forward per context."""
    rows = []
    for c in contexts:
        x = capture(model, mx.array(c[None]), [SITE])[SITE][0]
        rows.append(np.array(d.encode(x))[1:])
    return np.concatenate(rows)


@pytest.fixture(scope="module")
def stats(model, sae_dict, contexts):
    cfg = FeatureStatsConfig(stream=StreamConfig(pack=False, batch_size=5), top_k=6, per_context=False,
                             window=2, n_logits=5, n_neighbours=4, chunk=16)
    return feature_stats(model, sae_dict, contexts, cfg)


def test_moments_and_histogram_equal_numpy(stats, model, sae_dict, contexts):
    a = _dense(model, sae_dict, contexts)
    assert stats.n_tokens == a.shape[0] and stats.n_contexts == len(contexts)
    fire = a > 0
    np.testing.assert_array_equal(stats.count, fire.sum(0))
    np.testing.assert_allclose(stats.density, fire.mean(0), rtol=1e-12)
    mean = np.where(fire.any(0), (a * fire).sum(0) / np.maximum(fire.sum(0), 1), 0)
    np.testing.assert_allclose(stats.mean_activation, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.max_activation, np.maximum(a.max(0), 0), rtol=1e-5, atol=1e-6)
    for f in range(a.shape[1]):
        want, _ = np.histogram(a[fire[:, f], f], bins=stats.hist_edges)
        np.testing.assert_array_equal(stats.hist_counts[f], want)
        assert stats.underflow[f] == (a[fire[:, f], f] < stats.hist_edges[0]).sum()


def test_top_examples_equal_sorted_activations(stats, model, sae_dict, contexts):
    a = _dense(model, sae_dict, contexts)
    for f in range(a.shape[1]):
        v = np.sort(a[a[:, f] > 0, f])[::-1][:6]
        np.testing.assert_allclose(stats.top.values[f, :v.size], v, rtol=1e-5, atol=1e-6)


def test_quantile_examples_lie_in_bins(stats):
    q = stats.quantiles
    nb = q.edges.shape[1] - 1
    for f in range(stats.width):
        for b in range(nb):
            v = q.examples.values[f * nb + b]
            v = v[np.isfinite(v)]
            assert ((v >= q.edges[f, b]) & (v <= q.edges[f, b + 1])).all()
            if b < nb - 1:
                assert (v < q.edges[f, b + 1]).all()


def test_logit_effects_equal_dense_numpy(model, sae_dict):
    eff = logit_effects(model, sae_dict.W_dec, n=5, chunk=7)
    g = np.array(model.final_norm.weight)
    dense = (np.array(sae_dict.W_dec) * g) @ np.array(model.W_U)
    assert eff.norm == "rms"
    for f in range(dense.shape[0]):
        order = np.argsort(-dense[f])
        np.testing.assert_array_equal(eff.promoted_ids[f], order[:5])
        np.testing.assert_allclose(eff.promoted[f], dense[f, order[:5]], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(eff.suppressed_ids[f], order[::-1][:5])
    # The ranking is the one of the real logit change for a small write (norm scale > 0).
    h = np.array(capture(model, mx.array([[2, 5, 9]]), [Site(1, "resid_post")])[Site(1, "resid_post")][0, -1])
    norm = model.final_norm
    base = np.array(norm(mx.array(h))) @ np.array(model.W_U)
    moved = np.array(norm(mx.array(h + 1e-3 * np.array(sae_dict.W_dec[0])))) @ np.array(model.W_U)
    # Only the feature's direction varies; the normaliser's change is second order here.
    assert np.corrcoef(moved - base, dense[0])[0, 1] > 0.9


def test_decoder_geometry_equals_dense_cosines():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((40, 6)).astype(np.float32)
    W[5] = -W[3] * 2 + 0.01 * rng.standard_normal(6)  # a strongly opposing pair
    geo = decoder_geometry(W, n=3, thresholds=(-0.7, -0.9), chunk=7)
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    S = U @ U.T
    np.fill_diagonal(S, -np.inf)
    for i in range(40):
        np.testing.assert_array_equal(geo.neighbour_ids[i], np.argsort(-S[i])[:3])
        np.testing.assert_allclose(geo.neighbour_cos[i], np.sort(S[i])[::-1][:3], rtol=1e-5)
    np.fill_diagonal(S, 1.0)
    for j, t in enumerate((-0.7, -0.9)):
        np.testing.assert_array_equal(geo.opposing[:, j], (S < t).sum(1))
        assert geo.opposing_pairs[t] == int(np.triu(S < t, 1).sum())
    assert geo.opposing_pairs[-0.9] >= 1


def test_top_features_and_feature_examples(model, sae_dict, contexts):
    df = top_features(model, sae_dict, contexts[0], k=3)
    x = capture(model, mx.array(contexts[0][None]), [SITE])[SITE][0]
    a = np.array(sae_dict.encode(x))
    for pos, grp in df.groupby("pos"):
        want = np.sort(a[pos][a[pos] > 0])[::-1][:3]
        np.testing.assert_allclose(grp["activation"].to_numpy(), want, rtol=1e-5)
        assert set(grp["feature"]) == set(np.argsort(-a[pos])[:len(want)])
    f = int(np.argmax((np.concatenate([np.array(sae_dict.encode(capture(model, mx.array(c[None]), [SITE])[SITE][0]))[1:]
                                       for c in contexts]) > 0).sum(0)))
    ex = feature_examples(model, sae_dict, contexts, f, n=4)
    best = [np.array(sae_dict.encode(capture(model, mx.array(c[None]), [SITE])[SITE][0]))[1:, f].max()
            for c in contexts]
    np.testing.assert_allclose(ex["max_activation"], np.sort(best)[::-1][:4], rtol=1e-5)


def test_long_text_warns_and_truncates(model, sae_dict):
    long = np.full(model.max_context + 10, 7, np.int32)
    with pytest.warns(TruncationWarning, match="truncated"):
        df = top_features(model, sae_dict, long)
    assert df["pos"].max() < model.max_context
    with pytest.warns(TruncationWarning):
        feature_stats(model, sae_dict, [long], FeatureStatsConfig(stream=StreamConfig(pack=False), n_quantiles=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        top_features(model, sae_dict, long[:20])  # short: no warning


def test_bad_input_raises_specific_errors(model, sae_dict, contexts):
    with pytest.raises(FeatureIndexError):
        feature_examples(model, sae_dict, contexts, sae_dict.width)
    with pytest.raises(FeatureIndexError):
        feature_examples(model, sae_dict, contexts, -1)
    wrong_d = random_dictionary(model.d_model + 8, 1, 16, kind="sae", site="resid_post")
    with pytest.raises(DictionaryModelMismatchError, match="d_model"):
        feature_stats(model, wrong_d, contexts)
    deep = random_dictionary(model.d_model, model.n_layers + 3, 16, kind="sae", site="resid_post")
    with pytest.raises(DictionaryModelMismatchError, match="layers"):
        top_features(model, deep, "the cat")
    with pytest.raises(EmptyDatasetError):
        feature_stats(model, sae_dict, [])
    with pytest.raises(EmptyDatasetError):
        feature_stats(model, sae_dict, ["the cat"])  # shorter than one packed context


@pytest.mark.parametrize("arch", ["gemma2", "gpt2"])
def test_logit_effects_apply_the_final_norm_form(arch, tmp_path):
    """Gemma's (1 + w) gain and LayerNorm's centring, against the formulas applied by hand."""
    m = load_model(make_tiny_model(arch, tmp_path / arch, seed=2))
    W = np.random.default_rng(0).standard_normal((9, m.d_model)).astype(np.float32)
    g = np.array(m.final_norm.weight)
    if arch == "gemma2":
        want_norm, dirs = "rms_1p", W * (1 + g)
    else:
        want_norm, dirs = "layer", (W - W.mean(1, keepdims=True)) * g
    dense = dirs @ np.array(m.W_U)
    eff = logit_effects(m, W, n=4)
    assert eff.norm == want_norm
    np.testing.assert_array_equal(eff.promoted_ids, np.argsort(-dense, axis=1)[:, :4])
    np.testing.assert_allclose(eff.suppressed, np.sort(dense, axis=1)[:, :4], rtol=1e-4, atol=1e-5)


def test_pass_two_from_cache_equals_rerun(model, sae_dict, contexts, stats):
    """Quantile samples from pass 1's sparse cache equal those from re-running the model."""
    cfg = FeatureStatsConfig(stream=StreamConfig(pack=False, batch_size=5), top_k=6, per_context=False,
                             window=2, n_logits=5, n_neighbours=4, chunk=16, cache_bytes=0)
    rerun = feature_stats(model, sae_dict, contexts, cfg)
    a, b = rerun.quantiles.examples, stats.quantiles.examples
    np.testing.assert_array_equal(a.context, b.context)
    np.testing.assert_array_equal(a.position, b.position)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-6, atol=1e-7)
