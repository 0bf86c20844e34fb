"""The sparse pair loss of composed dictionaries (``sae.parts.sparse``) against the dense loss.

The dense ``ComposedDictionary.dense_loss`` is the reference: every supported recipe, at
random small shapes, must give the same loss, statistics and gradients of every array.
"""

from __future__ import annotations

import math

import attribution  # noqa: F401  (BLAS preload before mlx)
import mlx.core as mx
import numpy as np
import pytest
from mlx import nn

import sae.parts.sparse as sparse
from sae import TrainConfig
from sae.dictionary import LossContext, _flat
from sae.errors import ConfigError
from sae.parts import RECIPES, ComposedDictionary, Recipe
from sae.parts.sparse import capacity, sparse_loss

D, M, N = 12, 48, 20

CASES = {
    "relu": RECIPES["relu"],
    "sqrt_l1": RECIPES["sqrt_l1"],
    "lp_anneal": RECIPES["lp_anneal"],
    "cauchy": RECIPES["cauchy"],
    "prolu": RECIPES["prolu"],
    "deep": RECIPES["deep"],  # deep encoder, topk activation, auxk
    "tanh": Recipe(penalty="tanh", name="tanh"),
    "l1_unweighted": Recipe(params={"penalty": {"weighted": False}}, name="l1u"),
    "deep_relu": Recipe(encoder="deep", activation="relu", penalty="sqrt_l1",
                        params={"encoder": {"hidden": 8, "depth": 2}}, name="deep_relu"),
    "tied_unit": Recipe(params={"decoder": {"tied": True, "norm": "unit"}}, name="tied"),
    "resample": RECIPES["resample"],
}


def _dict(recipe, seed=0, skip=False, b_dec_in=True, bias_shift=-0.3):
    d = ComposedDictionary(D, M, recipe=recipe, skip=skip, apply_b_dec_to_input=b_dec_in)
    d.init_weights(mx.random.key(seed), mx.random.normal((D,), key=mx.random.key(seed + 7)) * 0.2)
    rng = np.random.default_rng(seed)
    arrays = {}
    for k, v in _flat(d.parameters()).items():  # random everything, so no term is trivially 0
        if k in ("threshold",):
            continue
        arrays[k] = mx.array((rng.standard_normal(v.shape) * 0.4).astype(np.float32))
    arrays["b_enc"] = arrays["b_enc"] + bias_shift
    d.load_arrays(arrays)
    return d


def _vg(d, fn, x, y, ctx):
    return nn.value_and_grad(d, lambda x, y: fn(x, y, ctx))(x, y)


def _close(a, b, rtol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.abs(a).max(initial=0)))
    assert np.abs(a - b).max(initial=0) <= rtol * scale * 10, (np.abs(a - b).max(), scale)


def _compare(d, x, y, ctx, max_density=1.0):
    (l0, s0), g0 = _vg(d, d.dense_loss, x, y, ctx)
    (l1, s1), g1 = _vg(d, lambda x, y, c: sparse_loss(d, x, y, c, max_density), x, y, ctx)
    _close(l0, l1)
    for k in ("mse", "sparsity", "aux", "l0"):
        _close(s0[k], s1[k])
    assert np.array_equal(np.array(s0["fired"]), np.array(s1["fired"]))
    g0, g1 = dict(_flat(g0)), dict(_flat(g1))
    assert g0.keys() == g1.keys()
    for k in g0:
        _close(g0[k], g1[k])
    return s0


@pytest.mark.parametrize("name", sorted(CASES))
def test_pair_loss_equals_dense(name):
    d = _dict(CASES[name])
    x = mx.random.normal((N, D), key=mx.random.key(3))
    dead = mx.array(np.random.default_rng(1).random(M) < 0.3)
    ctx = LossContext(0.7, dead, True, 0.4)
    s = _compare(d, x, x, ctx)
    assert 0 < float(s["l0"]) < M  # a real mix of active and inactive entries


def test_transcoder_with_skip_equals_dense():
    d = _dict(RECIPES["sqrt_l1"], seed=2, skip=True, b_dec_in=False)
    x = mx.random.normal((N, D), key=mx.random.key(4))
    y = mx.random.normal((N, D), key=mx.random.key(5))
    _compare(d, x, y, LossContext(1.3, None, False, 0.0))


def test_no_active_latent_equals_dense():
    d = _dict(RECIPES["relu"], bias_shift=-100.0)
    x = mx.random.normal((N, D), key=mx.random.key(3))
    s = _compare(d, x, x, LossContext(0.5, None, False, 0.0))
    assert float(s["l0"]) == 0


def _with_exact_count(nnz: int):
    """A relu dictionary and a batch with exactly ``nnz`` active (token, latent) entries:
    one latent's pre-activations are set by hand, every other latent is off."""
    d = _dict(RECIPES["relu"], seed=5)
    W = np.zeros((D, M), np.float32)
    W[0, 3] = 1.0
    b = np.full((M,), -1.0, np.float32)
    b[3] = 0.0
    d.W_enc, d.b_enc = mx.array(W), mx.array(b)
    d.b_dec = mx.zeros((D,))
    x = np.random.default_rng(0).standard_normal((N * 4, D)).astype(np.float32)
    x[:, 0] = -np.abs(x[:, 0]) - 0.1
    x[:nnz, 0] = np.abs(x[:nnz, 0]) + 0.1  # exactly nnz positive entries of latent 3
    return d, mx.array(x)


