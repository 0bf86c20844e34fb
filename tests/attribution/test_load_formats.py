"""``load_model`` on every kind of directory: transformers checkpoints and mlx-lm ones.

The references never go through ``load_model``:
  - ``data/hf_reference/<arch>``: checkpoints written by transformers' own
    ``save_pretrained`` (transformers 5.24 + torch, bf16, llama sharded) with
    transformers' float32 logits (``make.py`` there regenerates them);
  - ``make_tiny_hf_model`` directories (transformers config classes, weights
    renamed as transformers names them) against ``make_tiny_model``'s
    directory of the same seed, loaded by mlx-lm's own loader: the forwards
    must agree to float32 round-off;
  - bf16/fp16/quantized mlx-lm directories (``convert_tiny_model``) against
    mlx-lm's loading of the same files, upcast / dequantised by hand.
The rope settings are moved off mlx-lm's defaults (theta 12345, Gemma-3 local
base 777), so a loader that ignored transformers >= 5's ``rope_parameters``
would fail these comparisons.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import attribution  # noqa: F401  (BLAS preload before mlx)
from attribution import (
    AttributionError,
    ContextLengthError,
    NotAModelError,
    UnsupportedArchitectureError,
    WeightsMismatchError,
    load_model,
)
from attribution.model import hf
from attribution.tiny import (
    REFERENCE_TOKENS,
    TINY_ARCHS,
    convert_tiny_model,
    make_tiny_hf_model,
    make_tiny_model,
)

REFERENCE_DIR = Path(__file__).parent / "data" / "hf_reference"
TOKENS = mx.array([list(REFERENCE_TOKENS)])
# Largest |ours - transformers| / max|transformers| measured on the references: 6.4e-7.
REL_TOL_TRANSFORMERS = 1e-5


def _rope_overrides(arch: str) -> dict:
    if arch == "gpt2":
        return {}
    if arch == "gemma3":
        return {"rope_theta": 12345.0, "rope_local_base_freq": 777.0}
    return {"rope_theta": 12345.0}


def _mlx_lm_logits(path, cast=None) -> mx.array:
    """Logits from mlx-lm's own loader; ``cast``: dtype to put float parameters in first."""
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.utils import load_model as mlx_load

    module, _ = mlx_load(Path(path))
    if cast is not None:
        module.update(tree_unflatten([(k, v.astype(cast)) for k, v in tree_flatten(module.parameters())
                                      if mx.issubdtype(v.dtype, mx.floating)]))
    return module(TOKENS)


def _max_rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# ------------------------------------------------------- real transformers output
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_transformers_checkpoint_matches_transformers_logits(arch):
    path = REFERENCE_DIR / arch
    ref = np.load(path / "reference_logits.npy")
    model = load_model(path)
    got = np.array(model(TOKENS))
    assert got.shape == ref.shape
    assert _max_rel(got, ref) < REL_TOL_TRANSFORMERS
    info = model.load_info
    assert info.writer == "transformers" and info.stored_dtypes == ("bfloat16",)
    assert info.dtype == "float32" and model.dtype == mx.float32
    # what the conversion had to do for this checkpoint (transformers 5 layout)
    expect = {"gpt2": {"n_ctx"}, "gemma3": {"rope_theta", "rope_local_base_freq",
                                            "sliding_window_pattern"},
              "phi3": {"rope_theta", "partial_rotary_factor"}}.get(arch, {"rope_theta"})
    assert set(info.config_fixes) == expect
    if arch == "gpt2":
        assert info.weight_renames == ("stripped 'transformer.' from 28 names",)
        assert "n_ctx" not in json.loads((path / "config.json").read_text())
    if arch == "llama":
        assert len(list(path.glob("model-*-of-*.safetensors"))) > 1  # a sharded checkpoint


def test_transformers_gemma3_config_keeps_a_stale_pattern_key():
    """transformers 5 writes _sliding_window_pattern=6 next to layer_types [sliding, full]:
    layer_types decides (p=2), or the local/global layers would be swapped."""
    cfg = json.loads((REFERENCE_DIR / "gemma3" / "config.json").read_text())
    assert cfg["_sliding_window_pattern"] == 6 and cfg["layer_types"] == ["sliding_attention",
                                                                         "full_attention"]
    assert hf.config_overrides(cfg)["sliding_window_pattern"] == 2


