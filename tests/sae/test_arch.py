"""Architectures against independent numpy re-implementations and finite differences."""

import mlx.core as mx
import numpy as np
import pytest

import sae  # noqa: F401
from attribution.dictionary import CrossLayerDictionary
from attribution.dictionary import Dictionary as DictionaryProtocol
from sae.arch import (
    ARCHITECTURES,
    CrossLayerTranscoder,
    GatedDictionary,
    TopKDictionary,
    architecture,
)
from sae.dictionary import LossContext
from sae.errors import ConfigError, UnknownArchitectureError
from sae_test_helpers import random_dictionary


def np_(a):
    return np.array(a, dtype=np.float64)


def ref_encode(d, x):
    """Independent numpy encoder for every architecture."""
    x = np.asarray(x, np.float64)
    xc = x - np_(d.b_dec) if d.apply_b_dec_to_input else x
    if isinstance(d, GatedDictionary):
        gate = xc @ np_(d.W_enc) + np_(d.b_enc)
        mag = xc @ (np_(d.W_enc) * np.exp(np_(d.r_mag))) + np_(d.b_mag)
        return (gate > 0) * np.maximum(mag, 0)
    pre = xc @ np_(d.W_enc) + np_(d.b_enc)
    if d.arch == "relu":
        return np.maximum(pre, 0)
    if d.arch == "jumprelu":
        return pre * (pre > np.exp(np_(d.log_threshold)))
    if d.arch in ("batchtopk", "matryoshka"):
        return pre * (pre > max(float(d.threshold), 0))
    out = np.zeros_like(pre)
    for r in range(pre.shape[0]):
        idx = np.argsort(-pre[r])[: d.k]
        out[r, idx] = np.maximum(pre[r, idx], 0)
    return out


def ref_forward(d, x):
    y = ref_encode(d, x) @ np_(d.W_dec) + np_(d.b_dec)
    if d.W_skip is not None:
        y = y + np.asarray(x, np.float64) @ np_(d.W_skip)
    return y


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("variant", ["sae", "transcoder", "skip"])
def test_encode_decode_match_numpy(arch, variant, rng):
    tc = variant != "sae"
    d = random_dictionary(arch, d_out=10 if tc else None, transcoder=tc, skip=variant == "skip")
    x = rng.standard_normal((9, 12)).astype(np.float32)
    assert isinstance(d, DictionaryProtocol)
    f = np.array(d.encode(mx.array(x)))
    np.testing.assert_allclose(f, ref_encode(d, x), atol=1e-5)
    np.testing.assert_allclose(np.array(d(mx.array(x))), ref_forward(d, x), atol=1e-4)
    np.testing.assert_allclose(np.array(d.activation(d.pre_acts(mx.array(x)))), f, atol=1e-6)
    assert d.apply_b_dec_to_input == (not tc)


def test_gated_is_exact_jumprelu(rng):
    d = random_dictionary("gated", seed=3)
    x = rng.standard_normal((50, 12)).astype(np.float32)
    pre = np.array(d.pre_acts(mx.array(x)))
    thr = np.array(d.threshold)
    np.testing.assert_allclose(np.array(d.encode(mx.array(x))), pre * (pre > thr), atol=1e-6)
    # train_forward (gate formulation) and encode (JumpReLU form) agree
    _, f_train, _, _ = d.train_forward(mx.array(x))
    np.testing.assert_allclose(np.array(f_train), ref_encode(d, x), atol=1e-5)


def to64(d):
    """Cast every parameter to float64 (MLX CPU supports it) for precise finite differences."""
    for name, a in d.arrays().items():
        if name.startswith("W_dec_layers."):
            d.W_dec_layers[int(name.split(".")[1])] = a.astype(mx.float64)
        else:
            setattr(d, name, a.astype(mx.float64))
    return d


def _fd_check(d, loss_of, names, eps=1e-3, n=6, seed=0, rtol=2e-3):
    """Compare mx gradients to central finite differences on random coordinates (float64)."""
    from mlx import nn

    from sae.dictionary import _flat
    to64(d)
    vg = nn.value_and_grad(d, lambda: loss_of())
    _, g = vg()
    g = _flat(g)
    rng = np.random.default_rng(seed)
    for name in names:
        base = np.array(getattr(d, name))
        for _ in range(n):
            idx = tuple(rng.integers(0, s) for s in base.shape)
            vals = []
            for sgn in (1, -1):
                p = base.copy()
                p[idx] += sgn * eps
                setattr(d, name, mx.array(p))
                vals.append(float(loss_of()))
            setattr(d, name, mx.array(base))
            fd = (vals[0] - vals[1]) / (2 * eps)
            an = float(np.array(g[name])[idx])
            assert abs(fd - an) <= rtol * max(1.0, abs(fd)), (name, idx, fd, an)


