"""File formats: round trips give identical encodings; bad files raise clear errors."""

import json

import mlx.core as mx
import numpy as np
import pytest

import sae  # noqa: F401
from sae import (
    export_circuit_tracer,
    export_clt,
    export_saelens,
    import_circuit_tracer,
    import_clt,
    import_saelens,
    load_dictionaries,
    load_dictionary,
    save_dictionaries,
    save_dictionary,
)
from sae.arch import ARCHITECTURES, CrossLayerTranscoder
from sae.errors import FormatError, ShapeMismatchError, UnknownArchitectureError
from sae.io import read_sparsity
from sae_test_helpers import SITE, TC_IN, random_dictionary


def _x(rng, n=40, d=12):
    return mx.array(rng.standard_normal((n, d)).astype(np.float32))


def _same(a, b, x):
    np.testing.assert_array_equal(np.array(a.encode(x)) > 0, np.array(b.encode(x)) > 0)
    np.testing.assert_allclose(np.array(a.encode(x)), np.array(b.encode(x)), atol=1e-5)
    np.testing.assert_allclose(np.array(a(x)), np.array(b(x)), atol=1e-4)


def _random_clt(act, rng):
    clt = CrossLayerTranscoder(6, 8, 3, activation=act, k=5)
    arrays = {}
    for name, cur in clt.arrays().items():
        a = rng.standard_normal(cur.shape).astype(np.float32) * 0.5
        if name == "log_threshold":
            a = np.log(rng.uniform(0.05, 0.5, cur.shape)).astype(np.float32)
        if name == "threshold":
            a = np.array(0.2, np.float32)
        arrays[name] = mx.array(a)
    clt.load_arrays(arrays)
    return clt


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_native_round_trip(arch, tmp_path, rng):
    d = random_dictionary(arch, seed=1)
    save_dictionary(d, tmp_path / "d", metadata={"model": "tiny"})
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["schema"] == "mlx-circuits.dictionary" and cfg["version"] == 1
    assert list(cfg) == sorted(cfg)
    e = load_dictionary(tmp_path / "d")
    assert type(e) is type(d) and e.in_site == SITE and e.hparams == d.hparams
    _same(d, e, _x(rng))


def test_native_set_round_trip_with_transcoders_and_clt(tmp_path, rng):
    ds = [random_dictionary("topk", seed=2), random_dictionary("jumprelu", transcoder=True,
                                                                skip=True, seed=3),
          _random_clt("jumprelu", rng)]
    save_dictionaries(ds, tmp_path / "set")
    back = load_dictionaries(tmp_path / "set")
    assert set(back) == {SITE, TC_IN, "clt"}
    _same(ds[0], back[SITE], _x(rng))
    _same(ds[1], back[TC_IN], _x(rng))
    xs = [_x(rng, 10, 6) for _ in range(3)]
    for a, b in zip(ds[2](xs), back["clt"](xs)):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_saelens_round_trip(arch, tmp_path, rng):
    d = random_dictionary(arch, seed=4)
    dens = np.log10(rng.uniform(1e-4, 1, 24)).astype(np.float32)
    export_saelens(d, tmp_path / "sl", model_name="tiny", log10_density=dens)
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["d_in"] == 12 and cfg["d_sae"] == 24
    from safetensors.numpy import load_file
    w = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))
    assert w["W_enc"].shape == (12, 24) and w["W_dec"].shape == (24, 12)
    e = import_saelens(tmp_path / "sl")
    assert e.in_site == SITE
    _same(d, e, _x(rng))
    np.testing.assert_allclose(read_sparsity(tmp_path / "sl"), dens)
    # the exported tensors follow SAELens' own equations (independent check)
    x = np.array(_x(rng))
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if "threshold" in w:
        f = pre * (pre > w["threshold"])
    elif cfg["architecture"] == "topk":
        f = np.where(pre >= np.sort(pre, 1)[:, [-cfg["k"]]], np.maximum(pre, 0), 0)
    else:
        f = np.maximum(pre, 0)
    np.testing.assert_allclose(f, np.array(d.encode(mx.array(x))), atol=1e-5)


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "batchtopk", "gated"])
def test_circuit_tracer_round_trip(arch, tmp_path, rng):
    d = random_dictionary(arch, transcoder=True, skip=True, seed=5)
    s = random_dictionary(arch, seed=6)  # an SAE: b_dec input subtraction folded into b_enc
    export_circuit_tracer({1: d, 2: s}, tmp_path / "ct")
    from safetensors.numpy import load_file
    w = load_file(str(tmp_path / "ct" / "layer_1.safetensors"))
    assert w["W_enc"].shape == (24, 12) and w["W_skip"].shape == (12, 12)
    x = np.array(_x(rng))
    pre = x @ w["W_enc"].T + w["b_enc"]  # circuit-tracer's own equations
    if "activation_function.threshold" in w:
        f = pre * (pre > w["activation_function.threshold"])
    elif "k" in w:
        f = np.where(pre >= np.sort(pre, 1)[:, [-int(w["k"])]], np.maximum(pre, 0), 0)
    else:
        f = np.maximum(pre, 0)
    np.testing.assert_allclose(f, np.array(d.encode(mx.array(x))), atol=1e-5)
    np.testing.assert_allclose(f @ w["W_dec"] + w["b_dec"] + x @ w["W_skip"].T,
                               np.array(d(mx.array(x))), atol=1e-4)
    back = import_circuit_tracer(tmp_path / "ct")
    _same(d, back[1], _x(rng))
    _same(s, back[2], _x(rng))