@pytest.mark.slow
def test_transformers_written_now_matches(tmp_path):
    """With torch installed: a fresh transformers checkpoint of every architecture (float32)."""
    pytest.importorskip("torch")
    from attribution.tiny import make_transformers_reference

    for i, arch in enumerate(TINY_ARCHS):
        path = make_transformers_reference(arch, tmp_path / arch, seed=i + 20,
                                           **_rope_overrides(arch))
        got = np.array(load_model(path)(TOKENS))
        assert _max_rel(got, np.load(path / "reference_logits.npy")) < REL_TOL_TRANSFORMERS, arch


# ------------------------------------------------- transformers layout, built here
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_transformers_layout_equals_mlx_lm_directory(arch, tmp_path):
    seed = TINY_ARCHS.index(arch)
    legacy = arch in ("gpt2", "gemma2", "qwen2", "llama")  # buffers and tied heads to drop
    hf_dir = make_tiny_hf_model(arch, tmp_path / "hf", seed=seed, legacy=legacy,
                                **_rope_overrides(arch))
    mlx_dir = make_tiny_model(arch, tmp_path / "mlx", seed=seed, **_rope_overrides(arch))
    cfg = json.loads((hf_dir / "config.json").read_text())
    assert "rope_theta" not in cfg and "n_ctx" not in cfg  # transformers >= 5 layout
    names = set(mx.load(str(hf_dir / "model.safetensors")))
    if arch == "gpt2":
        assert "transformer.h.0.attn.c_attn.weight" in names and "lm_head.weight" in names
    model = load_model(hf_dir)
    ref = _mlx_lm_logits(mlx_dir)
    assert float(mx.abs(model(TOKENS) - ref).max()) <= 1e-6
    assert model.load_info.writer == "transformers"
    if legacy:
        assert model.load_info.weight_renames


def test_gpt2_conv1d_layout_is_transposed_on_load(tmp_path):
    hf_dir = make_tiny_hf_model("gpt2", tmp_path / "hf", seed=4)
    stored = mx.load(str(hf_dir / "model.safetensors"))["transformer.h.1.mlp.c_fc.weight"]
    model = load_model(hf_dir)
    assert stored.shape == (64, 256)  # Conv1D: [in, out]
    assert mx.array_equal(model.module.model.h[1].mlp.c_fc.weight, stored.T)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_flat_transformers4_config_needs_no_fixes(arch, tmp_path):
    hf_dir = make_tiny_hf_model(arch, tmp_path / "hf", seed=1, transformers_config=False,
                                **_rope_overrides(arch))
    mlx_dir = make_tiny_model(arch, tmp_path / "mlx", seed=1, **_rope_overrides(arch))
    model = load_model(hf_dir)
    assert model.load_info.config_fixes == ()
    assert float(mx.abs(model(TOKENS) - _mlx_lm_logits(mlx_dir)).max()) <= 1e-6


def test_sharded_bf16_transformers_directory(tmp_path):
    hf_dir = make_tiny_hf_model("qwen3", tmp_path / "hf", seed=2, shards=3, dtype="bfloat16")
    mlx_dir = make_tiny_model("qwen3", tmp_path / "mlx", seed=2)
    assert len(list(hf_dir.glob("model-0000?-of-00003.safetensors"))) == 3
    model = load_model(hf_dir)
    assert model.load_info.stored_dtypes == ("bfloat16",) and model.dtype == mx.float32
    # reference: the same weights rounded to bf16 by mlx-lm, then upcast
    bf = convert_tiny_model(mlx_dir, tmp_path / "bf", dtype="bfloat16")
    assert float(mx.abs(model(TOKENS) - _mlx_lm_logits(bf, cast=mx.float32)).max()) <= 1e-6


