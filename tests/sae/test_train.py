"""Trainer: recovery of known synthetic features, resume, sweeps, NaN handling, folding."""

import json

import mlx.core as mx
import numpy as np
import pytest

import sae
from attribution.sites import Site
from sae import ArraySource, TrainConfig, evaluate, train
from sae.data.synthetic import max_cosine_recovery, sparse_features
from sae.errors import (
    ConfigError,
    EmptyDatasetError,
    NonFiniteError,
    TrainingInterrupted,
)
from sae.train.trainer import _lr_factor

S = Site(0, "resid_post")
DATA = sparse_features(12000, 32, 64, active=3, seed=0)


def _cfg(arch, **kw):
    base = dict(kind="sae", arch=arch, sites=(S,), width=128, k=4, total_tokens=256 * 500,
                batch_tokens=256, warmup_steps=50, log_every=100, lr=3e-3, dead_tokens=256 * 50)
    base.update(kw)
    return TrainConfig(**base)


RECOVERY = {  # arch -> (extra config, min fraction of true features with cos > 0.9, max FVU)
    "topk": ({}, 0.9, 0.2),
    "batchtopk": ({}, 0.9, 0.2),
    "relu": ({}, 0.9, 0.6),  # L1 shrinks activations, so FVU stays higher at equal recovery
    "jumprelu": ({"sparsity_coef": 1.0, "threshold_init": 0.5}, 0.85, 0.2),
    "gated": ({"sparsity_coef": 10.0}, 0.75, 0.3),
}


@pytest.mark.parametrize("arch", sorted(RECOVERY))
def test_recovers_known_features(arch):
    extra, need, max_fvu = RECOVERY[arch]
    r = train(ArraySource({S: DATA.x}), _cfg(arch, **extra))
    d = r.dictionaries[0]
    rec = max_cosine_recovery(np.array(d.W_dec), DATA.features)
    assert (rec > 0.9).mean() >= need
    row = evaluate([d], {S: DATA.x}).iloc[0]
    assert row.fvu < max_fvu and row.l0 < 12 and row.dead_frac < 0.6