@pytest.mark.parametrize("act", ["relu", "jumprelu", "batchtopk"])
def test_clt_circuit_tracer_round_trip(act, tmp_path, rng):
    clt = _random_clt(act, rng)
    export_clt(clt, tmp_path / "clt")
    from safetensors.numpy import load_file
    assert load_file(str(tmp_path / "clt" / "W_dec_1.safetensors"))["W_dec_1"].shape == (8, 2, 6)
    assert load_file(str(tmp_path / "clt" / "W_enc_0.safetensors"))["W_enc_0"].shape == (8, 6)
    back = import_clt(tmp_path / "clt")
    xs = [_x(rng, 10, 6) for _ in range(3)]
    np.testing.assert_allclose(np.array(clt.encode(xs)), np.array(back.encode(xs)), atol=1e-5)
    for a, b in zip(clt(xs), back(xs)):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-4)


def test_corrupt_and_truncated_files(tmp_path):
    d = random_dictionary("topk")
    save_dictionary(d, tmp_path / "d")
    wpath = tmp_path / "d" / "weights.safetensors"
    blob = wpath.read_bytes()
    wpath.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(FormatError, match="truncated or corrupt"):
        load_dictionary(tmp_path / "d")
    wpath.write_bytes(b"\x00" * 64)
    with pytest.raises(FormatError):
        load_dictionary(tmp_path / "d")
    with pytest.raises(FormatError):
        load_dictionary(tmp_path / "missing")
    (tmp_path / "d" / "config.json").write_text("{not json")
    with pytest.raises(FormatError):
        load_dictionary(tmp_path / "d")


def test_unknown_architecture_and_site_mismatch(tmp_path):
    d = random_dictionary("relu")
    save_dictionary(d, tmp_path / "d")
    with pytest.raises(ShapeMismatchError, match="d_in=12"):
        load_dictionary(tmp_path / "d", site_dims={SITE: 16})
    assert load_dictionary(tmp_path / "d", site_dims={SITE: 12}).d_in == 12
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    cfg["arch"] = "quantum"
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnknownArchitectureError):
        load_dictionary(tmp_path / "d")
    with pytest.raises(ShapeMismatchError):
        d.encode(mx.zeros((3, 16)))


def test_failed_write_leaves_nothing(tmp_path):
    good = random_dictionary("relu")
    save_dictionary(good, tmp_path / "d")
    before = sorted(p.name for p in (tmp_path / "d").iterdir())

    class Broken:
        arch, in_site, out_site = "relu", None, None

        def describe(self):
            return {"arch": "relu"}

        def arrays(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_dictionary(Broken(), tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temp dirs left
    with pytest.raises(RuntimeError):
        save_dictionaries([good, Broken()], tmp_path / "set")
    assert not (tmp_path / "set").exists()
    with pytest.raises(FormatError):
        export_saelens(random_dictionary("relu", transcoder=True), tmp_path / "sl")
    assert not (tmp_path / "sl").exists()
