"""Loading published dictionaries never holds a second copy of the weights.

Each case writes a set at a published shape (random weights), then loads it in a fresh
Python process that reports its resident set before loading and its peak after
(``/proc/self/status``; the peak is reset first through ``/proc/self/clear_refs`` when
the kernel allows it, otherwise the earlier peak only makes the check stricter).
Peak growth must stay within 1.3x the bytes of the loaded float32 arrays: the weights
are read once, straight into the buffers that are kept, transposes are views, and a
cast (bfloat16 files) converts large tensors in small chunks. Sampled
entries are compared with slices read independently from the files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import sae  # noqa: F401  (BLAS preload before mlx)

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="needs Linux /proc to measure resident memory")

RATIO = 1.3
_CHILD = r"""
import json, sys
import attribution  # noqa: F401  (before mlx)
import mlx.core as mx
from sae.io import import_circuit_tracer, import_clt, import_saelens, load_dictionaries

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out

kind, path = sys.argv[1], sys.argv[2]
mx.eval(mx.ones((8, 8)) @ mx.ones((8, 8)))  # start MLX's CPU device before measuring
base = status()["VmRSS"]
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
if kind == "ct":
    dicts = list(import_circuit_tracer(path).values())
elif kind == "clt":
    dicts = [import_clt(path)]
elif kind == "saelens":
    dicts = [import_saelens(path)]
else:
    dicts = list(load_dictionaries(path).values())
arrays = [a for d in dicts for a in d.arrays().values()]
mx.eval(arrays)
peak = status()["VmHWM"]
d = dicts[0]
W_enc = d.W_enc[0] if d.W_enc.ndim == 3 else d.W_enc  # a CLT's first source layer
sample = {"W_enc": mx.array(W_enc[:3, :5]).tolist(),
          "W_dec": mx.array((d.W_dec_layers[-1] if hasattr(d, "W_dec_layers") else d.W_dec)
                            .reshape(-1)[-5:]).tolist()}
print(json.dumps({"base": base, "peak": peak, "bytes": sum(a.nbytes for a in arrays),
                  "reset": reset, "growth_ratio": (peak - base) / sum(a.nbytes for a in arrays),
                  "dtypes": sorted({str(a.dtype) for a in arrays}),
                  "sample": sample}))