@pytest.mark.parametrize("arch", ["relu", "topk", "gated", "matryoshka"])
def test_loss_gradients_finite_differences(arch, rng):
    d = random_dictionary(arch, seed=5)
    if arch in ("batchtopk", "matryoshka"):
        d.threshold = mx.array(0.3)
    x = mx.array(rng.standard_normal((16, 12)), dtype=mx.float64)
    ctx = LossContext(0.7, mx.zeros((24,), dtype=mx.bool_), False)
    names = ["W_enc", "W_dec", "b_dec", "b_enc"]
    if arch == "gated":  # the aux path stops gradients into the decoder by design
        names = ["W_enc", "b_enc", "r_mag", "b_mag"]
    _fd_check(d, lambda: d.loss(x, x, ctx)[0], names)


def test_relu_loss_value(rng):
    d = random_dictionary("relu", seed=2)
    x = rng.standard_normal((7, 12)).astype(np.float32)
    f = ref_encode(d, x)
    y = f @ np_(d.W_dec) + np_(d.b_dec)
    want = ((x - y) ** 2).sum(1).mean() + 0.3 * (f @ np.linalg.norm(np_(d.W_dec), axis=1)).mean()
    got = float(d.loss(mx.array(x), mx.array(x), LossContext(0.3, None))[0])
    assert got == pytest.approx(want, rel=1e-4)


def test_topk_auxk_value(rng):
    d = random_dictionary("topk", seed=4, k=3, k_aux=2)
    x = rng.standard_normal((6, 12)).astype(np.float32)
    dead = np.zeros(24, bool)
    dead[[1, 5, 7, 11, 20]] = True
    loss, st = d.loss(mx.array(x), mx.array(x), LossContext(0.0, mx.array(dead), True))
    y = ref_forward(d, x)
    e = x - y
    pre = (x - np_(d.b_dec)) @ np_(d.W_enc) + np_(d.b_enc)
    fa = np.zeros_like(pre)
    for r in range(6):
        cand = np.where(dead, np.maximum(pre[r], 0), 0)
        idx = np.argsort(-cand)[:2]
        fa[r, idx] = cand[idx]
    eh = fa @ np_(d.W_dec)
    aux = (((e - eh) ** 2).sum(1).mean() / (e ** 2).sum(1).mean()) / 32
    assert float(st["aux"]) == pytest.approx(aux, rel=1e-4)
    assert float(loss) == pytest.approx(((e ** 2).sum(1)).mean() + aux, rel=1e-4)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
def test_sparse_decoder_matches_dense(rng, kind, arch):
    """Sparse path == dense path: loss, stats and every gradient, with and without AuxK."""
    from mlx import nn

    from sae.dictionary import _flat
    d_out = 16 if kind == "sae" else 12
    kw = dict(d_out=d_out, k=5, skip=kind == "skip_transcoder", apply_b_dec_to_input=kind == "sae")
    cls = architecture(arch)
    dense = cls(16, 64, **kw)
    dense.init_weights(mx.random.key(7))
    arrays = {n: mx.array(rng.standard_normal(v.shape).astype(np.float32) * 0.3)
              for n, v in dense.arrays().items()}
    dense.load_arrays(arrays)
    sparse = cls(16, 64, decoder="sparse", **kw)
    sparse.load_arrays(arrays)
    x = mx.array(rng.standard_normal((32, 16)).astype(np.float32))
    y = x if kind == "sae" else mx.array(rng.standard_normal((32, d_out)).astype(np.float32))
    dead = mx.array(np.arange(64) % 3 == 0)
    for ctx in (LossContext(0.0, None), LossContext(0.0, dead, True)):
        (l1, s1), g1 = nn.value_and_grad(dense, lambda: dense.loss(x, y, ctx))()
        (l2, s2), g2 = nn.value_and_grad(sparse, lambda: sparse.loss(x, y, ctx))()
        assert float(l1) == pytest.approx(float(l2), rel=1e-5)
        assert float(s1["l0"]) == pytest.approx(float(s2["l0"]))
        assert float(s1["aux"]) == pytest.approx(float(s2["aux"]), rel=1e-5)
        np.testing.assert_array_equal(np.array(s1["fired"]), np.array(s2["fired"]))
        if arch == "batchtopk":
            assert float(s1["batch_threshold"]) == float(s2["batch_threshold"]) > 0
        g1, g2 = _flat(g1), _flat(g2)
        assert set(g1) == set(g2)
        for n in g1:
            assert float(mx.abs(g1[n]).max()) > 0, n  # every parameter gets a gradient
            np.testing.assert_allclose(np.array(g1[n]), np.array(g2[n]), atol=1e-4, rtol=1e-4)


