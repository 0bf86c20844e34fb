"""Tests of the splitting / penalty-prior studies: helpers against independent computations,
and each study at its ``small`` size."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from studies import _maxk as M
from studies import maxk_splitting as MS
from studies import penalty_priors as PP
from studies import splitting_structure as SS

import mlx.core as mx  # noqa: E402  (after our packages: BLAS preload)


# ---- exact statistics -------------------------------------------------------------------------
def test_eta2_hand_case_and_ols():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    lab = np.array([0, 0, 1, 1])
    # group means 1.5, 3.5, grand mean 2.5: between 4, total 5
    assert M.eta2(a, lab, adjusted=False) == pytest.approx(0.8)
    assert M.eta2(a, lab) == pytest.approx(1 - 0.2 * 3 / 2)
    # eta^2 == R^2 of least squares on the group indicators (an independent computation)
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 7, 500)
    x = rng.standard_normal((500, 3)) + lab[:, None] * np.array([0.0, 0.3, 1.0])
    onehot = np.eye(7)[lab]
    for j in range(3):
        fit = onehot @ np.linalg.lstsq(onehot, x[:, j], rcond=None)[0]
        r2 = 1 - ((x[:, j] - fit) ** 2).sum() / ((x[:, j] - x[:, j].mean()) ** 2).sum()
        assert M.eta2(x, lab, adjusted=False)[j] == pytest.approx(r2, abs=1e-10)


def test_mutual_information_brute_force_and_xor():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 3, 2000), rng.integers(0, 4, 2000)
    b = np.where(rng.random(2000) < 0.5, a, b)
    joint = np.zeros((3, 4))
    np.add.at(joint, (a, b), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    brute = float((p[nz] * np.log2(p[nz] / (pa @ pb)[nz])).sum())
    assert M.mutual_information(a, b) == pytest.approx(brute, abs=1e-10)
    # XOR: a carries nothing about b alone, one full bit given c
    b2, c2 = rng.integers(0, 2, 4000), rng.integers(0, 2, 4000)
    a2 = b2 ^ c2
    assert M.mutual_information(a2, b2) < 0.01
    assert M.mutual_information(a2, b2, given=c2) == pytest.approx(1.0, abs=0.01)


def test_task_variables_hand_cases():
    t = np.array([[3, 1, 3, 2], [5, 5, 5, 5], [0, 7, 6, 1]])
    v = M.task_variables(t, d_vocab=8)
    assert v["max"].tolist() == [3, 5, 7]
    assert v["query"].tolist() == [2, 5, 1]
    assert v["nonmax"].tolist() == [2, 8, 6]  # 8 = d_vocab: no token below the max
    assert v["copies"].tolist() == [2, 4, 1]


def test_balanced_sampling_contains_its_max():
    cfg = M.ToyConfig(d_vocab=10, n_ctx=5)
    t = M.sample_tokens(cfg, 20000, np.random.default_rng(0), "balanced")
    m = t.max(1)
    counts = np.bincount(m, minlength=10)
    assert counts.min() > 1500 and counts.max() < 2500  # max ~ uniform over the vocabulary
    u = M.sample_tokens(cfg, 20000, np.random.default_rng(0), "uniform")
    # i.i.d. uniform: P(max <= 4) = (5/10)^5, so about 625 of 20000 rows
    assert abs(np.bincount(u.max(1), minlength=10)[:5].sum() - 625) < 100


def test_match_parents_recovers_permutation():
    rng = np.random.default_rng(2)
    parent = rng.standard_normal((10, 16))
    pick = rng.integers(0, 10, 30)
    child = 3 * parent[pick] + 0.1 * rng.standard_normal((30, 16))
    idx, cos = M.match_parents(child, parent)
    assert (idx == pick).all() and (cos > 0.95).all()


# ---- NMF -------------------------------------------------------------------------------------
def test_nmf_recovers_known_factorisation():
    rng = np.random.default_rng(3)
    w0 = rng.uniform(0, 1, (60, 3)) * (rng.random((60, 3)) < 0.6)
    h0 = rng.uniform(0, 1, (3, 20)) * (rng.random((3, 20)) < 0.5)
    x = w0 @ h0
    w, h = M.nmf(x, 3, iters=3000, seed=0)
    assert (w >= 0).all() and (h >= 0).all()
    assert np.linalg.norm(x - w @ h) / np.linalg.norm(x) < 0.02
    # rank 1 cannot fit a rank-3 matrix
    w1, h1 = M.nmf(x, 1, iters=500, seed=0)
    assert np.linalg.norm(x - w1 @ h1) / np.linalg.norm(x) > 0.1
    with pytest.raises(ValueError, match="non-negative"):
        M.nmf(-x, 2)


def test_shared_direction_detected_against_rotation_null():
    # differences that all share 2 directions factorise far better than rotated copies
    rng = np.random.default_rng(4)
    basis = rng.standard_normal((2, 32))
    d = rng.uniform(0.2, 1, (40, 2)) @ basis + 0.02 * rng.standard_normal((40, 32))
    real = SS.rel_errors(d, 2, 400, 0)
    rot = SS.rel_errors(M.random_rotations(d, 1), 2, 400, 0)
    assert real["svd"][1] < 0.1 < rot["svd"][1]
    assert real["nmf"][1] < rot["nmf"][1] - 0.2
    assert np.allclose(np.linalg.norm(M.random_rotations(d, 1), axis=1), np.linalg.norm(d, axis=1))


def test_split_scores_find_the_variable():
    rng = np.random.default_rng(5)
    n = 6000
    var = {"max": rng.integers(0, 4, n), "query": rng.integers(0, 4, n),
           "nonmax": rng.integers(0, 4, n), "copies": rng.integers(1, 3, n)}
    f = np.zeros((n, 2))
    f[var["query"] < 2, 0] = 1.0  # child 0 fires for small query tokens, child 1 for large
    f[var["query"] >= 2, 1] = 1.0
    sc = MS.split_scores(f, var, seed=0, min_rows=10)
    assert sc["query"] > 0.9 and max(sc["max"], sc["nonmax"], sc["copies"]) < 0.05
    f2 = rng.random((n, 2))  # children unrelated to every variable
    sc2 = MS.split_scores(f2, var, seed=0, min_rows=10)
    assert max(sc2[v] for v in M.VARIABLES) < 0.02


# ---- priors ------------------------------------------------------------------------------------
def test_fit_families_pick_the_generating_law():
    rng = np.random.default_rng(6)
    e = rng.exponential(2.0, 20000)
    c = np.abs(stats.cauchy(scale=0.7).rvs(20000, random_state=rng))
    ln = rng.lognormal(0.3, 0.6, 20000)
    for v, fam in ((e, "laplace"), (c, "cauchy"), (ln, "lognormal")):
        fits = PP.fit_families(v)
        assert max(PP.FAMILIES, key=lambda q: fits[q]["loglik"]) == fam
        assert fits[fam]["ks"] == pytest.approx(min(f["ks"] for f in fits.values()))
    assert PP.fit_families(e)["laplace"]["params"]["rate"] == pytest.approx(0.5, rel=0.03)
    # half-Cauchy MLE against scipy's own fit
    _, g = stats.halfcauchy.fit(c, floc=0)
    assert PP.fit_families(c)["cauchy"]["params"]["scale"] == pytest.approx(g, rel=1e-3)
    ll = stats.lognorm(s=0.6, scale=math.exp(0.3)).logpdf(ln).mean()
    assert PP.fit_families(ln)["lognormal"]["loglik"] == pytest.approx(ll, abs=0.01)


def test_penalties_match_numpy_and_parts():
    rng = np.random.default_rng(7)
    f = np.maximum(rng.standard_normal((5, 6)), 0).astype(np.float32)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    norms = np.linalg.norm(w, axis=1)
    for pen, scale, ref in (("l1", 1.0, (f * norms).sum(1).mean()),
                            ("cauchy", 0.5, np.log1p((f * norms / 0.5) ** 2).sum(1).mean())):
        d = M.PenalisedReLU(4, 6, penalty=pen, scale=scale)
        d.W_dec = mx.array(w)
        assert float(d.sparsity(mx.array(f), mx.array(f))) == pytest.approx(float(ref), rel=1e-5)
    from sae.parts.penalties import Cauchy
    d = M.PenalisedReLU(4, 6, penalty="cauchy", scale=0.5)
    d.W_dec = mx.array(w)
    got = float(Cauchy(scale=0.5)(d, mx.array(f), mx.array(f), None))
    assert got == pytest.approx(float(d.sparsity(mx.array(f), mx.array(f))), rel=1e-5)


def test_pareto_hand_case():
    pts = [(1.0, 0.5), (2.0, 0.6), (2.0, 0.3), (4.0, 0.1), (3.0, 0.2), (5.0, 0.15)]
    assert PP.pareto(pts) == [0, 2, 4, 3]
    assert PP.fvu_at([(1.0, 0.4), (4.0, 0.2)], 2.0) == pytest.approx(0.3)


# ---- the studies at small size ----------------------------------------------------------------
@pytest.fixture(scope="module")
def maxk_small(tmp_path_factory):
    out = tmp_path_factory.mktemp("maxk")
    return out, MS.run(MS.small(), out)


def test_maxk_splitting_small(maxk_small):
    out, r = maxk_small
    cfg = MS.small()
    assert r["accuracy"]["uniform"] > 0.95 and r["accuracy"]["balanced"] > 0.95
    for site in cfg.sites:
        w0 = r["sites"][site]["widths"][cfg.toy.d_vocab]
        # the max determines the toy's output: at width d_vocab it dominates every latent
        assert w0["mean_eta2"]["max"] > max(w0["mean_eta2"][v] for v in M.VARIABLES[1:])
        assert w0["fvu"] < 0.5
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["accuracy"] == r["accuracy"]
    for f in r["figures"] + ["results.md", "decoders.safetensors"]:
        assert (out / f).stat().st_size > 0
    assert "Toy accuracy" in (out / "results.md").read_text()


def test_splitting_structure_small_reuses_study1(maxk_small, tmp_path):
    from dataclasses import replace
    out1, _ = maxk_small
    cfg = replace(SS.small(), maxk_dir=str(out1))
    r = SS.run(cfg, tmp_path)
    assert r["maxk_decoders_from"].endswith("decoders.safetensors")
    assert set(r["sources"]) == {"maxk_logits", "maxk_resid", "synthetic"}
    for s in r["sources"].values():
        if s.get("n_diff"):
            e = s["real"]["nmf"]
            assert all(0 <= x <= 1.0 + 1e-9 for x in e)
            assert e[-1] <= e[0] + 1e-6  # more components never fit worse (same init family)
    assert (tmp_path / "results.md").exists() and (tmp_path / "nmf_vs_null.png").exists()


def test_penalty_priors_small(tmp_path):
    r = PP.run(PP.small(), tmp_path)
    l1 = sorted((x for x in r["runs"] if x["penalty"] == "l1"), key=lambda x: x["coef"])
    # a stronger L1 penalty gives a sparser, worse reconstruction
    assert l1[-1]["l0"] < l1[0]["l0"] and l1[-1]["fvu"] > l1[0]["fvu"]
    assert r["fits"]["true_codes"]["n_fitted"] > 0
    assert (tmp_path / "pareto.png").exists() and (tmp_path / "results.json").exists()


def test_latent_table_max_span_hand_case():
    var = {"max": np.array([0, 0, 1, 1, 2, 2]), "query": np.array([0, 1, 0, 1, 0, 1]),
           "nonmax": np.zeros(6, int), "copies": np.ones(6, int)}
    f = np.array([[1.0, 0, 0], [1.0, 0, 1], [0, 0, 0], [0, 0, 1], [0, 2, 0], [0, 2, 1]])
    tab = MS.latent_table(f, var)
    # latent 0: all mass on max 0; latent 1: on max 2; latent 2: 1/3 on each of 3 max values
    assert tab["max_span"].tolist() == [1, 1, 3]
    assert tab["eta2"][2, 1] > 0.5 and tab["eta2"][2, 0] < 0.1  # latent 2 follows the query


def test_cross_split_alignment_hand_cases():
    e = np.eye(4)
    # two parents whose children move along the same two directions: perfectly shared
    d = np.stack([e[0], e[1], e[0], e[1]])
    assert SS.cross_split_alignment(d, np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    # every split moves along its own axis: no direction shared across splits
    d2 = np.stack([e[0], e[0], e[1], e[1], e[2], e[2]])
    assert SS.cross_split_alignment(d2, np.array([0, 0, 1, 1, 2, 2])) == pytest.approx(0.0)
