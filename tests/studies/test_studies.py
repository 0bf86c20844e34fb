"""The open-question studies (opposing directions, shuffling, init) at ``small`` size.

Each check compares against an independent computation: a brute-force cosine matrix, a
numpy TopK forward of a saved dictionary, a hand-worked interpolation, the raw init arrays.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the studies are scripts beside benchmarks/, not a package
    sys.path.insert(0, str(ROOT))

import sae  # noqa: E402,F401  (BLAS preload before mlx)
from safetensors.numpy import load_file  # noqa: E402
from sae.arch import ARCHITECTURES, TopKDictionary  # noqa: E402
from sae.io.native import load_dictionary  # noqa: E402
from studies import _common as C  # noqa: E402
from studies import init_tied, opposing_directions, shuffling  # noqa: E402


# ---- opposing directions -----------------------------------------------------------------
def _brute(W, t):
    W = np.asarray(W, np.float64)
    n = np.linalg.norm(W, axis=1)
    ok = n > 0
    Wn = np.where(ok[:, None], W / np.where(ok, n, 1)[:, None], 0)
    c = Wn @ Wn.T
    c[~ok, :] = np.inf
    c[:, ~ok] = np.inf
    iu = np.triu_indices(W.shape[0], 1)
    hit = c[iu] < t
    lat = np.zeros(W.shape[0], bool)
    lat[iu[0][hit]] = True
    lat[iu[1][hit]] = True
    return int(hit.sum()), int(lat.sum())


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_count_opposing_equals_brute_force(block):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((301, 4))  # low d: many opposing pairs
    W[5] = 0.0  # a zero row has no direction and is never counted
    W[10] = -3.0 * W[11]  # an exact antipode at another scale
    got = opposing_directions.count_opposing(W, (-0.9, -0.7, -0.5), block=block)
    for t in (-0.9, -0.7, -0.5):
        pairs, lat = _brute(W, t)
        assert pairs > 0
        assert got[t] == {"pairs": pairs, "latents": lat}


def test_count_opposing_hand_worked():
    e = np.eye(3)
    # pairs below -0.9: (0,1) and (2,3); (4,0) has cosine -0.8 (below -0.7 only)
    W = np.stack([e[0], -e[0], e[1], -2 * e[1], -0.8 * e[0] + 0.6 * e[2]])
    got = opposing_directions.count_opposing(W, (-0.9, -0.7), block=2)
    assert got[-0.9] == {"pairs": 2, "latents": 4}
    # below -0.7: (0,1), (2,3), (0,4); (1,4) has cosine +0.8
    assert got[-0.7] == {"pairs": 3, "latents": 5}
    r = opposing_directions.rates(286, 2 ** 18)
    assert r["per_latent"] == pytest.approx(286 / 262144)
    assert r["per_million_pairs"] == pytest.approx(286 / (262144 * 262143 / 2) * 1e6)


def test_planted_data_has_antipodal_truth():
    cfg = opposing_directions.small()
    _, _, dirs = opposing_directions.make_data(cfg, "planted")
    for i in range(cfg.n_pairs):
        assert np.allclose(dirs[2 * i + 1], -dirs[2 * i])
    assert opposing_directions.planted_recovered(dirs, dirs, cfg.n_pairs) == cfg.n_pairs


def test_opposing_small_run(tmp_path):
    cfg = opposing_directions.small()
    res = opposing_directions.run(cfg, tmp_path)
    dec = load_file(str(tmp_path / "decoders.safetensors"))
    n_runs = len(cfg.datasets) * sum(len(cfg.widths[a]) for a in cfg.archs)
    assert len(res["runs"]) == n_runs == len(dec)
    for r in res["runs"]:
        W = dec[f"{r['dataset']}/{r['arch']}/{r['width']}"]
        assert W.shape == (r["width"], cfg.d)
        for t in cfg.thresholds:
            pairs, lat = _brute(W, t)
            assert (r[f"pairs<{t}"], r[f"latents<{t}"]) == (pairs, lat)
            assert r[f"per_latent<{t}"] == pytest.approx(pairs / r["width"])
        assert 0 <= r["fvu"] < 1.5 and 0 <= r["dead"] <= 1
        if r["dataset"] == "planted":
            assert r["planted_recovered"] == opposing_directions.planted_recovered(
                W, opposing_directions.make_data(cfg, "planted")[2], cfg.n_pairs)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["runs"][0]["pairs<-0.9"] == res["runs"][0]["pairs<-0.9"]
    for f in ("opposing_pairs.png", "opposing_pairs.svg", "results.md"):
        assert (tmp_path / f).stat().st_size > 500
    assert not list(tmp_path.glob(".*.tmp"))


# ---- shuffling ------------------------------------------------------------------------------
def test_ordered_source_is_contiguous_and_wraps():
    x = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    src = C.OrderedSource({C.SITE: x})
    it = src.batches(4, seed=123)
    got = [next(it)[C.SITE][:, 0].tolist() for _ in range(3)]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]


def test_tokens_to_reach_interpolates():
    curve = [{"tokens": 100, "fvu": 0.8}, {"tokens": 200, "fvu": 0.4}, {"tokens": 300, "fvu": 0.3}]
    assert shuffling.tokens_to_reach(curve, 0.6) == pytest.approx(150.0)
    assert shuffling.tokens_to_reach(curve, 0.9) == 100.0
    assert shuffling.tokens_to_reach(curve, 0.2) is None


def test_documents_drift_slowly():
    cfg = shuffling.small()
    x, _ = shuffling.make_data(cfg)
    # neighbouring documents are more alike than distant ones (the point of the ordering)
    docs = x.reshape(-1, cfg.doc_len, cfg.d).mean(1)
    near = np.linalg.norm(docs[1:] - docs[:-1], axis=1).mean()
    far = np.linalg.norm(docs[len(docs) // 2:] - docs[:len(docs) - len(docs) // 2], axis=1).mean()
    assert near < far


def _numpy_topk_fvu(d_dir, x, k):
    W = load_file(str(d_dir / "weights.safetensors"))
    pre = (x - W["b_dec"]) @ W["W_enc"] + W["b_enc"]
    idx = np.argpartition(-pre, k - 1, axis=1)[:, :k]
    f = np.zeros_like(pre)
    rows = np.arange(x.shape[0])[:, None]
    f[rows, idx] = np.maximum(pre[rows, idx], 0)
    y = f @ W["W_dec"] + W["b_dec"]
    x64 = x.astype(np.float64)
    return float(((y - x64) ** 2).sum() / ((x64 - x64.mean(0)) ** 2).sum())


def test_shuffling_small_run(tmp_path):
    cfg = shuffling.small()
    res = shuffling.run(cfg, tmp_path)
    steps = cfg.total_tokens // cfg.batch_tokens
    every = res["eval_every"]
    n_points = steps // every + (1 if steps % every else 0)
    assert len(res["runs"]) == len(cfg.archs) * 2 * len(cfg.lrs)
    for r in res["runs"]:
        toks = [p["tokens"] for p in r["curve"]]
        assert len(toks) == n_points and toks[-1] == cfg.total_tokens
        assert toks == sorted(toks)
        assert all(p["l0"] <= cfg.k + 1e-6 for p in r["curve"] if r["arch"] == "topk")
    arch = cfg.archs[0]
    best = res["best"][f"{arch}/shuffled"]
    assert best["final_fvu"] == min(r["final_fvu"] for r in res["runs"]
                                    if (r["arch"], r["condition"]) == (arch, "shuffled"))
    # the final FVU of the best shuffled run, recomputed from the saved dictionary in numpy
    saved = tmp_path / res["saved_dictionary"]
    _, x_eval = shuffling.make_data(cfg)
    assert _numpy_topk_fvu(saved, x_eval, cfg.k) == pytest.approx(best["final_fvu"], rel=1e-4)
    d = load_dictionary(saved)
    assert d.arch == arch and d.width == cfg.width
    for f in ("learning_curves.png", "learning_curves.svg", "results.md"):
        assert (tmp_path / f).stat().st_size > 500


# ---- init ------------------------------------------------------------------------------------
def test_independent_init_is_really_independent():
    cfg = init_tied.small()
    data = init_tied.make_data(cfg)
    tied = init_tied.initial_dictionary(cfg, "sae", "topk", "tied", 0, data)
    ind = init_tied.initial_dictionary(cfg, "sae", "topk", "independent", 0, data)
    assert ARCHITECTURES["topk"] is TopKDictionary  # the swap is undone
    We_t, Wd_t = np.array(tied.W_enc), np.array(tied.W_dec)
    We_i, Wd_i = np.array(ind.W_enc), np.array(ind.W_dec)
    assert np.allclose(We_t, Wd_t.T)  # today's init: tied
    assert np.array_equal(Wd_t, Wd_i)  # same decoder for the same seed
    assert not np.allclose(We_i, Wd_i.T, atol=1e-2)
    cos = (We_i.T * Wd_i).sum(1) / np.linalg.norm(We_i, axis=0) / np.linalg.norm(Wd_i, axis=1)
    assert np.abs(cos).mean() < 0.5  # unrelated directions in d=16: |cos| ~ 0.2
    assert np.allclose(np.linalg.norm(We_i, axis=0), np.linalg.norm(Wd_i, axis=1), rtol=1e-5)
    assert init_tied.alignment(tied) == pytest.approx(1.0, abs=1e-5)


def test_arch_swap_restored_on_error():
    with pytest.raises(RuntimeError):
        with init_tied.arch_init("topk", "independent"):
            assert ARCHITECTURES["topk"].__name__ == "IndependentTopKDictionary"
            raise RuntimeError("boom")
    assert ARCHITECTURES["topk"] is TopKDictionary
    with pytest.raises(C.StudyError, match="unknown init"):
        with init_tied.arch_init("topk", "orthogonal"):
            pass


def test_init_small_run(tmp_path):
    cfg = init_tied.small()
    res = init_tied.run(cfg, tmp_path)
    assert len(res["runs"]) == len(cfg.kinds) * len(cfg.archs) * 2 * len(cfg.seeds)
    for r in res["runs"]:
        if r["init"] == "tied":
            assert r["align_step0"] == pytest.approx(1.0, abs=1e-5)
        else:
            assert abs(r["align_step0"]) < 0.5
        assert 0 <= r["dead"] <= 1 and len(r["curve"]) == cfg.n_evals
    s = {(r["kind"], r["init"]): r for r in res["summary"]}
    runs = [r["fvu"] for r in res["runs"] if (r["kind"], r["init"]) == ("sae", "tied")]
    assert s[("sae", "tied")]["fvu"] == pytest.approx(np.mean(runs))
    assert s[("sae", "tied")]["fvu_sd"] == pytest.approx(np.std(runs, ddof=1))
    for f in ("init_curves.png", "init_curves.svg", "results.md"):
        assert (tmp_path / f).stat().st_size > 500