def test_jumprelu_ste_gradients(rng):
    d = random_dictionary("jumprelu", seed=8, bandwidth=0.5, pre_act_coef=0.0)
    x = rng.standard_normal((20, 12)).astype(np.float32)
    xm = mx.array(x)
    from mlx import nn

    from sae.dictionary import _flat
    coef = 0.4
    (_, _), g = nn.value_and_grad(d, lambda: d.loss(xm, xm, LossContext(coef, None)))()
    g = np.array(_flat(g)["log_threshold"], np.float64)
    pre = (x - np_(d.b_dec)) @ np_(d.W_enc) + np_(d.b_enc)
    th = np.exp(np_(d.log_threshold))
    eps = 0.5
    f = pre * (pre > th)
    r = f @ np_(d.W_dec) + np_(d.b_dec) - x                       # dL/dy_hat / 2
    df = 2 * r @ np_(d.W_dec).T / x.shape[0]                       # dmse/df
    K = (np.abs((pre - th) / eps) < 0.5)
    dtheta = (df * (-(th / eps) * K)).sum(0) + coef * (-(1 / eps) * K).sum(0) / x.shape[0]
    np.testing.assert_allclose(g, dtheta * th, rtol=1e-3, atol=1e-5)   # chain rule through exp


def test_jumprelu_tanh_and_preact_loss(rng):
    d = random_dictionary("jumprelu", seed=9, l0_form="tanh", tanh_scale=2.0, pre_act_coef=0.1)
    x = rng.standard_normal((10, 12)).astype(np.float32)
    pre = (x - np_(d.b_dec)) @ np_(d.W_enc) + np_(d.b_enc)
    th = np.exp(np_(d.log_threshold))
    f = pre * (pre > th)
    norms = np.linalg.norm(np_(d.W_dec), axis=1)
    y = f @ np_(d.W_dec) + np_(d.b_dec)
    want = (((x - y) ** 2).sum(1).mean() + 0.5 * np.tanh(2.0 * f * norms).sum(1).mean()
            + 0.1 * (np.maximum(th - pre, 0) @ norms).mean())
    got = float(d.loss(mx.array(x), mx.array(x), LossContext(0.5, None))[0])
    assert got == pytest.approx(want, rel=1e-4)


def test_gated_aux_loss_value(rng):
    d = random_dictionary("gated", seed=10)
    x = rng.standard_normal((10, 12)).astype(np.float32)
    xc = x - np_(d.b_dec)
    gate = xc @ np_(d.W_enc) + np_(d.b_enc)
    norms = np.linalg.norm(np_(d.W_dec), axis=1)
    y = ref_forward(d, x)
    y_aux = np.maximum(gate, 0) @ np_(d.W_dec) + np_(d.b_dec)
    want = (((x - y) ** 2).sum(1).mean() + 0.2 * (np.maximum(gate, 0) @ norms).mean()
            + ((x - y_aux) ** 2).sum(1).mean())
    got = float(d.loss(mx.array(x), mx.array(x), LossContext(0.2, None))[0])
    assert got == pytest.approx(want, rel=1e-4)


def test_batchtopk_training_keeps_k_times_batch(rng):
    d = random_dictionary("batchtopk", seed=11, k=3)
    x = rng.standard_normal((8, 12)).astype(np.float32)
    pre = np.array(d.pre_acts(mx.array(x)), np.float64)
    f, st = d.train_activation(mx.array(pre.astype(np.float32)))
    f = np.array(f)
    keep = np.sort(np.maximum(pre, 0).ravel())[::-1][: 3 * 8]
    assert (f > 0).sum() == 24
    np.testing.assert_allclose(np.sort(f[f > 0])[::-1], keep, rtol=1e-6)
    # EMA: first estimate is copied, later ones mix at the default rate 0.1 (issue 16)
    d.threshold = mx.array(-1.0)
    d.update_stats(st)
    assert float(d.threshold) == pytest.approx(keep[-1], rel=1e-6)
    d.update_stats({"batch_threshold": mx.array(2.0)})
    assert float(d.threshold) == pytest.approx(0.9 * keep[-1] + 0.1 * 2.0, rel=1e-6)