@pytest.mark.parametrize("extra", [0, 1])
def test_bucket_boundary(extra):
    """nnz equal to a capacity grid value (no spare slot), and one above it."""
    grid = sorted({math.ceil(1.25 ** j - 1e-9) for j in range(40)})
    nnz = [g for g in grid if g > 20][0] + extra
    assert capacity(nnz, 10 ** 9) >= nnz
    d, x = _with_exact_count(nnz)
    s = _compare(d, x, x, LossContext(0.9, None, False, 0.0))
    assert round(float(s["l0"]) * x.shape[0]) == nnz
    if extra == 0:
        assert capacity(nnz, 10 ** 9) == nnz


def test_capacity_grid_by_brute_force():
    grid = sorted({math.ceil(1.25 ** j - 1e-9) for j in range(80)})
    for nnz in list(range(0, 300)) + [10 ** 5 + 3, 7 * 10 ** 6]:
        want = min([g for g in grid if g >= max(nnz, 1)])
        assert capacity(nnz, 10 ** 9) == want, nnz
    assert capacity(500, 300) == 300  # never more than the batch holds
    assert len({capacity(n, 10 ** 9) for n in range(1, 10 ** 4)}) < 45  # few compiled shapes


def test_dispatch_and_dense_fallback(monkeypatch):
    d = _dict(RECIPES["sqrt_l1"])
    d.hparams["decoder"] = "sparse"
    assert d.needs_eager_step
    x = mx.random.normal((N, D), key=mx.random.key(3))
    ctx = LossContext(0.7, None, False, 0.0)
    calls = []
    dense = d.dense_loss
    monkeypatch.setattr(d, "dense_loss", lambda *a: calls.append(1) or dense(*a), raising=False)
    l_hi, _ = d.loss(x, x, ctx)  # density ~0.4 > MAX_DENSITY: the dense loss runs
    assert calls == [1]
    monkeypatch.setattr(sparse, "MAX_DENSITY", 1.0)
    l_lo, _ = d.loss(x, x, ctx)
    assert calls == [1]  # pair path this time, same value
    _close(l_hi, l_lo)


def test_unsupported_recipes_fail_in_one_line():
    for r in (RECIPES["jumprelu"], RECIPES["gated"], RECIPES["matryoshka"],
              RECIPES["ghost_grads"], RECIPES["prolu"].with_params(activation={"grad": "ste"})):
        with pytest.raises(ConfigError, match="decoder='sparse' is not available") as e:
            ComposedDictionary(D, M, recipe=r, decoder="sparse")
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="'dense' or 'sparse'"):
        ComposedDictionary(D, M, recipe=RECIPES["relu"], decoder="pairs")


def test_train_config_decoder_choice():
    kw = dict(kind="sae", sites=("L0.resid_post",), width=64, k=4, batch_tokens=8, total_tokens=8)
    assert TrainConfig(arch="relu", decoder="sparse", **kw).dict_kwargs(64) == {"decoder": "sparse"}
    assert TrainConfig(arch="prolu", decoder="sparse", **kw).dict_kwargs(64)["decoder"] == "sparse"
    assert "decoder" not in TrainConfig(arch="sqrt_l1", **kw).dict_kwargs(64)  # auto: dense
    big = dict(kw, width=8192)
    assert TrainConfig(arch="deep", **big).dict_kwargs(8192)["decoder"] == "sparse"  # topk rule
    assert "decoder" not in TrainConfig(arch="deep", **kw).dict_kwargs(64)
    assert "decoder" not in TrainConfig(arch="sqrt_l1", **big).dict_kwargs(8192)
    assert TrainConfig(arch="relu", **kw).dict_kwargs(64) == {}
    for arch in ("jumprelu", "gated", "ghost_grads", "matryoshka"):
        with pytest.raises(ConfigError):
            TrainConfig(arch=arch, decoder="sparse", **kw)


@pytest.mark.parametrize("arch", ["sqrt_l1", "deep"])
def test_trainer_step_sparse_matches_dense(monkeypatch, arch):
    """Whole trainer steps (Adam, clipping, stats): the pair path's parameters track the
    dense path's over a few steps (sqrt_l1's pair path runs uncompiled, deep's compiled)."""
    from attribution import Site
    from sae import ArraySource, train

    monkeypatch.setattr(sparse, "MAX_DENSITY", 1.0)
    site = Site(0, "resid_post")
    x = np.random.default_rng(0).standard_normal((64, D)).astype(np.float32)
    out = {}
    for dec in ("dense", "sparse"):
        cfg = TrainConfig(kind="sae", arch=arch, sites=(site,), width=M, batch_tokens=16, k=4,
                          total_tokens=64, log_every=1, b_dec_init="mean", decoder=dec, seed=3)
        res = train(ArraySource({site: x}), cfg, distributed=False)
        out[dec] = dict(_flat(res.dictionaries[0].parameters()))
        assert res.dictionaries[0].hparams.get("decoder", "dense") == dec
    for k in out["dense"]:
        _close(out["dense"][k], out["sparse"][k], rtol=1e-4)
