"""sae.parts: registry, recipes, the six architectures as recipes, new parts' gradients."""

from __future__ import annotations

import json

import attribution  # noqa: F401  (BLAS preload before mlx)
import mlx.core as mx
import numpy as np
import pytest
from mlx import nn

from sae.arch import ARCHITECTURES
from sae.dictionary import LossContext, _flat
from sae.errors import ConfigError
from sae.parts import (
    NEW,
    RECIPES,
    STANDARD,
    ComposedDictionary,
    Recipe,
    UnknownPartError,
    names,
    part,
    register,
)
from sae.parts.penalties import _Elementwise
from sae.train import TrainConfig

RNG = np.random.default_rng(0)


# ---- registry and recipes ---------------------------------------------------------------
def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownPartError, match="known: .*l1.*sqrt_l1"):
        part("penalty", "l2_nope")
    with pytest.raises(UnknownPartError, match="kinds|expected one of"):
        part("widget", "x")
    with pytest.raises(UnknownPartError, match="relu"):
        Recipe(activation="softplus_nope")
    with pytest.raises(ConfigError, match="accepts .*scale"):
        Recipe(penalty="cauchy", params={"penalty": {"gamma": 2}})
    with pytest.raises(ConfigError, match="unknown kinds"):
        Recipe(params={"penalties": {}})


def test_recipe_json_round_trip_and_hash():
    for r in RECIPES.values():
        back = Recipe.from_json(r.to_json())
        assert back == r and hash(back) == hash(r)
        assert json.loads(str(r)) == r.to_dict()
    r = RECIPES["matryoshka"].with_params(decoder={"group_fractions": [0.25, 0.75]})
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert r.build("decoder").group_fractions == (0.25, 0.75)
    with pytest.raises(ConfigError, match="unknown fields"):
        Recipe.from_dict({"activation": "relu", "colour": 1})


def test_register_a_new_part_and_train_config():
    from dataclasses import dataclass

    @register("penalty", "test_quartic")
    @dataclass(frozen=True)
    class Quartic(_Elementwise):
        def rho(self, u, ctx):
            return u ** 4

    assert "test_quartic" in names("penalty")
    tc = TrainConfig(kind="sae", arch="composed", recipe=Recipe(penalty="test_quartic"),
                     sites=("L0.resid_post",), width=8)
    assert tc.arch == "composed" and tc.recipe.penalty == "test_quartic"
    assert tc.dict_kwargs(8)["recipe"] == tc.recipe
    named = TrainConfig(kind="sae", arch="deep", sites=("L0.resid_post",), width=64, k=5)
    assert named.arch == "composed" and named.recipe.params_for("activation") == {"k": 5}
    assert named.label == "sae-deep"
    with pytest.raises(ConfigError, match="needs recipe"):
        TrainConfig(kind="sae", arch="composed", sites=("L0.resid_post",), width=8)
    with pytest.raises(ConfigError, match="arch='composed'"):
        TrainConfig(kind="sae", arch="relu", recipe=Recipe(), sites=("L0.resid_post",), width=8)


# ---- the six standard architectures as recipes: same losses and gradients ----------------
def _pair(arch, d_in=12, width=24, d_out=None, skip=False, **kw):
    cls = ARCHITECTURES[arch]
    extra = dict(k=4, decoder="dense") if arch in ("topk", "batchtopk") else (
        dict(k=4) if arch == "matryoshka" else {})
    a = cls(d_in, width, d_out=d_out, skip=skip, **extra, **kw)
    a.init_weights(mx.random.key(1))
    arrays = dict(a.arrays())
    arrays["b_dec"] = mx.array(RNG.normal(size=arrays["b_dec"].shape).astype(np.float32) * 0.1)
    arrays["b_enc"] = mx.array(RNG.normal(size=(width,)).astype(np.float32) * 0.3)
    if "log_threshold" in arrays:
        arrays["log_threshold"] = mx.array(np.log(RNG.uniform(0.05, 0.5, width)).astype(np.float32))
    if "r_mag" in arrays:
        arrays["r_mag"] = mx.array(RNG.normal(size=width).astype(np.float32) * 0.2)
        arrays["b_mag"] = mx.array(RNG.normal(size=width).astype(np.float32) * 0.2)
    if "W_skip" in arrays:
        arrays["W_skip"] = mx.array(RNG.normal(size=arrays["W_skip"].shape).astype(np.float32) * 0.1)
    a.load_arrays(arrays)
    recipe = RECIPES[arch]
    if arch in ("topk", "batchtopk", "matryoshka"):
        recipe = recipe.with_params(activation={"k": 4})
    if arch == "jumprelu":
        recipe = recipe.with_params(dead={"coef": kw.get("pre_act_coef", 3e-6)})
    b = ComposedDictionary(d_in, width, d_out=d_out, skip=skip, recipe=recipe)
    b.load_arrays(arrays)
    return a, b