def test_matryoshka_prefix_losses(rng):
    d = random_dictionary("matryoshka", width=32, seed=12, k=4,
                          group_fractions=[0.25, 0.25, 0.5])
    x = rng.standard_normal((8, 12)).astype(np.float32)
    pre = np.array(d.pre_acts(mx.array(x)))
    f, _ = d.train_activation(mx.array(pre))
    f = np.array(f, np.float64)
    want = 0.0
    for end in (8, 16, 32):
        y = f[:, :end] @ np_(d.W_dec)[:end] + np_(d.b_dec)
        want += ((x - y) ** 2).sum(1).mean()
    got = float(d.loss(mx.array(x), mx.array(x), LossContext(0.0, None))[0])
    assert got == pytest.approx(want, rel=1e-4)
    assert d.group_bounds == [8, 16, 32]


@pytest.mark.parametrize("act", ["relu", "jumprelu", "topk", "batchtopk"])
def test_clt_matches_numpy(act, rng):
    L, d_in, m = 3, 6, 8
    clt = CrossLayerTranscoder(d_in, m, L, d_out=5, activation=act, k=5)
    for name, cur in clt.arrays().items():
        a = rng.standard_normal(cur.shape).astype(np.float32) * 0.5
        if name == "log_threshold":
            a = np.log(rng.uniform(0.05, 0.5, cur.shape)).astype(np.float32)
        if name == "threshold":
            a = np.array(0.2, np.float32)
        clt.load_arrays({**clt.arrays(), name: mx.array(a)})
    assert isinstance(clt, CrossLayerDictionary)
    xs = [rng.standard_normal((7, d_in)).astype(np.float32) for _ in range(L)]
    pre = np.stack([x @ np_(clt.W_enc[i]) + np_(clt.b_enc[i]) for i, x in enumerate(xs)], 1)
    if act == "relu":
        f = np.maximum(pre, 0)
    elif act == "jumprelu":
        f = pre * (pre > np.exp(np_(clt.log_threshold)))
    elif act == "batchtopk":
        f = pre * (pre > 0.2)
    else:
        flat = pre.reshape(7, -1)
        f = np.zeros_like(flat)
        for r in range(7):
            idx = np.argsort(-flat[r])[:5]
            f[r, idx] = np.maximum(flat[r, idx], 0)
        f = f.reshape(pre.shape)
    outs = clt([mx.array(x) for x in xs])
    for j in range(L):
        want = np_(clt.b_dec[j]) + sum(f[:, i] @ np_(clt.W_dec_layers[i])[:, j - i] for i in range(j + 1))
        np.testing.assert_allclose(np.array(outs[j]), want, atol=1e-4)
        if j >= 1:
            np.testing.assert_allclose(np.array(clt.decode_to(0, j, mx.array(f[:, 0].astype(np.float32)))),
                                       f[:, 0] @ np_(clt.W_dec_layers[0])[:, j], atol=1e-4)


def test_clt_relu_gradients_fd(rng):
    clt = CrossLayerTranscoder(5, 6, 2, activation="relu")
    clt.init_weights(mx.random.key(0))
    clt.b_enc = mx.array(rng.standard_normal((2, 6)).astype(np.float32) * 0.3)
    xs = [mx.array(rng.standard_normal((10, 5)), dtype=mx.float64) for _ in range(2)]
    ys = [mx.array(rng.standard_normal((10, 5)), dtype=mx.float64) for _ in range(2)]
    _fd_check(clt, lambda: clt.loss(xs, ys, LossContext(0.5, None))[0],
              ["W_enc", "b_enc", "b_dec"])


def test_config_errors():
    with pytest.raises(ConfigError):
        TopKDictionary(8, 4, k=5)
    with pytest.raises(UnknownArchitectureError):
        architecture("bogus")
    with pytest.raises(ConfigError):
        CrossLayerTranscoder(4, 4, 2, activation="gated")


