"""Attribution on bfloat16 and quantized checkpoints, and where float32 comes from.

Policy (``attribution.model.precision``): ``load_model`` casts every floating
parameter to float32 at load (packed quantized weights stay packed, their
scales and biases become float32), so every activation, gradient and graph
entry is float32 arithmetic on the checkpoint's exact values.

References, built without ``load_model``'s cast:
  - bf16: the bf16 safetensors upcast by hand (``astype``) and loaded into a
    float32 model -> the graphs must be identical;
  - 4/8-bit: a float32 directory written from the quantized files with
    ``mx.dequantize`` -> the graphs differ only by the quantized matmul
    kernels' float32 round-off.
Measured (2-layer d=64 models, random transcoders, 8 tokens; max |ΔA| / max |A|
over the graph's edges): bf16 0 exactly (llama, gemma2, gpt2); 4-bit group 32
4e-7 (llama), 7e-7 (gemma2), 6e-7 (gpt2); 8-bit alike; d=768 4-bit 2e-6.
Tolerances below: 1e-5 (quantized), 0 (bf16).
``dtype=None`` keeps bf16 and computes in bf16: capture, interventions and
gradients run; they stay within 5e-2 (activations; Gemma worst) and 2e-2
(gradients) of float32, relative to each tensor's largest entry.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import attribution  # noqa: F401  (BLAS preload before mlx)
from attribution import Ablate, Site, build_graph, capture, load_model, run, site_grads
from attribution.replacement import ReplacementModel
from attribution.testing_dicts import random_transcoders
from attribution.tiny import REFERENCE_TOKENS, convert_tiny_model, make_tiny_hf_model, make_tiny_model

TOKENS = list(REFERENCE_TOKENS)
QUANT_TOL = 1e-5
SITES = [Site(0, "attn_z"), Site(1, "mlp_in"), Site(1, "resid_post"), Site(0, "attn_pattern")]
D768 = {"hidden_size": 768, "intermediate_size": 2048, "num_attention_heads": 12,
        "num_key_value_heads": 4}


def _dequantized_dir(qdir: Path, src: Path, out: Path, group_size: int, bits: int) -> Path:
    """A float32 mlx-lm directory from a quantized one: every packed matrix ``mx.dequantize``d."""
    w = mx.load(str(qdir / "model.safetensors"))
    dense = {}
    packed = {k[: -len(".weight")] for k, v in w.items() if v.dtype == mx.uint32}
    for k, v in w.items():
        if k.rsplit(".", 1)[0] in packed and k.endswith((".scales", ".biases")):
            continue  # folded into the dense weight below
        if v.dtype == mx.uint32:
            base = k[: -len(".weight")]
            v = mx.dequantize(v, w[base + ".scales"], w[base + ".biases"], group_size, bits)
        dense[k] = v.astype(mx.float32)
    shutil.copytree(src, out)
    mx.save_safetensors(str(out / "model.safetensors"), dense, metadata={"format": "mlx"})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": dict.fromkeys(dense, "model.safetensors")}))
    return out


def _upcast_model(bf_dir: Path, src: Path):
    """The fp32 model of ``src``'s shape holding ``bf_dir``'s bf16 weights, upcast by hand."""
    model = load_model(src)
    w = mx.load(str(bf_dir / "model.safetensors"))
    assert all(v.dtype == mx.bfloat16 for v in w.values())
    model.module.load_weights([(k, v.astype(mx.float32)) for k, v in w.items()])
    return model


def _graph_gap(a, b) -> float:
    assert list(a.nodes["key"]) == list(b.nodes["key"])  # same active features and targets
    da, db = a.adjacency.toarray(), b.adjacency.toarray()
    return float(np.abs(da - db).max() / np.abs(db).max())


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    out = {}
    for arch in ("llama", "gemma2", "gpt2"):
        src = make_tiny_model(arch, root / arch / "fp32", seed=7)
        out[arch] = src
        out[arch, "bf16"] = convert_tiny_model(src, root / arch / "bf16", dtype="bfloat16")
        for bits in (4, 8):
            q = convert_tiny_model(src, root / arch / f"q{bits}", bits=bits, group_size=32)
            out[arch, f"q{bits}"] = q
            out[arch, f"deq{bits}"] = _dequantized_dir(q, src, root / arch / f"deq{bits}", 32, bits)
    return out


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_bf16_graph_equals_graph_of_upcast_weights(dirs, arch):
    model = load_model(dirs[arch, "bf16"])
    ref = _upcast_model(dirs[arch, "bf16"], dirs[arch])
    dicts = random_transcoders(ref, 32, seed=11)
    state = ReplacementModel(model, dicts).clean(TOKENS)
    # the cast happened at load: the clean state the graph is built from is float32
    assert state.embed.dtype == mx.float32 and state.norm_out.dtype == mx.float32
    assert all(a.dtype == mx.float32 for a in state.error.values())
    assert _graph_gap(build_graph(model, dicts, TOKENS), build_graph(ref, dicts, TOKENS)) == 0.0


@pytest.mark.parametrize("arch,bits", [("llama", 4), ("gemma2", 4), ("gpt2", 4), ("llama", 8)])
def test_quantized_graph_matches_dequantized_float32_copy(dirs, arch, bits):
    model = load_model(dirs[arch, f"q{bits}"])
    ref = load_model(dirs[arch, f"deq{bits}"])
    assert model.load_info.quantization["bits"] == bits and ref.load_info.quantization is None
    dicts = random_transcoders(ref, 32, seed=11)
    assert _graph_gap(build_graph(model, dicts, TOKENS), build_graph(ref, dicts, TOKENS)) < QUANT_TOL


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_capture_interventions_and_grads_on_a_4bit_model(dirs, arch):
    model, ref = load_model(dirs[arch, "q4"]), load_model(dirs[arch, "deq4"])
    toks = mx.array([TOKENS])
    got, want = capture(model, toks, SITES), capture(ref, toks, SITES)
    for s in SITES:
        assert got[s].dtype == mx.float32
        assert float(mx.abs(got[s] - want[s]).max() / mx.abs(want[s]).max()) < QUANT_TOL, s
    iv = [Ablate(Site(0, "attn_z"), head=1)]
    a, b = run(model, toks, interventions=iv).logits, run(ref, toks, interventions=iv).logits
    assert float(mx.abs(a - b).max() / mx.abs(b).max()) < QUANT_TOL
    assert float(mx.abs(a - model(toks)).max()) > 1e-3  # the ablation did something
    site = Site(1, "mlp_out")
    metric = lambda lg: lg[0, -1, 7]  # noqa: E731
    _, ga = site_grads(model, toks, [site], metric, freeze=True)
    _, gb = site_grads(ref, toks, [site], metric, freeze=True)
    assert float(mx.abs(ga[site] - gb[site]).max() / mx.abs(gb[site]).max()) < QUANT_TOL


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_bf16_kept_with_dtype_none_runs_in_bf16(dirs, arch):
    native, up = load_model(dirs[arch, "bf16"], dtype=None), load_model(dirs[arch, "bf16"])
    assert native.dtype == mx.bfloat16 and up.dtype == mx.float32
    toks = mx.array([TOKENS])
    got, want = capture(native, toks, SITES), capture(up, toks, SITES)
    for s in SITES:
        assert got[s].dtype == mx.bfloat16
        gap = float(mx.abs(got[s].astype(mx.float32) - want[s]).max() / mx.abs(want[s]).max())
        assert gap < 5e-2, s
    out = run(native, toks, interventions=[Ablate(Site(0, "attn_z"), head=1)])
    assert out.logits.dtype == mx.bfloat16
    site = Site(1, "mlp_out")
    metric = lambda lg: lg[0, -1, 7]  # noqa: E731
    _, ga = site_grads(native, toks, [site], metric, freeze=True)
    _, gb = site_grads(up, toks, [site], metric, freeze=True)
    assert float(mx.abs(ga[site].astype(mx.float32) - gb[site]).max() / mx.abs(gb[site]).max()) < 2e-2


def test_graph_of_a_bf16_computing_model_is_refused_in_one_line(dirs):
    """Graphs are float32 arithmetic: a dtype=None bf16 model gets one line naming the fix
    (before: numpy's raw 'bfloat16 is not a valid PEP 3118 buffer format')."""
    from attribution import build_graph
    from attribution.replacement.errors import AttributionMethodError
    from attribution.testing_dicts import random_transcoders

    native = load_model(dirs["llama", "bf16"], dtype=None)
    with pytest.raises(AttributionMethodError) as info:
        build_graph(native, random_transcoders(native, 16), TOKENS)
    msg = str(info.value)
    assert "\n" not in msg and "bfloat16" in msg and "load_model(path)" in msg


# --------------------------------------------------------- d=768 smoke tests (< 30 s)
@pytest.fixture(scope="module")
def d768(tmp_path_factory):
    root = tmp_path_factory.mktemp("d768")
    return make_tiny_model("llama", root / "fp32", seed=3, **D768), root


def test_smoke_d768_bf16_graph(d768):
    src, root = d768
    model = load_model(convert_tiny_model(src, root / "bf16", dtype="bfloat16"))
    assert model.d_model == 768 and model.load_info.stored_dtypes == ("bfloat16",)
    graph = build_graph(model, random_transcoders(model, 64, seed=1), TOKENS)
    assert graph.n_edges > 0 and np.isfinite(graph.adjacency.data).all()


def test_smoke_d768_4bit_graph(d768):
    src, root = d768
    q = convert_tiny_model(src, root / "q4", bits=4, group_size=64)
    model, ref = load_model(q), load_model(_dequantized_dir(q, src, root / "deq4", 64, 4))
    dicts = random_transcoders(ref, 64, seed=1)
    assert _graph_gap(build_graph(model, dicts, TOKENS), build_graph(ref, dicts, TOKENS)) < QUANT_TOL


def test_smoke_d768_transformers_directory(tmp_path):
    path = make_tiny_hf_model("llama", tmp_path / "hf", seed=3, shards=2, dtype="bfloat16",
                              legacy=True, **D768)
    model = load_model(path)
    assert model.load_info.writer == "transformers" and model.d_model == 768
    graph = build_graph(model, random_transcoders(model, 64, seed=1), TOKENS)
    assert graph.n_edges > 0 and np.isfinite(graph.adjacency.data).all()


def test_dequantize_at_load_equals_the_dequantized_reference(dirs):
    """load_model(dequantize=True): float32 layers holding mx.dequantize of the packed
    weights (embedding and tied head included): logits equal the packed model's within
    the quantized tolerance, and nothing quantized is left."""
    import mlx.nn as nn

    for arch in ("llama", "gpt2"):
        packed = load_model(dirs[arch, "q4"])
        dense = load_model(dirs[arch, "q4"], dequantize=True)
        assert packed.quantized and not dense.quantized
        assert dense.load_info.quantization == packed.load_info.quantization
        assert not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
                       for _, m in dense.module.named_modules())
        toks = mx.array([TOKENS])
        a, b = packed(toks), dense(toks)
        assert b.dtype == mx.float32
        assert float(mx.abs(a - b).max() / mx.abs(a).max()) < QUANT_TOL, arch
