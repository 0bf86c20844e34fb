"""Evaluation metrics against hand/numpy computations; activation sources and caches."""

import mlx.core as mx
import numpy as np
import pytest

import sae  # noqa: F401
from attribution.sites import Site
from sae import evaluate
from sae.arch import ReLUDictionary
from sae.data import (
    ActivationCache,
    ArraySource,
    StreamSource,
    config_hash,
    drop_outliers,
    write_cache,
)
from sae.errors import CacheMismatchError, EmptyDatasetError
from sae_test_helpers import random_dictionary

S = Site(0, "resid_post")


def test_metrics_hand_example():
    # identity-like dictionary on 2-d data: width 3, latent 2 never fires
    d = ReLUDictionary(2, 3, in_site=S)
    d.W_enc = mx.array([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]])
    d.W_dec = mx.array([[1.0, 0.0], [0.0, 0.5], [0.0, 0.0]])
    x = np.array([[1.0, 2.0], [3.0, 0.0], [2.0, 4.0], [0.5, 0.5]], np.float32)
    row = evaluate([d], {S: x}).iloc[0]
    y = np.stack([x[:, 0], 0.5 * x[:, 1]], 1)
    fvu = ((x - y) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    cos = np.mean((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)))
    assert row.fvu == pytest.approx(fvu, rel=1e-6)
    assert row.cosine == pytest.approx(cos, rel=1e-6)
    assert row.rel_bias == pytest.approx((y ** 2).sum() / (x * y).sum(), rel=1e-6)
    assert row.l0 == pytest.approx(7 / 4)
    assert row.dead_frac == pytest.approx(1 / 3)
    assert row.dense_frac == pytest.approx(2 / 3)
    assert sum(row.log10_density_hist) == 2


def test_evaluate_numpy_reference(rng):
    ds = [random_dictionary(a, seed=i) for i, a in enumerate(["topk", "jumprelu", "gated"])]
    x = rng.standard_normal((300, 12)).astype(np.float32)
    df = evaluate(ds, {S: x}, batch_tokens=64)
    assert list(df.columns[:3]) == ["arch", "width", "tokens"] and len(df) == 3
    for d, (_, row) in zip(ds, df.iterrows()):
        f = np.array(d.encode(mx.array(x)))
        y = np.array(d(mx.array(x)), np.float64)
        assert row.l0 == pytest.approx((f > 0).sum(1).mean())
        assert row.fvu == pytest.approx(((x - y) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-5)
        dens = (f > 0).mean(0)
        assert row.dead_frac == pytest.approx((dens == 0).mean())


def test_array_source_is_deterministic_and_covers_epochs():
    x = np.arange(50, dtype=np.float32).reshape(25, 2)
    src = ArraySource({S: x})
    a = [b[S] for _, b in zip(range(5), src.batches(10, seed=3))]
    b = [b[S] for _, b in zip(range(5), src.batches(10, seed=3))]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    first_epoch = np.concatenate(a)[:25, 0]
    assert sorted(first_epoch.tolist()) == x[:, 0].tolist()


def test_stream_mixing_buffer_emits_every_token_once_shuffled():
    x = np.arange(1000, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32) + 1
    chunks = lambda: (({S: x[i:i + 100]}) for i in range(0, 1000, 100))
    src = StreamSource(chunks, [S], {S: 3}, buffer_tokens=300, outlier_factor=None, max_passes=1)
    got = np.concatenate([b[S][:, 0] for b in src.batches(50, seed=0)])
    assert len(got) == 1000 and sorted(got.tolist()) == (x[:, 0]).tolist()
    assert not np.array_equal(got, x[:, 0])


def test_outliers_dropped():
    x = np.ones((100, 4), np.float32)
    x[7] *= 50
    out = drop_outliers({S: x}, 10.0)
    assert out[S].shape[0] == 99


def test_cache_round_trip_and_mismatch(tmp_path):
    x = np.random.default_rng(0).standard_normal((500, 4)).astype(np.float32)
    h = config_hash({"model_type": "llama", "hidden_size": 4})
    write_cache(tmp_path / "c", ({S: x[i:i + 100]} for i in range(0, 500, 100)),
                model_id="tiny", model_hash=h, dims={S: 4})
    cache = ActivationCache(tmp_path / "c", model_id="tiny", model_hash=h, outlier_factor=None)
    assert cache.n_tokens == 500
    got = np.concatenate([b[S] for _, b in zip(range(4), cache.batches(100, seed=0))])
    assert {tuple(r) for r in got} <= {tuple(r) for r in x}
    with pytest.raises(CacheMismatchError, match="model_hash"):
        ActivationCache(tmp_path / "c", model_id="tiny", model_hash="other")
    with pytest.raises(CacheMismatchError):
        ActivationCache(tmp_path / "c", sites=[Site(3, "mlp_in")])
    with pytest.raises(EmptyDatasetError):
        write_cache(tmp_path / "e", iter(()), model_id="m", model_hash=h, dims={S: 4})
    assert not (tmp_path / "e").exists()