def test_batch_topk_threshold_parallel_is_exact(rng):
    from sae.ops import batch_topk_threshold
    for a in (rng.standard_normal((64, 500)), np.round(rng.standard_normal((64, 512)) * 3)):
        a = a.astype(np.float32)
        for n_keep in (1, 7, 320, 4000, 20000):
            want = np.sort(a.ravel())[::-1][n_keep - 1]
            for split in (1, 2, 3):
                assert float(batch_topk_threshold(mx.array(a), n_keep, split)) == want


def test_clt_auxk_value(rng):
    L, m, d = 2, 6, 4
    clt = CrossLayerTranscoder(d, m, L, activation="topk", k=3, k_aux=2)
    arrays = {k: mx.array(rng.standard_normal(v.shape).astype(np.float32) * 0.5)
              for k, v in clt.arrays().items()}
    clt.load_arrays(arrays)
    xs = [rng.standard_normal((5, d)).astype(np.float32) for _ in range(L)]
    ys = [rng.standard_normal((5, d)).astype(np.float32) for _ in range(L)]
    dead = np.zeros(L * m, bool)
    dead[[0, 4, 7, 11]] = True
    _, st = clt.loss([mx.array(x) for x in xs], [mx.array(y) for y in ys],
                     LossContext(0.0, mx.array(dead), True))
    pre = np.stack([x @ np_(clt.W_enc[i]) + np_(clt.b_enc[i]) for i, x in enumerate(xs)], 1)
    flat = pre.reshape(5, -1)
    f = np.zeros_like(flat)
    fa = np.zeros_like(flat)
    for r in range(5):
        idx = np.argsort(-flat[r])[:3]
        f[r, idx] = np.maximum(flat[r, idx], 0)
        cand = np.where(dead, np.maximum(flat[r], 0), 0)
        ia = np.argsort(-cand)[:2]
        fa[r, ia] = cand[ia]
    f, fa = f.reshape(pre.shape), fa.reshape(pre.shape)
    W = [np_(w) for w in clt.W_dec_layers]
    num = den = 0.0
    for j in range(L):
        y_hat = np_(clt.b_dec[j]) + sum(f[:, i] @ W[i][:, j - i] for i in range(j + 1))
        e = ys[j] - y_hat
        e_hat = sum(fa[:, i] @ W[i][:, j - i] for i in range(j + 1))
        num += ((e - e_hat) ** 2).sum(1).mean()
        den += (e ** 2).sum(1).mean()
    assert float(st["aux"]) == pytest.approx(num / den / 32, rel=1e-4)


@pytest.mark.parametrize("shape,k", [((64, 512), 8), ((7, 4096), 32), ((33, 96), 40), ((5, 10), 10),
                                     ((16, 1024), 1)])
def test_topk_selection_matches_sort(rng, shape, k):
    """Two-stage block selection == a full sort, ties included (quantised values)."""
    from sae.ops import kth_largest, topk_index
    for a in (rng.standard_normal(shape), np.round(rng.standard_normal(shape) * 2)):
        a = a.astype(np.float32)
        want_kth = np.sort(a, axis=1)[:, ::-1][:, k - 1]
        for split in (1, 2):
            idx = np.array(topk_index(mx.array(a), k, split))
            assert idx.shape == (shape[0], k)
            assert all(len(set(r)) == k for r in idx)  # k distinct entries per row
            got = np.sort(np.take_along_axis(a, idx, axis=1), axis=1)[:, ::-1]
            np.testing.assert_array_equal(got, np.sort(a, axis=1)[:, ::-1][:, :k])
            np.testing.assert_array_equal(np.array(kth_largest(mx.array(a), k, split))[:, 0], want_kth)


@pytest.mark.parametrize("shape,n_keep", [((64, 512), 300), ((64, 512), 9000), ((6, 10), 7), ((128, 96), 1)])
def test_batch_topk_pairs_are_the_global_top(rng, shape, n_keep):
    """Exactly the n_keep largest entries, as (token, latent) pairs sorted by token."""
    from sae.ops import batch_topk_pairs
    a = rng.standard_normal(shape).astype(np.float32)
    for split in (1, 2):
        tok, lat, pre_p = (np.array(v) for v in batch_topk_pairs(mx.array(a), n_keep, split))
        flat = tok.astype(np.int64) * shape[1] + lat
        want = np.sort(np.argsort(-a.ravel(), kind="stable")[:n_keep])
        np.testing.assert_array_equal(flat, want)
        np.testing.assert_array_equal(pre_p, a.ravel()[want])