def test_matryoshka_prefix_beats_batchtopk_prefix():
    src = ArraySource({S: DATA.x})
    res = train(src, [_cfg("matryoshka", name="m", group_fractions=(0.125, 0.875)),
                      _cfg("batchtopk", name="b")])
    x = mx.array(DATA.x[:4000])

    def prefix_fvu(d, n):
        f = d.encode(x)
        y = f[:, :n] @ d.W_dec[:n] + d.b_dec
        xn = np.array(x)
        return float(((xn - np.array(y)) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum())

    m, b = res.dictionaries
    assert prefix_fvu(m, 16) < prefix_fvu(b, 16) - 0.1
    assert evaluate([m], {S: DATA.x}).iloc[0].fvu < 0.3


def test_transcoder_and_skip_transcoder():
    rng = np.random.default_rng(3)
    fin = DATA.features
    fout = rng.standard_normal((64, 24)).astype(np.float32)
    fout /= np.linalg.norm(fout, axis=1, keepdims=True)
    M = rng.standard_normal((32, 24)).astype(np.float32) * 0.3
    # dense noise in x is not sparse-codable: only W_skip can carry its image x @ M
    x = DATA.codes @ fin + 0.5 * rng.standard_normal((len(DATA.x), 32)).astype(np.float32)
    y = DATA.codes @ fout + x @ M
    si, so = Site(2, "mlp_in"), Site(2, "mlp_out")
    src = ArraySource({si: x, so: y})
    cfgs = [_cfg("topk", kind="transcoder", sites=(si,), name="tc", total_tokens=256 * 800),
            _cfg("topk", kind="skip_transcoder", sites=(si,), name="skip", total_tokens=256 * 800)]
    r = train(src, cfgs)
    tc, sk = r.dictionaries
    assert tc.in_site == si and tc.out_site == so and tc.W_skip is None and sk.W_skip is not None
    ev = evaluate([tc, sk], {si: x, so: y})
    assert ev.iloc[1].fvu < 0.1 and ev.iloc[1].fvu < ev.iloc[0].fvu
    # the skip path learns (mostly) the linear map
    w = np.array(sk.W_skip).ravel()
    assert w @ M.ravel() / (np.linalg.norm(w) * np.linalg.norm(M)) > 0.8


CLT_ARCHS = {"batchtopk": {}, "topk": {}, "jumprelu": {"sparsity_coef": 0.5, "threshold_init": 0.3},
             "relu": {"sparsity_coef": 0.5}}


@pytest.mark.parametrize("arch", sorted(CLT_ARCHS))
def test_clt_trains(arch):
    rng = np.random.default_rng(4)
    codes = [sparse_features(12000, 16, 32, 2, seed=s).codes for s in (1, 2)]
    F = [rng.standard_normal((32, 16)).astype(np.float32) for _ in range(2)]
    G = {(i, j): rng.standard_normal((32, 16)).astype(np.float32) / 4 for i in range(2)
         for j in range(i, 2)}
    xs = [codes[i] @ F[i] for i in range(2)]
    ys = [sum(codes[i] @ G[i, j] for i in range(j + 1)) for j in range(2)]
    sites_in = (Site(0, "mlp_in"), Site(1, "mlp_in"))
    arrays = {sites_in[0]: xs[0], sites_in[1]: xs[1], Site(0, "mlp_out"): ys[0],
              Site(1, "mlp_out"): ys[1]}
    cfg = _cfg(arch, kind="clt", sites=sites_in, width=48, k=6, total_tokens=256 * 600,
               **CLT_ARCHS[arch])
    r = train(arrays, cfg)
    clt = r.dictionaries[0]
    row = evaluate([clt], arrays).iloc[0]
    assert row.fvu < 0.3, row.fvu
    assert row.dead_frac < 0.2


def _weights(r):
    return [{k: np.array(v) for k, v in d.arrays().items()} for d in r.dictionaries]


def test_resume_equals_uninterrupted(tmp_path):
    src = ArraySource({S: DATA.x})
    cfg = _cfg("topk", total_tokens=256 * 60, log_every=5, dead_tokens=256 * 4)
    full = train(src, cfg)

    def stop(p):
        if p.step == 35:
            raise TrainingInterrupted("stop")

    with pytest.raises(TrainingInterrupted):
        train(src, cfg, callback=stop, checkpoint_dir=tmp_path, checkpoint_every=10)
    resumed = train(src, cfg, checkpoint_dir=tmp_path, checkpoint_every=10, resume=True)
    for a, b in zip(_weights(full), _weights(resumed)):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_sweep_equals_solo_runs():
    src = ArraySource({S: DATA.x})
    a, b = _cfg("topk", name="a", total_tokens=256 * 30), _cfg("relu", name="b", total_tokens=256 * 30)
    both = train(src, [a, b])
    solo = [train(src, a), train(src, b)]
    for w_both, r in zip(_weights(both), solo):
        for k, v in _weights(r)[0].items():
            np.testing.assert_array_equal(w_both[k], v, err_msg=k)


def test_nan_activations_raise_and_keep_checkpoint(tmp_path):
    x = DATA.x.copy()
    src = ArraySource({S: x})
    cfg = _cfg("topk", total_tokens=256 * 40, log_every=10)
    bad = {}

    class Poisoned:
        sites, dims = src.sites, src.dims

        def batches(self, bt, seed):
            for i, b in enumerate(src.batches(bt, seed)):
                if i == 23:
                    b = {s: a.copy() for s, a in b.items()}
                    b[S][3, 1] = np.nan
                yield b

    with pytest.raises(NonFiniteError) as e:
        train(Poisoned(), cfg, checkpoint_dir=tmp_path, checkpoint_every=10)
    assert e.value.step == 23
    meta = mx.load(str(tmp_path / "checkpoint.safetensors"), return_metadata=True)[1]
    assert json.loads(meta["state"])["step"] == 20
    w = mx.load(str(tmp_path / "checkpoint.safetensors"))
    assert all(bool(mx.isfinite(v).all()) for v in w.values() if v.dtype == mx.float32)
    del bad


def test_normalisation_folds_into_weights():
    x = DATA.x * 37.0
    r = train(ArraySource({S: x}), _cfg("topk", total_tokens=256 * 40, name="raw"))
    d = r.dictionaries[0]
    s = r.scales[S]
    assert s == pytest.approx(np.sqrt(32) / np.linalg.norm(x, axis=1).mean(), rel=0.1)
    # the folded dictionary on raw x equals the normalised one on s*x, divided by s
    from sae.arch import TopKDictionary
    norm = TopKDictionary(32, 128, in_site=S, k=4)
    a = d.arrays()
    norm.load_arrays({"W_enc": a["W_enc"] / s, "b_enc": a["b_enc"], "W_dec": a["W_dec"] * s,
                      "b_dec": a["b_dec"] * s})
    xm = mx.array(x[:100])
    np.testing.assert_allclose(np.array(d(xm)), np.array(norm(xm * s)) / s, rtol=1e-4, atol=1e-3)
    assert evaluate([d], {S: x}).iloc[0].fvu < 0.5


def test_auxk_switches_on_with_dead_latents():
    r = train(ArraySource({S: DATA.x}), _cfg("topk", width=512, total_tokens=256 * 60,
                                              log_every=10, dead_tokens=256 * 5))
    rows = r.history
    assert rows[-1]["dead_frac"] > 0
    assert any(row["aux"] > 0 for row in rows)


def test_resample_dead_unit():
    from sae.train.trainee import build_trainees, resample_dead
    cfg = _cfg("relu", width=16, dead_tokens=100)
    x = DATA.x[:256]
    t = build_trainees(cfg, {S: 32}, {S: x}, mx.random.key(0))[0]
    dead = np.zeros(16, bool)
    dead[[2, 9]] = True
    t.tsf = mx.array(np.where(dead, 1000, 0).astype(np.int32))
    for mom in ("m", "v"):
        t.opt[mom] = {k: mx.ones_like(v) for k, v in t.opt[mom].items()}
    xm = mx.array(x)
    before = {k: np.array(v) for k, v in t.dictionary.arrays().items()}
    assert resample_dead(t, xm, xm, np.random.default_rng(0)) == 2
    after = {k: np.array(v) for k, v in t.dictionary.arrays().items()}
    np.testing.assert_array_equal(after["W_dec"][~dead], before["W_dec"][~dead])
    assert not np.allclose(after["W_dec"][dead], before["W_dec"][dead])
    assert (after["b_enc"][dead] == 0).all() and (np.array(t.tsf) == 0).all()
    assert (np.array(t.opt["m"]["W_dec"])[dead] == 0).all()
    assert (np.array(t.opt["v"]["W_enc"])[:, dead] == 0).all()
    assert (np.array(t.opt["m"]["W_dec"])[~dead] == 1).all()
    # each revived decoder row is a residual direction of the batch
    norms = np.linalg.norm(after["W_dec"][dead], axis=1)
    alive_norm = np.linalg.norm(before["W_dec"][~dead], axis=1).mean()
    np.testing.assert_allclose(norms, alive_norm, rtol=1e-5)


def test_fused_adam_matches_eager_and_logs(tmp_path):
    src = ArraySource({S: DATA.x})
    seen = []
    a = train(src, _cfg("topk", total_tokens=256 * 12, log_every=4, compile=False),
              log_path=tmp_path / "log.jsonl", callback=seen.append)
    b = train(src, _cfg("topk", total_tokens=256 * 12, log_every=4, compile=False,
                        fuse_elementwise=False), log_path=tmp_path / "log.csv")
    for wa, wb in zip(_weights(a), _weights(b)):
        for k in wa:
            np.testing.assert_allclose(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12] and [p.step for p in seen] == [4, 8, 12]
    assert set(rows[0]) >= {"loss", "mse", "fvu", "l0", "dead_frac", "grad_norm", "name"}
    import pandas as pd
    csv = pd.read_csv(tmp_path / "log.csv")  # the same rows as CSV, one header
    assert list(csv["step"]) == [4, 8, 12] and set(csv.columns) == set(rows[0])
    np.testing.assert_allclose(csv["loss"], [r["loss"] for r in b.history], rtol=1e-6)


@pytest.mark.slow  # g++ JIT compilation takes ~15 s per graph on a cold CPU cache
@pytest.mark.parametrize("arch,kw", [("topk", {}), ("matryoshka", {}),  # matryoshka once tripped compile
                                     ("jumprelu", {}), ("batchtopk", {"decoder": "sparse"})])
def test_compiled_step_matches_eager(arch, kw):
    src = ArraySource({S: DATA.x})
    a = train(src, _cfg(arch, total_tokens=256 * 8, compile=False, **kw))
    b = train(src, _cfg(arch, total_tokens=256 * 8, compile=True, **kw))
    for wa, wb in zip(_weights(a), _weights(b)):
        for k in wa:
            np.testing.assert_allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_decoder_auto_choice():
    c = TrainConfig(kind="sae", arch="topk", sites=(S,), width=16384, k=32)
    assert c.decoder_for(16384) == "sparse" and c.decoder_for(4096) == "sparse"
    assert c.decoder_for(2048) == "dense"
    b = TrainConfig(kind="sae", arch="batchtopk", sites=(S,), width=16384, k=32)
    assert b.decoder_for(16384) == "sparse" and b.decoder_for(4096) == "dense"
    assert TrainConfig(kind="sae", arch="jumprelu", sites=(S,), width=8).decoder_for(2 ** 20) == "dense"
    assert TrainConfig(kind="sae", arch="topk", sites=(S,), width=8, k=2,
                       decoder="dense").decoder_for(2 ** 20) == "dense"
    with pytest.raises(ConfigError):
        TrainConfig(kind="sae", arch="matryoshka", sites=(S,), width=8, k=2, decoder="sparse")


def test_lr_schedule():
    assert _lr_factor(0, 100, 10, 0.2) == pytest.approx(0.1)
    assert _lr_factor(50, 100, 10, 0.2) == 1.0
    assert _lr_factor(90, 100, 10, 0.2) == pytest.approx(0.5)
    assert TrainConfig(kind="sae", arch="topk", sites=("L0.resid_post",), width=2 ** 14
                       ).lr_for(2 ** 14) == pytest.approx(2e-4)


def test_config_and_data_errors():
    with pytest.raises(ConfigError):
        TrainConfig(kind="sae", arch="topk", sites=(S,), width=8, k=9)
    with pytest.raises(ConfigError):
        TrainConfig(kind="clt", arch="gated", sites=(S,), width=8)
    with pytest.raises(sae.UnknownArchitectureError):
        TrainConfig(kind="sae", arch="nope", sites=(S,), width=8)
    with pytest.raises(EmptyDatasetError):
        ArraySource({S: np.zeros((0, 4), np.float32)})
    with pytest.raises(sae.ShapeMismatchError):
        train(ArraySource({S: DATA.x}), _cfg("topk", sites=(Site(3, "mlp_in"),)))


def test_array_size_guard():
    big = _cfg("topk", width=2 ** 20, batch_tokens=2 ** 12, total_tokens=2 ** 12)
    with pytest.raises(ConfigError, match="2\\^31"):
        train({S: DATA.x}, big)


def test_resume_sweep_with_clt_and_batchtopk(tmp_path):
    a, b = Site(0, "mlp_in"), Site(0, "mlp_out")
    c, d = Site(1, "mlp_in"), Site(1, "mlp_out")
    rng = np.random.default_rng(0)
    arrays = {s: DATA.x[:, :16] @ rng.standard_normal((16, 16)).astype(np.float32)
              for s in (a, b, c, d)}
    cfgs = [_cfg("batchtopk", kind="clt", sites=(a, c), width=32, total_tokens=256 * 30,
                 log_every=5, name="clt"),
            _cfg("jumprelu", kind="transcoder", sites=(a,), width=32, total_tokens=256 * 30,
                 log_every=5, name="jr")]
    full = train(arrays, cfgs)

    def stop(p):
        if p.step == 20:
            raise TrainingInterrupted("stop")

    with pytest.raises(TrainingInterrupted):
        train(arrays, cfgs, callback=stop, checkpoint_dir=tmp_path, checkpoint_every=7)
    resumed = train(arrays, cfgs, checkpoint_dir=tmp_path, checkpoint_every=7, resume=True)
    for wa, wb in zip(_weights(full), _weights(resumed)):
        for k in wa:
            np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_no_compiler_falls_back_to_eager(monkeypatch):
    """Without g++/c++ (MLX's CPU JIT), compile=True trains eagerly: same weights."""
    import shutil

    import mlx.core as mx
    if mx.default_device() != mx.cpu:
        pytest.skip("the fallback is for the CPU JIT")
    src = ArraySource({S: DATA.x})
    ref = train(src, _cfg("topk", total_tokens=256 * 6, compile=False))
    monkeypatch.setattr(shutil, "which", lambda name: None)

    def no_jit(*a, **k):
        raise RuntimeError("mx.compile must not be called without a C++ compiler")

    monkeypatch.setattr(mx, "compile", no_jit)
    got = train(src, _cfg("topk", total_tokens=256 * 6, compile=True))
    for wa, wb in zip(_weights(ref), _weights(got)):
        for k in wa:
            np.testing.assert_allclose(wa[k], wb[k], rtol=1e-5, atol=1e-6)