@pytest.mark.parametrize("arch", STANDARD)
@pytest.mark.parametrize("shape", ["sae", "skip_transcoder"])
def test_standard_recipes_equal_the_classes(arch, shape):
    kw = dict(pre_act_coef=1e-2) if arch == "jumprelu" else {}
    if shape == "sae":
        a, b = _pair(arch, **kw)
    else:
        a, b = _pair(arch, d_in=12, d_out=10, skip=True, **kw)
    x = mx.array(RNG.normal(size=(16, 12)).astype(np.float32))
    y = x if shape == "sae" else mx.array(RNG.normal(size=(16, 10)).astype(np.float32))
    dead = mx.array(np.arange(24) % 3 == 0)
    for ctx in (LossContext(0.7, None), LossContext(0.7, dead, True)):
        (la, sa), ga = nn.value_and_grad(a, lambda: a.loss(x, y, ctx))()
        (lb, sb), gb = nn.value_and_grad(b, lambda: b.loss(x, y, ctx))()
        assert float(lb) == pytest.approx(float(la), rel=1e-5, abs=1e-6)
        for key in ("mse", "sparsity", "aux", "l0"):
            assert float(sb[key]) == pytest.approx(float(sa[key]), rel=1e-5, abs=1e-6), key
        fa, fb = _flat(ga), _flat(gb)
        assert set(fa) == set(fb)
        for k in fa:
            np.testing.assert_allclose(np.array(fb[k]), np.array(fa[k]), rtol=2e-4, atol=2e-6,
                                       err_msg=f"{arch} grad {k}")
    np.testing.assert_allclose(np.array(b.encode(x)), np.array(a.encode(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(b(x)), np.array(a(x)), rtol=1e-5, atol=1e-5)
    assert b.default_sparsity_coef == type(a).default_sparsity_coef


# ---- gradients of the new parts against central finite differences (float64) ----------
def _as64(d):
    for k, v in d.arrays().items():
        setattr(d, k, v.astype(mx.float64))


def _fd_check(d, loss_fn, names_, n_checks=6, h=1e-6, rtol=1e-4):
    (_, _), g = nn.value_and_grad(d, lambda: (loss_fn(), 0))()
    g = _flat(g)
    rng = np.random.default_rng(3)
    checked = 0
    for name in names_:
        base = np.array(getattr(d, name)).astype(np.float64)
        gn = np.array(g[name])
        for _ in range(n_checks):
            idx = tuple(rng.integers(0, s) for s in base.shape)
            vals = []
            for sgn in (1, -1):
                p = base.copy()
                p[idx] += sgn * h
                setattr(d, name, mx.array(p, dtype=mx.float64))
                vals.append(float(loss_fn()))
            setattr(d, name, mx.array(base, dtype=mx.float64))
            fd = (vals[0] - vals[1]) / (2 * h)
            assert gn[idx] == pytest.approx(fd, rel=rtol, abs=1e-7), (name, idx, gn[idx], fd)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("recipe", [
    Recipe(penalty="sqrt_l1"),
    Recipe(penalty="lp", schedule="linear", params={"schedule": {"start": 0.2, "end": 0.8}}),
    Recipe(penalty="cauchy", params={"penalty": {"scale": 0.7}}),
    Recipe(penalty="tanh"),
    Recipe(encoder="deep", params={"encoder": {"hidden": 7, "depth": 2}}),
    Recipe(decoder="linear", params={"decoder": {"tied": True}}),
])
def test_smooth_parts_match_finite_differences(recipe):
    d = ComposedDictionary(6, 10, recipe=recipe)
    d.init_weights(mx.random.key(2))
    if recipe.encoder == "deep":
        d.W_out = mx.array(RNG.normal(size=(7, 10)).astype(np.float32) * 0.3)
    d.b_dec = mx.array(RNG.normal(size=6).astype(np.float32) * 0.1)
    _as64(d)
    x = mx.array(RNG.normal(size=(9, 6)), dtype=mx.float64)
    ctx = LossContext(0.3, None, False, 0.5)  # progress 0.5: p half-annealed for lp
    names_ = [n for n in ("W_enc", "b_enc", "W_dec", "b_dec", "W_h0", "W_h1", "W_out")
              if n in d.arrays()]
    _fd_check(d, lambda: d.loss(x, x, ctx)[0], names_)


def test_lp_p_anneals_with_progress():
    d = ComposedDictionary(4, 6, recipe=RECIPES["lp_anneal"])
    pen = d.parts.penalty
    assert float(pen.p(d, 0.0)) == pytest.approx(1.0)
    assert float(pen.p(d, 0.5)) == pytest.approx(0.75)
    assert float(pen.p(d, 1.0)) == pytest.approx(0.5)
    d.init_weights(mx.random.key(0))
    a = mx.array(RNG.uniform(0, 2, size=(5, 6)).astype(np.float32))
    n = np.linalg.norm(np.array(d.W_dec), axis=1)
    for prog, p in ((0.0, 1.0), (0.9, 0.5), (0.5, 0.75)):
        got = float(pen(d, a, a, LossContext(1.0, None, False, prog)))
        u = np.array(a) * n
        want = ((u + 1e-4) ** p - 1e-4 ** p).sum(-1).mean()
        assert got == pytest.approx(want, rel=1e-5)


def _prolu_reference(m, b, grad, eps, b0):
    """f~(b): equals ProLU at b0, and its derivative in b is the synthetic gradient."""
    gate0 = (m > 0) & (m + b0 > 0)
    f0 = m * gate0
    if grad == "relu":  # d/db as ReLU(m + b), on the gate
        return f0 + (m > 0) * (np.maximum(m + b, 0) - np.maximum(m + b0, 0)) * gate0
    # ste: d/db = m 1[m>0] K((m+b)/eps)/eps with K the rectangle: integrate the kernel
    def ramp(bb):
        return np.clip((m + bb) / eps + 0.5, 0, 1)
    return f0 + m * (m > 0) * (ramp(b) - ramp(b0))


@pytest.mark.parametrize("grad", ["relu", "ste"])
def test_prolu_synthetic_gradient_matches_reference(grad):
    eps = 0.8
    d = ComposedDictionary(6, 10, recipe=Recipe(activation="prolu",
                                                params={"activation": {"grad": grad, "bandwidth": eps}}))
    d.init_weights(mx.random.key(4))
    d.b_enc = mx.array(RNG.normal(size=10).astype(np.float32) * 0.5)
    _as64(d)
    x = mx.array(RNG.normal(size=(9, 6)), dtype=mx.float64)
    coef = 0.4
    ctx = LossContext(coef, None)
    (_, _), g = nn.value_and_grad(d, lambda: d.loss(x, x, ctx))()
    gb = np.array(g["b_enc"])
    X, W, b0, Wd, bd = (np.array(a, dtype=np.float64) for a in (x, d.W_enc, d.b_enc, d.W_dec, d.b_dec))
    norms = np.linalg.norm(Wd, axis=1)
    m = (X - bd) @ W

    def loss(b):
        f = _prolu_reference(m, b, grad, eps, b0)
        y = f @ Wd + bd
        a = np.abs(f) * norms
        sp = (np.sqrt(a + 1e-4) - np.sqrt(1e-4)) * 0  # recipe penalty is l1 here
        return ((X - y) ** 2).sum(-1).mean() + coef * (f @ norms).mean() + sp.sum()

    h = 1e-6
    for i in range(10):
        e = np.zeros(10)
        e[i] = h
        fd = (loss(b0 + e) - loss(b0 - e)) / (2 * h)
        assert gb[i] == pytest.approx(fd, rel=1e-4, abs=1e-8), (i, gb[i], fd)
    # inference: the exact JumpReLU form m * 1[m > max(-b, 0)]
    f = np.array(d.encode(x))
    np.testing.assert_allclose(f, np.maximum(m, 0) * (m + b0 > 0), atol=1e-12)


def test_ghost_grads_match_reference_with_frozen_factors():
    d = ComposedDictionary(6, 10, recipe=RECIPES["ghost_grads"])
    d.init_weights(mx.random.key(5))
    _as64(d)
    x = mx.array(RNG.normal(size=(9, 6)), dtype=mx.float64)
    dead_np = np.arange(10) % 2 == 0
    ctx = LossContext(0.0, mx.array(dead_np), True)
    pre0 = np.array(d.train_pre_acts(x))
    f0 = np.maximum(pre0, 0)
    X, Wd0, bd, W, be0 = (np.array(a, dtype=np.float64) for a in (x, d.W_dec, d.b_dec, d.W_enc, d.b_enc))
    e = X - (f0 @ Wd0 + bd)
    ghost0 = np.where(dead_np, np.exp(pre0), 0) @ Wd0
    k = np.linalg.norm(e, axis=1, keepdims=True) / (2 * np.linalg.norm(ghost0, axis=1, keepdims=True) + 1e-6)
    ec = e - e.mean(0)
    den = np.sqrt((ec ** 2).sum(-1, keepdims=True)) + 1e-6
    per0 = (((ghost0 * k - e) ** 2) / den).sum(-1)
    scale = (e ** 2).sum(-1) / (per0 + 1e-6)

    def ghost_loss(Wd, be):  # detached factors (k, den, scale, e) held at the base point
        pre = (X - bd) @ W + be
        ghost = np.where(dead_np, np.exp(pre), 0) @ Wd * k
        return (scale * (((ghost - e) ** 2) / den).sum(-1)).mean()

    got = float(d.parts.dead.aux(d, x, x, d.train_pre_acts(x), None,
                                 d.decode(mx.maximum(d.train_pre_acts(x), 0)), ctx))
    assert got == pytest.approx(ghost_loss(Wd0, be0), rel=1e-9)
    assert got == pytest.approx((e ** 2).sum(-1).mean(), rel=1e-6)  # rescaled to the mse

    def aux_only():
        pre = d.train_pre_acts(x)
        y_hat = mx.stop_gradient(d.decode(mx.maximum(pre, 0)))
        return d.parts.dead.aux(d, x, x, pre, None, y_hat, ctx)

    (_, _), g = nn.value_and_grad(d, lambda: (aux_only(), 0))()
    h = 1e-6
    for name, i in (("W_dec", (0, 1)), ("W_dec", (4, 3)), ("b_enc", (2,)), ("b_enc", (1,))):
        args = [Wd0.copy(), be0.copy()]
        j = 0 if name == "W_dec" else 1
        args[j][i] += h
        up = ghost_loss(*args)
        args[j][i] -= 2 * h
        dn = ghost_loss(*args)
        assert float(np.array(g[name])[i]) == pytest.approx((up - dn) / (2 * h), rel=1e-5, abs=1e-9)
    assert float(np.array(g["b_enc"])[1]) == 0.0  # live latents get no ghost gradient


def test_l0_ste_with_pre_grad():
    from sae.parts.penalties import step_ste
    z = mx.array([[0.0, 0.02, 0.2, -0.3]])
    th = mx.array([0.0, 0.0, 0.0, 0.0])
    gz, gt = mx.grad(lambda z, t: step_ste(z, t, 0.1).sum(), argnums=(0, 1))(z, th)
    np.testing.assert_allclose(np.array(gz), [[10, 10, 0, 0]])
    np.testing.assert_allclose(np.array(gt), [-10, -10, 0, 0])


def test_unit_norm_decoder_and_tied_fold():
    d = ComposedDictionary(5, 8, recipe=Recipe(params={"decoder": {"norm": "unit", "tied": True}}))
    d.init_weights(mx.random.key(0))
    assert "W_enc" not in d.arrays()
    d.W_dec = d.W_dec * 3.0
    d.post_update()
    np.testing.assert_allclose(np.linalg.norm(np.array(d.W_dec), axis=1), 1.0, rtol=1e-6)
    x = mx.array(RNG.normal(size=(7, 5)).astype(np.float32))
    f = d.folded(2.0, 2.0)
    assert not f.parts.decoder.tied and "W_enc" in f.arrays()
    np.testing.assert_allclose(np.array(f(x)), np.array(d(x * 2.0)) / 2.0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NEW)
def test_new_recipes_fold_to_raw_units(name):
    d = ComposedDictionary(6, 16, recipe=RECIPES[name].with_params(
        **({"activation": {"k": 3}} if name == "deep" else {})))
    d.init_weights(mx.random.key(7))
    if "W_out" in d.arrays():
        d.W_out = mx.array(RNG.normal(size=d.W_out.shape).astype(np.float32) * 0.3)
    d.b_enc = mx.array(RNG.normal(size=16).astype(np.float32) * 0.2)
    x = mx.array(RNG.normal(size=(8, 6)).astype(np.float32))
    s = 1.7
    f = d.folded(s, s)
    np.testing.assert_allclose(np.array(f.encode(x)), np.array(d.encode(x * s)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.array(f(x)), np.array(d(x * s)) / s, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,params,rho", [
    ("sqrt_l1", {}, lambda u: np.sqrt(u + 1e-4) - 1e-2),
    ("cauchy", {"scale": 0.5}, lambda u: np.log(1 + (u / 0.5) ** 2)),
    ("tanh", {"scale": 3.0}, lambda u: np.tanh(3.0 * u)),
    ("l1", {}, lambda u: u),
])
def test_penalty_values_match_formulas(name, params, rho):
    d = ComposedDictionary(4, 6, recipe=Recipe(penalty=name, params={"penalty": params}))
    d.init_weights(mx.random.key(0))
    d.W_dec = d.W_dec * mx.array(RNG.uniform(0.5, 2, size=(6, 1)).astype(np.float32))
    a = RNG.uniform(0, 2, size=(5, 6)).astype(np.float32) * (RNG.uniform(size=(5, 6)) > 0.4)
    got = float(d.parts.penalty(d, mx.array(a), mx.array(a), LossContext(1.0, None)))
    u = a * np.linalg.norm(np.array(d.W_dec), axis=1)
    assert got == pytest.approx(rho(u).sum(-1).mean(), rel=1e-5)


@pytest.mark.parametrize("shape", [(512, 256), (1 << 17,)])  # [batch, width] / sparse [P]
@pytest.mark.parametrize("name,value,deriv", [
    ("sqrt_l1", lambda u: np.sqrt(u + 1e-4) - 1e-2, lambda u: 0.5 / np.sqrt(u + 1e-4)),
    ("lp_anneal", lambda u: (u + 1e-4) ** 0.75 - 1e-4 ** 0.75,  # p = 0.75 at progress 0.5
     lambda u: 0.75 * (u + 1e-4) ** -0.25),
    ("cauchy", lambda u: np.log1p((u / 0.1) ** 2),
     lambda u: (2 * u / 0.01) / (1 + (u / 0.1) ** 2)),
    ("tanh", lambda u: np.tanh(4 * u), lambda u: 4 / np.cosh(4 * u) ** 2),
])
def test_penalty_rows_split_and_derivative_from_output(name, value, deriv, shape):
    # Big enough for sae.ops.map_rows to split rows over two CPU streams, compiled as in
    # training; the custom VJP's drho(u, rho(u)) against the formula's own derivative.
    recipe = Recipe(penalty="tanh") if name == "tanh" else RECIPES[name]
    d = ComposedDictionary(4, 6, recipe=recipe)
    pen = d.parts.penalty
    ctx = LossContext(1.0, None, False, mx.array(0.5))
    u64 = RNG.uniform(0, 3, size=shape) * (RNG.uniform(size=shape) > 0.3)
    w64 = RNG.normal(size=shape)
    u, w = mx.array(u64.astype(np.float32)), mx.array(w64.astype(np.float32))
    val, g = mx.compile(mx.value_and_grad(lambda v: (pen.per_entry(d, v, ctx) * w).sum()))(u)
    assert float(val) == pytest.approx(float((value(u64) * w64).sum()), rel=2e-4, abs=1e-2)
    np.testing.assert_allclose(np.array(g), deriv(u64) * w64, rtol=2e-4, atol=1e-5)