# ------------------------------------------------------------ mlx-lm directories
@pytest.fixture(scope="module")
def mlx_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    out = {}
    for arch in ("llama", "gpt2"):  # untied head + rotary; tied head + learned positions
        src = make_tiny_model(arch, root / arch / "fp32", seed=5)
        out[arch, "float32"] = src
        for dt in ("bfloat16", "float16"):
            out[arch, dt] = convert_tiny_model(src, root / arch / dt, dtype=dt)
        for bits in (4, 8):
            out[arch, f"q{bits}"] = convert_tiny_model(src, root / arch / f"q{bits}", bits=bits,
                                                       group_size=32)
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["float32", "bfloat16", "float16"])
def test_float_directories_load_as_float32(mlx_dirs, arch, kind):
    model = load_model(mlx_dirs[arch, kind])
    assert model.load_info.stored_dtypes == (kind,) and model.load_info.writer == "mlx-lm"
    assert model.load_info.dtype == "float32" and model.dtype == mx.float32
    ref = _mlx_lm_logits(mlx_dirs[arch, kind], cast=mx.float32)
    assert float(mx.abs(model(TOKENS) - ref).max()) <= 1e-6
    native = load_model(mlx_dirs[arch, kind], dtype=None)
    assert native.dtype == getattr(mx, kind) and native.load_info.dtype == kind
    assert mx.array_equal(native(TOKENS), _mlx_lm_logits(mlx_dirs[arch, kind]))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_directories_and_dense_weights(mlx_dirs, arch, bits):
    from mlx_lm.utils import load_model as mlx_load

    path = mlx_dirs[arch, f"q{bits}"]
    model = load_model(path)
    q = model.load_info.quantization
    assert (q["bits"], q["group_size"]) == (bits, 32) and model.dtype == mx.float32
    assert model.quantized and not load_model(mlx_dirs[arch, "float32"]).quantized
    raw, _ = mlx_load(path)  # mlx-lm's own module: the same packed weights
    inner = raw.model
    deq = lambda m: mx.dequantize(m.weight, m.scales, m.biases, 32, bits)  # noqa: E731
    emb = inner.embed_tokens if arch == "llama" else inner.wte
    assert mx.array_equal(model.W_E, deq(emb))
    head = raw.lm_head if arch == "llama" else emb
    assert mx.array_equal(model.W_U, deq(head).T) and model.W_U.shape == (64, model.vocab_size)
    o = inner.layers[1].self_attn.o_proj if arch == "llama" else inner.h[1].attn.c_proj
    assert mx.array_equal(model.W_O(1), deq(o).T.reshape(4, 16, 64))
    if arch == "gpt2":
        assert mx.array_equal(model.W_pos, deq(inner.wpe))
    assert float(mx.abs(model(TOKENS) - raw(TOKENS)).max()) <= 1e-5