"""


def _load_in_child(kind: str, path: Path) -> dict:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _CHILD, kind, str(path)], capture_output=True,
                         text=True, timeout=600, env=env, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check_memory(r: dict, what: str) -> None:
    growth = r["peak"] - r["base"]
    mb = 2 ** 20
    assert r["dtypes"] == ["mlx.core.float32"]
    assert growth <= RATIO * r["bytes"], (
        f"{what}: peak RSS grew {growth / mb:.0f} MiB loading {r['bytes'] / mb:.0f} MiB of "
        f"weights ({growth / r['bytes']:.2f}x > {RATIO}x; clear_refs reset: {r['reset']})")


def _normal(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False) * 0.05


def test_circuit_tracer_set_at_published_shape_loads_without_a_second_copy(tmp_path):
    """4 layers of 32768-wide transcoders on d_model 768 (GPT-2 small): 805 MB of float32."""
    n, m, d = 4, 32768, 768
    rng = np.random.default_rng(0)
    p = tmp_path / "ct"
    p.mkdir()
    (p / "config.yaml").write_text('model_name: "gpt2"\nmodel_kind: transcoder_set\n'
                                   'feature_input_hook: "mlp.hook_in"\n'
                                   'feature_output_hook: "hook_mlp_out"\n')
    for i in range(n):
        save_file({"W_enc": _normal(rng, (m, d)), "W_dec": _normal(rng, (m, d)),
                   "b_enc": _normal(rng, (m,)), "b_dec": _normal(rng, (d,)),
                   "activation_function.threshold": np.full(m, 0.05, np.float32)},
                  str(p / f"layer_{i}.safetensors"))
    r = _load_in_child("ct", p)
    assert r["bytes"] >= n * 2 * m * d * 4
    _check_memory(r, "circuit-tracer set")
    with safe_open(str(p / "layer_0.safetensors"), framework="numpy") as f:
        W_enc = f.get_slice("W_enc")[:5, :3]  # [d_tc, d_in] on disk; ours is [d_in, d_tc]
        W_dec = f.get_slice("W_dec")[m - 1:, d - 5:]
    np.testing.assert_array_equal(np.array(r["sample"]["W_enc"], np.float32), W_enc.T)
    np.testing.assert_array_equal(np.array(r["sample"]["W_dec"], np.float32), W_dec.reshape(-1))


def test_bfloat16_saelens_folder_is_cast_in_chunks(tmp_path):
    """Gemma Scope-like JumpReLU SAE stored in bfloat16 (2304 x 16384, 302 MB as float32): no
    full-size bfloat16 copy is held while casting."""
    d, m = 2304, 16384
    rng = np.random.default_rng(1)
    p = tmp_path / "sl"
    p.mkdir()
    (p / "cfg.json").write_text(json.dumps({
        "architecture": "jumprelu", "d_in": d, "d_sae": m, "dtype": "bfloat16",
        "apply_b_dec_to_input": False, "metadata": {"hook_name": "blocks.12.hook_resid_post"}}))
    tensors = {"W_enc": _normal(rng, (d, m)), "W_dec": _normal(rng, (m, d)),
               "b_enc": _normal(rng, (m,)), "b_dec": _normal(rng, (d,)),
               "threshold": np.full(m, 0.05, np.float32)}
    mx.save_safetensors(str(p / "sae_weights.safetensors"),
                        {k: mx.array(v).astype(mx.bfloat16) for k, v in tensors.items()})
    r = _load_in_child("saelens", p)
    _check_memory(r, "bfloat16 SAELens folder")
    want = np.array(mx.array(tensors["W_enc"][:3, :5]).astype(mx.bfloat16).astype(mx.float32))
    np.testing.assert_array_equal(np.array(r["sample"]["W_enc"], np.float32), want)


def test_clt_encoders_are_filled_in_place(tmp_path):
    """A 4-layer CLT, 16384 latents per layer on d_model 768: 704 MB of float32."""
    n, m, d = 4, 16384, 768
    rng = np.random.default_rng(2)
    p = tmp_path / "clt"
    p.mkdir()
    (p / "config.yaml").write_text('feature_input_hook: "hook_resid_mid"\n'
                                   'feature_output_hook: "hook_mlp_out"\n')
    for i in range(n):
        save_file({f"W_enc_{i}": _normal(rng, (m, d)), f"b_enc_{i}": _normal(rng, (m,)),
                   f"b_dec_{i}": _normal(rng, (d,)),
                   f"threshold_{i}": np.full(m, 0.05, np.float32)},
                  str(p / f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": _normal(rng, (m, n - i, d))}, str(p / f"W_dec_{i}.safetensors"))
    r = _load_in_child("clt", p)
    _check_memory(r, "CLT")
    with safe_open(str(p / "W_enc_0.safetensors"), framework="numpy") as f:
        W_enc = f.get_slice("W_enc_0")[:5, :3]
    with safe_open(str(p / f"W_dec_{n - 1}.safetensors"), framework="numpy") as f:
        W_dec = f.get_slice(f"W_dec_{n - 1}")[m - 1:, :, d - 5:]
    np.testing.assert_array_equal(np.array(r["sample"]["W_enc"], np.float32), W_enc.T)
    np.testing.assert_array_equal(np.array(r["sample"]["W_dec"], np.float32), W_dec.reshape(-1))


def test_native_dictionaries_load_without_a_second_copy(tmp_path):
    """Our own format: two 768 x 32768 skip transcoders, 408 MB."""
    from attribution.sites import Site
    from sae.arch import JumpReLUDictionary
    from sae.io import save_dictionaries

    rng = np.random.default_rng(3)
    dicts = []
    for i in range(2):
        dct = JumpReLUDictionary(768, 32768, in_site=Site(i, "mlp_in"), out_site=Site(i, "mlp_out"),
                                 skip=True)
        dct.W_enc = mx.array(_normal(rng, (768, 32768)))
        dct.W_dec = mx.array(_normal(rng, (32768, 768)))
        dicts.append(dct)
    save_dictionaries(dicts, tmp_path / "set")
    del dicts
    r = _load_in_child("native", tmp_path / "set")
    _check_memory(r, "native set")


def _save_as(path, tensors: dict, dtype: str) -> dict:
    """Save float tensors as ``dtype``; returns the stored values as float32 (independent cast)."""
    if dtype == "bfloat16":  # numpy has no bfloat16: MLX writes and casts it
        stored = {k: mx.array(v).astype(mx.bfloat16) if v.dtype == np.float32 else mx.array(v)
                  for k, v in tensors.items()}
        mx.save_safetensors(str(path), stored)
        return {k: np.array(v.astype(mx.float32)) for k, v in stored.items() if k != "k"}
    stored = {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in tensors.items()}
    save_file(stored, str(path))
    return {k: v.astype(np.float32) for k, v in stored.items() if k != "k"}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_chunked_cast_is_exact_and_finds_nan_in_a_late_chunk(dtype, tmp_path, monkeypatch):
    """Small chunks (64 bytes) so that every tensor crosses many chunk boundaries."""
    from sae.errors import NonFiniteWeightsError
    from sae.io import _files

    monkeypatch.setattr(_files, "_CHUNK", 64)
    rng = np.random.default_rng(4)
    tensors = {"W": rng.standard_normal((37, 29)).astype(np.float32),
               "v": rng.standard_normal(101).astype(np.float32), "k": np.array(5, np.int64)}
    f = tmp_path / "w.safetensors"
    want = _save_as(f, tensors, dtype)
    got = _files.read_checked(f, dictionary="d")
    for k in ("W", "v"):
        assert got[k].dtype == mx.float32 and tuple(got[k].shape) == tensors[k].shape
        np.testing.assert_array_equal(np.array(got[k]), want[k])
    assert got["k"].item() == 5
    bad = dict(tensors, W=tensors["W"].copy())
    bad["W"][36, 27] = np.nan  # in the last chunk
    _save_as(f, bad, dtype)
    with pytest.raises(NonFiniteWeightsError, match=r"tensor W has 1 NaN and 0 inf"):
        _files.read_checked(f, dictionary="d")


def test_unreadable_dtype_is_one_line(tmp_path):
    from sae.errors import FormatError
    from sae.io import _files

    save_file({"W": np.ones((3, 4), np.float64)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(FormatError, match=r"tensor W is stored as F64, which cannot be read here; "
                                          "convert the file to float32") as e:
        _files.read_checked(tmp_path / "w.safetensors", dictionary="d")
    assert "\n" not in str(e.value)
