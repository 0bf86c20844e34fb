"""Co-activation statistics against dense numpy, Fisher against scipy, BH against scipy."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as ss

import sae  # noqa: F401  (BLAS preload before mlx)
from attribution import load_model
from attribution.sites import Site
from attribution.testing_dicts import random_dictionary
from attribution.tiny import make_tiny_model
from sae.features import (
    CoactivationConfig,
    FeatureIndexError,
    StreamConfig,
    benjamini_hochberg,
    coactivation,
    coactivation_from_batches,
    coactivation_matrix,
    coactivation_report,
    fisher_greater,
    fisher_less,
    report_tables,
    write_report_csv,
)


def _acts(seed, n=600, m=9, dens=0.25):
    rng = np.random.default_rng(seed)
    base = rng.random((n, 1)) < 0.3                        # a shared cause -> correlated pairs
    on = (rng.random((n, m)) < dens) | (base & (np.arange(m) < 3))
    return np.where(on, rng.exponential(1.0, (n, m)), 0).astype(np.float32)


def _dense_pairs(a, b, same):
    n = a.shape[0]
    A, B = (a > 0).astype(np.int64), (b > 0).astype(np.int64)
    C = A.T @ B
    ca, cb = A.sum(0), B.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        R = np.corrcoef(np.concatenate([a, b], 1).T)[:a.shape[1], a.shape[1]:]
    rows = []
    for i in range(a.shape[1]):
        for j in range(b.shape[1]):
            if (same and j <= i) or C[i, j] == 0:
                continue
            c = C[i, j]
            pmi = np.log(c * n / (ca[i] * cb[j]))
            rows.append((i, j, c, c / (ca[i] + cb[j] - c), pmi, pmi / -np.log(c / n), R[i, j]))
    return pd.DataFrame(rows, columns=["i", "j", "count", "jaccard", "pmi", "npmi", "pearson"])


@pytest.mark.parametrize("dense_limit", [1 << 22, 0])  # dense and sparse accumulation agree
@pytest.mark.parametrize("cross", [False, True])
def test_pair_statistics_equal_dense_numpy(dense_limit, cross):
    a = _acts(0)
    b = _acts(1, m=7) if cross else a
    chunks = [a[s:s + 128] if not cross else (a[s:s + 128], b[s:s + 128]) for s in range(0, a.shape[0], 128)]
    res = coactivation_from_batches(chunks, a.shape[1], b.shape[1] if cross else None,
                                    CoactivationConfig(min_count=1, dense_limit=dense_limit))
    want = _dense_pairs(a, b, same=not cross).sort_values(["i", "j"], ignore_index=True)
    got = res.pairs.sort_values(["i", "j"], ignore_index=True)
    np.testing.assert_array_equal(got[["i", "j", "count"]].to_numpy(), want[["i", "j", "count"]].to_numpy())
    for col in ("jaccard", "pmi", "npmi", "pearson"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-9, atol=1e-12, err_msg=col)
    assert res.n_tests == (a.shape[1] * (a.shape[1] - 1) // 2 if not cross else a.shape[1] * b.shape[1])
    kept = coactivation_from_batches(chunks, a.shape[1], b.shape[1] if cross else None,
                                     CoactivationConfig(min_count=40, dense_limit=dense_limit))
    assert set(map(tuple, kept.pairs[["i", "j"]].to_numpy())) == \
        set(map(tuple, want[want["count"] >= 40][["i", "j"]].to_numpy()))


def test_fisher_equals_scipy_fisher_exact():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(20, 400))
        a, b = (int(x) for x in rng.integers(1, n, 2))
        c = int(rng.integers(max(0, a + b - n), min(a, b) + 1))
        table = [[c, a - c], [b - c, n - a - b + c]]
        assert fisher_greater(c, a, b, n) == pytest.approx(ss.fisher_exact(table, "greater")[1], rel=1e-9, abs=1e-300)
        assert fisher_less(c, a, b, n) == pytest.approx(ss.fisher_exact(table, "less")[1], rel=1e-9, abs=1e-300)


def test_benjamini_hochberg_equals_scipy():
    rng = np.random.default_rng(1)
    p = np.concatenate([rng.random(200), rng.random(30) * 1e-4, [0.0, 1.0, 0.5, 0.5]])
    np.testing.assert_allclose(benjamini_hochberg(p), ss.false_discovery_control(p, method="bh"), rtol=1e-12)
    # A larger family where the untested hypotheses count as p = 1.
    full = np.concatenate([p, np.ones(500)])
    np.testing.assert_allclose(benjamini_hochberg(p, n_tests=full.size),
                               ss.false_discovery_control(full, method="bh")[:p.size], rtol=1e-12)
    assert benjamini_hochberg(np.zeros(0)).size == 0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(make_tiny_model("llama", tmp_path_factory.mktemp("llama"), seed=0))


def _prompts(model, n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [np.concatenate([[model.tokenizer.bos_token_id], rng.integers(4, model.vocab_size, 12)]).astype(np.int32)
            for _ in range(n)]


def test_coactivation_over_model_across_layers(model):
    d0 = random_dictionary(model.d_model, 0, 20, seed=1, kind="sae", site="resid_post", bias=-0.2)
    d1 = random_dictionary(model.d_model, 1, 16, seed=2, kind="sae", site="resid_post", bias=-0.2)
    cfg = CoactivationConfig(stream=StreamConfig(pack=False), min_count=1)
    res = coactivation(model, d0, _prompts(model), cfg, other=d1)
    import mlx.core as mx

    from attribution import capture
    s0, s1 = Site(0, "resid_post"), Site(1, "resid_post")
    xa, xb = [], []
    for p in _prompts(model):
        acts = capture(model, mx.array(p[None]), [s0, s1])
        xa.append(np.array(d0.encode(acts[s0][0]))[1:])
        xb.append(np.array(d1.encode(acts[s1][0]))[1:])
    want = _dense_pairs(np.concatenate(xa), np.concatenate(xb), same=False)
    got = res.pairs.sort_values(["i", "j"], ignore_index=True)
    np.testing.assert_array_equal(got["count"], want.sort_values(["i", "j"])["count"])
    np.testing.assert_allclose(got["pearson"], want.sort_values(["i", "j"])["pearson"], rtol=1e-4, atol=1e-5)


def test_coactivation_report(model, tmp_path):
    d0 = random_dictionary(model.d_model, 0, 20, seed=1, kind="sae", site="resid_post", bias=-0.2)
    d1 = random_dictionary(model.d_model, 1, 16, seed=2, kind="sae", site="resid_post", bias=-0.2)
    feats = [(Site(0, "resid_post"), 3), (Site(0, "resid_post"), 7), ("L1.resid_post", 2), (Site(1, "resid_post"), 5)]
    rep = coactivation_report(model, [d0, d1], feats, _prompts(model))
    assert len(rep.pairs) == 6 and list(rep.features["name"])[2] == "L1.resid_post/2"
    never = rep.pairs["count"] == 0
    assert (rep.pairs.loc[never, "relation"].isin(["never", "silent"])).all()
    sig = rep.pairs["q_together"] <= 0.05
    assert (rep.pairs.loc[sig & ~never, "relation"] == "together").all()
    m = coactivation_matrix(rep, "jaccard")
    assert m.shape == (4, 4) and np.allclose(m.to_numpy(), m.to_numpy().T)
    tabs = report_tables(rep)
    assert set(tabs) == {"features", "together", "never", "pairs"}
    paths = write_report_csv(rep, tmp_path / "co")
    back = pd.read_csv(paths[1])
    np.testing.assert_array_equal(back["count"], rep.pairs["count"])
    assert not list((tmp_path / "co").glob(".tmp*"))
    with pytest.raises(FeatureIndexError):
        coactivation_report(model, [d0, d1], [(Site(0, "resid_post"), 20), (Site(0, "resid_post"), 1)],
                            _prompts(model))