# ------------------------------------------------------------------ config facts
def test_config_overrides_rules():
    llama3 = {"model_type": "llama", "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    out = hf.config_overrides(llama3, ["model.embed_tokens.weight", "lm_head.weight"])
    assert out == {"rope_theta": 500000.0, "tie_word_embeddings": False, "rope_scaling": {
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}}
    phi = {"model_type": "phi3", "tie_word_embeddings": False, "rope_parameters": {
        "rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0], "long_factor": [2.0],
        "partial_rotary_factor": 0.5}}
    assert hf.config_overrides(phi) == {"rope_theta": 1e4, "partial_rotary_factor": 0.5,
                                        "rope_scaling": {"type": "longrope", "short_factor": [1.0],
                                                         "long_factor": [2.0]}}
    g3 = {"model_type": "gemma3_text", "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
          "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0,
                                                 "rope_theta": 1e6},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    assert hf.config_overrides(g3) == {"rope_theta": 1e6, "rope_local_base_freq": 1e4,
                                       "rope_scaling": {"rope_type": "linear", "factor": 8.0},
                                       "sliding_window_pattern": 6}
    tied = {"model_type": "qwen2"}
    assert hf.config_overrides(tied, ["model.embed_tokens.weight"]) == {"tie_word_embeddings": True}
    already = {"model_type": "llama", "rope_theta": 1.0, "rope_parameters": {"rope_theta": 2.0}}
    assert hf.config_overrides(already) == {}  # keys the config has are never replaced


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_mlx_lm_configs_pass_unchanged(arch, tmp_path):
    model = load_model(make_tiny_model(arch, tmp_path / arch))
    assert model.load_info.config_fixes == () and model.load_info.weight_renames == ()


def test_sliding_window_that_mlx_lm_ignores_caps_the_context(tmp_path):
    assert hf.context_limit({"model_type": "mistral", "max_position_embeddings": 32768,
                             "sliding_window": 4096}) == 4096
    assert hf.context_limit({"model_type": "qwen2", "max_position_embeddings": 64,
                             "sliding_window": 4, "use_sliding_window": False}) == 64
    assert hf.context_limit({"model_type": "gemma3_text", "max_position_embeddings": 64,
                             "sliding_window": 4}) == 64  # mlx-lm implements Gemma 3's window
    model = load_model(make_tiny_hf_model("mistral", tmp_path / "m", sliding_window=6))
    assert model.max_context == 6
    with pytest.raises(ContextLengthError):
        model(TOKENS)


# ----------------------------------------------------------------------- errors
def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_and_stray_shards(tmp_path):
    path = make_tiny_hf_model("llama", tmp_path / "hf", shards=2)
    shard = path / "model-00002-of-00002.safetensors"
    moved = shard.rename(tmp_path / shard.name)
    with pytest.raises(NotAModelError, match="lists 1 shard") as e:
        load_model(path)
    assert "model-00002-of-00002.safetensors" in _one_line(e)
    moved.rename(shard)
    shutil.copy(shard, path / "model-extra.safetensors")
    with pytest.raises(NotAModelError, match="does not list") as e:
        load_model(path)
    assert "model-extra.safetensors" in _one_line(e)


def test_pytorch_pickles_are_refused(tmp_path):
    path = make_tiny_hf_model("llama", tmp_path / "hf")
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(NotAModelError, match="never unpickled") as e:
        load_model(path)
    assert "safe_serialization=True" in _one_line(e)


def test_quantized_weights_without_quantization_config(mlx_dirs, tmp_path):
    path = Path(shutil.copytree(mlx_dirs["llama", "q4"], tmp_path / "q4"))
    cfg = json.loads((path / "config.json").read_text())
    del cfg["quantization"], cfg["quantization_config"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsMismatchError, match="no 'quantization' entry") as e:
        load_model(path)
    _one_line(e)


def test_adapter_weights_are_named(tmp_path):
    path = make_tiny_model("llama", tmp_path / "m")
    w = mx.load(str(path / "model.safetensors"))
    mx.save_safetensors(str(path / "model.safetensors"),
                        {f"base_model.model.{k}": v for k, v in w.items()})
    with pytest.raises(WeightsMismatchError, match="adapter") as e:
        load_model(path)
    _one_line(e)


def test_gpt2_config_without_positions_names_the_keys(tmp_path):
    path = make_tiny_hf_model("gpt2", tmp_path / "hf")
    cfg = json.loads((path / "config.json").read_text())
    del cfg["n_positions"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NotAModelError, match="lacks 'n_ctx' and 'n_positions'") as e:
        load_model(path)
    _one_line(e)


def test_settings_mlx_lm_would_compute_differently_are_refused(tmp_path):
    path = make_tiny_hf_model("llama", tmp_path / "hf")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "hidden_act": "gelu"}))
    with pytest.raises(UnsupportedArchitectureError, match="hidden_act='gelu'") as e:
        load_model(path)
    _one_line(e)
    with pytest.raises(UnsupportedArchitectureError, match="one global layer every p layers"):
        hf.config_overrides({"model_type": "gemma3_text", "layer_types": [
            "sliding_attention", "full_attention", "full_attention"]})
    with pytest.raises(UnsupportedArchitectureError, match="scale_attn_by_inverse_layer_idx"):
        hf.check_config({"model_type": "gpt2", "scale_attn_by_inverse_layer_idx": True})


def test_bad_dtype_argument(tmp_path):
    path = make_tiny_model("llama", tmp_path / "m")
    with pytest.raises(AttributionError, match="not a float dtype"):
        load_model(path, dtype="int8")
    assert load_model(path, dtype=mx.bfloat16).dtype == mx.bfloat16
