"""`make test` smoke tests of real-scale checkpoint forms: d=768, 2 layers, budgeted exact graphs.

One test per form a real model or dictionary set arrives in; each builds an exact
attribution graph with a feature budget (``GraphConfig.large_model(max_feature_nodes=…)``,
re-ranked by influence every batch) on a 20-token prompt and compares it with a graph
built from an independent rendering of the same numbers:

  1. bf16 mlx-lm directory (Gemma-2 shaped): vs a float32 directory written here from the
     bf16 safetensors upcast with ``astype`` (no ``load_model`` cast involved);
  2. 4-bit mlx-lm directory (Llama-3.2 shaped, group 64): vs a float32 directory written
     here from the packed files with ``mx.dequantize`` (quantization entry removed);
  3. Hugging Face transformers directory (GPT-2, Conv1D layout, ``transformer.`` names,
     legacy buffers, tied head, 2 shards): vs the mlx-lm directory of the same seed;
  4. circuit-tracer transcoder set (``config.yaml`` with feature_input/output hooks, one
     ``hf://`` entry per layer, W_enc stored [d_tc, d_in]) written by hand with
     ``safetensors.numpy``, loaded with ``sae.import_circuit_tracer``: vs the in-memory
     transcoders the files were written from; an unknown hook is refused in one line.

Tolerances (max |ΔA| / max |A| over the graph's edges, identical node keys required):
bf16, transformers and circuit-tracer 1e-6 (the same float32 values, so only
kernel-order round-off could differ; measured 0, 0 and 0); 4-bit 1e-5 as in
``test_quantized.py`` (the quantized matmul kernels' float32 round-off; measured ~2e-6).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import attribution  # noqa: F401  (BLAS preload before mlx)
import mlx.core as mx
import numpy as np
import pytest

from attribution import Site, build_graph, load_model
from attribution.attribute import GraphConfig
from attribution.attribute.synthetic import (
    make_config_model,
    published_config,
    random_prompt,
    sparse_transcoders,
)
from attribution.tiny import make_tiny_hf_model, make_tiny_model

VOCAB = 512
N_TOKENS = 20
BUDGET = 192
WIDTH = 4096
L0 = 40
EXACT_TOL = 1e-6
QUANT_TOL = 1e-5


def _config() -> GraphConfig:
    # circuit-tracer's budget at a smoke size: 3 chunks of 64, influence recomputed per chunk.
    return GraphConfig.large_model(max_feature_nodes=BUDGET, update_interval=1)


def _prompt() -> list[int]:
    return random_prompt(VOCAB, N_TOKENS, seed=1)


def _dicts(model, seed=0):
    return sparse_transcoders(model, WIDTH, L0, random_prompt(VOCAB, 48, seed=2), seed=seed)


def _graph_gap(got, want) -> float:
    """max |ΔA| / max |A| of two budgeted graphs over the same nodes."""
    assert got.keys == want.keys  # same kept features, same targets
    assert int(want.type_mask("feature").sum()) == BUDGET
    assert want.n_edges > 1000 and np.isfinite(want.adjacency.data).all()
    return float(abs(got.adjacency - want.adjacency).max() / abs(want.adjacency).max())


def _rewrite_weights(src: Path, out: Path, weights: dict, drop_config=()) -> Path:
    """A copy of mlx-lm directory ``src`` holding ``weights`` (one file), config keys dropped."""
    shutil.copytree(src, out)
    for f in out.glob("model*.safetensors*"):
        f.unlink()
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": dict.fromkeys(weights, "model.safetensors")}))
    cfg = json.loads((out / "config.json").read_text())
    for k in drop_config:
        cfg.pop(k, None)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def _stored(path: Path) -> dict:
    out = {}
    for f in sorted(path.glob("model*.safetensors")):
        out.update(mx.load(str(f)))
    return out


# ------------------------------------------------------------------------------ bf16
def test_bf16_directory_graph_equals_upcast_float32_directory(tmp_path):
    cfg = published_config("gemma-2-2b", hidden_size=768, num_hidden_layers=2,
                           intermediate_size=2048, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=192, query_pre_attn_scalar=192, vocab_size=VOCAB,
                           max_position_embeddings=64)
    bf = make_config_model(cfg, tmp_path / "bf16", dtype="bfloat16", seed=11)
    w = _stored(bf)
    assert {v.dtype for v in w.values()} == {mx.bfloat16}
    up = _rewrite_weights(bf, tmp_path / "up", {k: v.astype(mx.float32) for k, v in w.items()})
    model, ref = load_model(bf), load_model(up)
    assert model.d_model == 768 and model.n_layers == 2
    assert model.dtype == mx.float32 and model.load_info.dtype == "float32"
    assert model.load_info.stored_dtypes == ("bfloat16",)
    assert ref.load_info.stored_dtypes == ("float32",)
    dicts = _dicts(ref)
    toks = _prompt()
    gap = _graph_gap(build_graph(model, dicts, toks, config=_config()),
                     build_graph(ref, dicts, toks, config=_config()))
    assert gap <= EXACT_TOL


# ----------------------------------------------------------------------------- 4-bit
def test_4bit_directory_graph_equals_dequantized_float32_directory(tmp_path):
    cfg = published_config("llama-3.2-1b", hidden_size=768, num_hidden_layers=2,
                           intermediate_size=2048, num_attention_heads=12, num_key_value_heads=4,
                           head_dim=64, vocab_size=VOCAB, max_position_embeddings=64)
    q = make_config_model(cfg, tmp_path / "q4", bits=4, group_size=64, seed=12)
    w = _stored(q)
    packed = {k[: -len(".weight")] for k, v in w.items() if v.dtype == mx.uint32}
    assert "model.embed_tokens" in packed and "model.layers.1.mlp.down_proj" in packed
    dense = {}
    for k, v in w.items():
        base = k.rsplit(".", 1)[0]
        if base in packed and k.endswith((".scales", ".biases")):
            continue
        if v.dtype == mx.uint32:
            v = mx.dequantize(v, w[base + ".scales"], w[base + ".biases"], group_size=64, bits=4)
        dense[k] = v.astype(mx.float32)
    deq = _rewrite_weights(q, tmp_path / "deq", dense,
                           drop_config=("quantization", "quantization_config"))
    model, ref = load_model(q), load_model(deq)
    assert model.quantized and model.load_info.quantization["bits"] == 4
    assert not ref.quantized and model.d_model == 768 and model.dtype == mx.float32
    dicts = _dicts(ref, seed=1)
    toks = _prompt()
    gap = _graph_gap(build_graph(model, dicts, toks, config=_config()),
                     build_graph(ref, dicts, toks, config=_config()))
    assert gap <= QUANT_TOL


# ---------------------------------------------------------------------- transformers
def test_transformers_directory_graph_equals_mlx_lm_directory(tmp_path):
    words = [f"w{i}" for i in range(4, VOCAB)]
    d768 = {"n_embd": 768, "n_head": 12}
    hf_dir = make_tiny_hf_model("gpt2", tmp_path / "hf", seed=13, vocab_words=words, shards=2,
                                legacy=True, **d768)
    mlx_dir = make_tiny_model("gpt2", tmp_path / "mlx", seed=13, vocab_words=words, **d768)
    names = set(_stored(hf_dir))
    assert "transformer.h.0.attn.c_attn.weight" in names and "lm_head.weight" in names
    model, ref = load_model(hf_dir), load_model(mlx_dir)
    assert model.load_info.writer == "transformers" and ref.load_info.writer == "mlx-lm"
    assert model.load_info.weight_renames  # transformer. prefix, buffers, tied head
    assert model.d_model == 768 and model.n_layers == 2 and model.vocab_size == VOCAB
    dicts = _dicts(ref, seed=2)
    toks = _prompt()
    gap = _graph_gap(build_graph(model, dicts, toks, config=_config()),
                     build_graph(ref, dicts, toks, config=_config()))
    assert gap <= EXACT_TOL


# -------------------------------------------------------------------- circuit-tracer
_REPO = "hf://mntss/transcoder-Llama-3.2-1B"


def _ct_yaml(in_hook: str, out_hook: str, n_layers: int) -> str:
    lines = ['model_name: "meta-llama/Llama-3.2-1B"', "model_kind: transcoder_set",
             f'feature_input_hook: "{in_hook}"', f'feature_output_hook: "{out_hook}"',
             'scan: "llama-3-131k-relu"', "transcoders:"]
    lines += [f'  - "{_REPO}/layer_{i}.safetensors"' for i in range(n_layers)]
    return "\n".join(lines) + "\n"


def test_circuit_tracer_set_graph_equals_in_memory_transcoders(tmp_path):
    from safetensors.numpy import save_file

    from sae import import_circuit_tracer
    from sae.io.hooks import UnsupportedHookError

    cfg = published_config("llama-3.2-1b", hidden_size=768, num_hidden_layers=2,
                           intermediate_size=2048, num_attention_heads=12, num_key_value_heads=4,
                           head_dim=64, vocab_size=VOCAB, max_position_embeddings=64)
    model = load_model(make_config_model(cfg, tmp_path / "m", seed=14))
    dicts = _dicts(model, seed=3)
    ct = tmp_path / "ct"
    ct.mkdir()
    for t in dicts:  # circuit-tracer's layout: W_enc [d_tc, d_in], W_dec [d_tc, d_out]
        save_file({"W_enc": np.ascontiguousarray(np.array(t.W_enc).T), "b_enc": np.array(t.b_enc),
                   "W_dec": np.array(t.W_dec), "b_dec": np.array(t.b_dec)},
                  str(ct / f"layer_{t.in_site.layer}.safetensors"))
    (ct / "config.yaml").write_text(_ct_yaml("mlp.hook_in", "mlp.hook_out", len(dicts)))
    loaded = import_circuit_tracer(ct, model=model)
    assert sorted(loaded) == [0, 1]
    for layer, d in loaded.items():
        assert (d.in_site, d.out_site) == (Site(layer, "mlp_in"), Site(layer, "mlp_out"))
        assert d.W_enc.shape == (768, WIDTH) and d.W_dec.shape == (WIDTH, 768)
    toks = _prompt()
    got = build_graph(model, list(loaded.values()), toks, config=_config())
    want = build_graph(model, dicts, toks, config=_config())
    assert _graph_gap(got, want) <= EXACT_TOL
    # A hook with no site here (circuit-tracer also names MLP-internal hooks) is refused.
    (ct / "config.yaml").write_text(_ct_yaml("mlp.hook_pre", "mlp.hook_out", len(dicts)))
    with pytest.raises(UnsupportedHookError) as info:
        import_circuit_tracer(ct, model=model)
    msg = str(info.value)
    assert "\n" not in msg and "mlp.hook_pre" in msg and "supported:" in msg
    assert "config.yaml" in msg
