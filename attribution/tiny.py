"""Tiny random models, saved as real model directories of every kind ``load_model`` reads.

Used by the tests and benchmarks so that every code path loads a model the
way a real checkpoint is loaded (config.json + safetensors + tokenizer).

Algorithm (``make_tiny_model``, an mlx-lm directory):
  1. Build the word list (``vocab_words`` or a default list) and a word-level
     tokenizer over special tokens + words; the vocabulary size follows.
  2. Start from the architecture's base config dict (d_model 64, 2 layers,
     4 heads, 2 kv heads where the architecture supports GQA), set vocab size
     and bos/eos ids, apply ``overrides``.
  3. Instantiate the model through ``mlx_lm.utils._get_classes(config)``
     after seeding MLX's generator.
  4. Perturb every normalisation weight and every bias with seeded noise, so
     that tests see non-trivial norm scales (fresh norms are all ones/zeros).
  5. Save with ``mlx_lm.utils.save_model`` / ``save_config`` and the tokenizer
     with ``save_pretrained``; return the directory.

Algorithm (``convert_tiny_model``, what ``mlx_lm.convert`` does to a directory,
without its printing): load with mlx-lm's loader; cast floating parameters to
``dtype`` (bf16/fp16 directories); quantize every layer with
``to_quantized`` whose input width the group size divides (``nn.quantize``,
and the model's ``quant_predicate``), recording ``quantization`` in the
config; save weights, config and the source's tokenizer files.

Algorithm (``make_tiny_hf_model``, a Hugging Face transformers directory):
  1. Steps 1-4 above with the same seed, so the weights equal
     ``make_tiny_model``'s (tests compare the two directories' logits).
  2. Config: the same settings through transformers' own config class
     (``AutoConfig.for_model``), written by ``save_pretrained``, so it has
     that version's layout (transformers >= 5: ``rope_parameters``,
     ``layer_types``, no GPT-2 ``n_ctx``); ``transformers_config=False``
     writes the flat 4.x layout (top-level ``rope_theta``).
  3. Weights under transformers' names, the inverse of mlx-lm's ``sanitize``:
     GPT-2 gets the ``transformer.`` prefix of ``GPT2LMHeadModel`` and its
     Conv1D matrices stored [in, out] (transposed from nn.Linear's
     [out, in]); the other families already share transformers' names.
     ``legacy=True`` adds what older transformers versions saved: GPT-2's
     ``attn.bias``/``attn.masked_bias`` buffers and tied ``lm_head.weight``,
     rotary ``inv_freq`` buffers, a tied ``lm_head.weight`` copy.
  4. Save as transformers does: ``{"format": "pt"}`` metadata, one
     model.safetensors or ``shards`` files model-0000k-of-0000n.safetensors
     with model.safetensors.index.json; floats cast to ``dtype``.
"""

from __future__ import annotations

import copy
from pathlib import Path

TINY_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2")
# Also buildable, smoke-tested only: parallel residual (gpt_neox) and mixture of experts.
EXTRA_ARCHS = ("gpt_neox", "mixtral")

_COMMON = {
    "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 64, "rope_theta": 10000.0,
}

_BASE: dict[str, dict] = {
    "llama": {**_COMMON, "model_type": "llama", "tie_word_embeddings": False,
              "architectures": ["LlamaForCausalLM"]},
    "mistral": {**_COMMON, "model_type": "mistral", "tie_word_embeddings": False,
                "architectures": ["MistralForCausalLM"], "num_hidden_layers": 3},
    "qwen2": {**_COMMON, "model_type": "qwen2", "tie_word_embeddings": True,
              "architectures": ["Qwen2ForCausalLM"]},
    "qwen3": {**_COMMON, "model_type": "qwen3", "tie_word_embeddings": False, "head_dim": 16,
              "architectures": ["Qwen3ForCausalLM"]},
    "gemma2": {**_COMMON, "model_type": "gemma2", "head_dim": 16, "query_pre_attn_scalar": 16,
               "attn_logit_softcapping": 10.0, "final_logit_softcapping": 5.0,
               "rms_norm_eps": 1e-6, "architectures": ["Gemma2ForCausalLM"]},
    "gemma3": {**_COMMON, "model_type": "gemma3_text", "head_dim": 16, "query_pre_attn_scalar": 16,
               "sliding_window": 4, "sliding_window_pattern": 2, "rope_local_base_freq": 10000.0,
               "rms_norm_eps": 1e-6, "architectures": ["Gemma3ForCausalLM"]},
    "phi3": {**_COMMON, "model_type": "phi3", "tie_word_embeddings": False,
             "original_max_position_embeddings": 64, "architectures": ["Phi3ForCausalLM"]},
    "gpt_neox": {"model_type": "gpt_neox", "max_position_embeddings": 64, "hidden_size": 64,
                 "num_attention_heads": 4, "num_hidden_layers": 2, "layer_norm_eps": 1e-5,
                 "rotary_emb_base": 10000, "rotary_pct": 0.25, "use_parallel_residual": True,
                 "architectures": ["GPTNeoXForCausalLM"]},
    "mixtral": {**_COMMON, "model_type": "mixtral", "num_local_experts": 4,
                "num_experts_per_tok": 2, "architectures": ["MixtralForCausalLM"]},
    "gpt2": {"model_type": "gpt2", "n_ctx": 64, "n_embd": 64, "n_head": 4, "n_layer": 2,
             "n_positions": 64, "layer_norm_epsilon": 1e-5, "architectures": ["GPT2LMHeadModel"]},
}

DEFAULT_WORDS = tuple(
    "the a cat dog sat on mat and ran to park Mary John gave ball bird tree red blue green "
    "one two three four five six seven eight nine ten is was he she it they went home "
    "book door house car river sky sun moon star big small old new fast slow up down "
    "left right yes no . ,".split()
)


def tiny_config(arch: str, vocab_size: int, **overrides) -> dict:
    """The config dict ``make_tiny_model`` saves for ``arch``."""
    if arch not in _BASE:
        raise ValueError(
            f"unknown tiny arch {arch!r}; choose one of {', '.join(TINY_ARCHS + EXTRA_ARCHS)}"
        )
    cfg = copy.deepcopy(_BASE[arch])
    cfg.update(vocab_size=vocab_size, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    cfg.update(overrides)
    return cfg


def _perturb_norms_and_biases(model, seed: int) -> None:
    """Seeded noise on 1-D parameters (norm weights, biases) so they are non-trivial."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    keys = mx.random.split(mx.random.key(seed + 1), len(tree_flatten(model.parameters())))
    new = []
    for i, (name, p) in enumerate(tree_flatten(model.parameters())):
        if p.ndim == 1:
            noise = mx.random.normal(p.shape, key=keys[i]) * 0.2
            new.append((name, p + noise))
    model.update(tree_unflatten(new))


def _build(arch: str, out: Path, seed: int, vocab_words, overrides: dict):
    """Steps 1-4 of ``make_tiny_model``: (evaluated mlx-lm module, config dict); writes the tokenizer."""
    import mlx.core as mx
    from mlx_lm.utils import _get_classes

    from attribution.tokenizer import save_word_level_tokenizer

    tiny_config(arch, vocab_size=0)  # unknown arch -> ValueError before writing anything
    out.mkdir(parents=True, exist_ok=True)
    words = list(vocab_words) if vocab_words is not None else list(DEFAULT_WORDS)
    tok = save_word_level_tokenizer(words, out)
    n_vocab = len(tok.get_vocab())
    config = tiny_config(arch, vocab_size=n_vocab, **overrides)
    if config["vocab_size"] < n_vocab:
        raise ValueError(
            f"vocab_size={config['vocab_size']} is smaller than the tokenizer's {n_vocab} ids; "
            "drop the override or pass fewer vocab_words"
        )
    model_cls, args_cls = _get_classes(config)
    mx.random.seed(seed)
    model = model_cls(args_cls.from_dict(config))
    _perturb_norms_and_biases(model, seed)
    mx.eval(model.parameters())
    return model, config


def make_tiny_model(arch: str, out_dir: str | Path, seed: int = 0,
                    vocab_words: list[str] | None = None, **overrides) -> Path:
    """Build, perturb and save a tiny random mlx-lm model of ``arch``; returns ``out_dir``."""
    from mlx_lm.utils import save_config, save_model

    out = Path(out_dir)
    model, config = _build(arch, out, seed, vocab_words, overrides)
    save_model(out, model)
    save_config(dict(config), out / "config.json")
    return out


_WEIGHT_FILES = ("config.json", "model.safetensors.index.json")


def convert_tiny_model(src_dir: str | Path, out_dir: str | Path, *, dtype: str | None = None,
                       bits: int | None = None, group_size: int = 64,
                       mode: str = "affine") -> Path:
    """``mlx_lm.convert`` of a local directory (module docstring): cast and/or quantize, save."""
    import shutil

    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map_with_path
    from mlx_lm.utils import load_model as mlx_load_model
    from mlx_lm.utils import save_config, save_model

    src, out = Path(src_dir), Path(out_dir)
    model, config = mlx_load_model(src, lazy=True)
    if dtype is not None:
        target = getattr(mx, dtype)
        keep = getattr(model, "cast_predicate", lambda _: True)
        model.update(tree_map_with_path(
            lambda k, v: v.astype(target) if keep(k) and mx.issubdtype(v.dtype, mx.floating) else v,
            model.parameters()))
    if bits is not None:
        own = getattr(model, "quant_predicate", None)

        def predicate(path, module):
            if not hasattr(module, "to_quantized") or module.weight.shape[-1] % group_size:
                return False
            return bool(own(path, module)) if own is not None else True

        nn.quantize(model, group_size, bits, mode=mode, class_predicate=predicate)
        config["quantization"] = {"group_size": group_size, "bits": bits, "mode": mode}
    mx.eval(model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model)
    save_config(dict(config), out / "config.json")
    for f in src.iterdir():  # tokenizer files
        if f.is_file() and not f.name.startswith("model") and f.name not in _WEIGHT_FILES:
            shutil.copy(f, out / f.name)
    return out


# GPT-2 matrices transformers keeps in Conv1D layout [in, out] (mlx-lm's sanitize transposes them).
_GPT2_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def _hf_config(config: dict, transformers_config: bool, dtype: str | None) -> dict:
    """The config dict transformers would write for the mlx-lm tiny ``config`` (module docstring)."""
    cfg = {k: v for k, v in config.items() if k != "n_ctx"}
    if dtype is not None:
        cfg["torch_dtype"] = dtype
    if not transformers_config:
        return cfg
    from transformers import AutoConfig

    theta = cfg.pop("rope_theta", None)
    if cfg["model_type"] == "gemma3_text":
        local = cfg.pop("rope_local_base_freq", 10000.0)
        p = cfg.pop("sliding_window_pattern", 6)
        n = cfg["num_hidden_layers"]
        cfg["layer_types"] = ["full_attention" if i % p == p - 1 else "sliding_attention"
                              for i in range(n)]
        cfg["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": theta},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": local}}
    elif theta is not None:
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
        if cfg["model_type"] == "phi3":
            cfg["rope_parameters"]["partial_rotary_factor"] = cfg.pop("partial_rotary_factor", 1.0)
    if "query_pre_attn_scalar" in cfg:  # transformers validates it as an int
        cfg["query_pre_attn_scalar"] = int(cfg["query_pre_attn_scalar"])
    if dtype is not None:
        cfg["dtype"] = cfg.pop("torch_dtype")
    model_type = cfg.pop("model_type")
    return AutoConfig.for_model(model_type, **cfg).to_dict()


def _hf_tensors(model, config: dict, legacy: bool) -> dict:
    """mlx-lm parameters under transformers' names and layouts (module docstring, step 3)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    weights = dict(tree_flatten(model.parameters()))
    if config["model_type"] == "gpt2":
        out = {}
        for k, v in weights.items():
            out["transformer." + k.removeprefix("model.")] = v.T if k.endswith(_GPT2_CONV1D) else v
        if legacy:
            n = config["n_positions"]
            mask = mx.tril(mx.ones((n, n)))[None, None]
            for i in range(config["n_layer"]):
                out[f"transformer.h.{i}.attn.bias"] = mask
                out[f"transformer.h.{i}.attn.masked_bias"] = mx.array(-1e4)
            out["lm_head.weight"] = out["transformer.wte.weight"]
        return out
    out = dict(weights)
    if legacy:
        layers = config["num_hidden_layers"]
        dh = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        inv = 1.0 / (config.get("rope_theta", 10000.0) ** (mx.arange(0, dh, 2) / dh))
        for i in range(layers):
            out[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv
        if "lm_head.weight" not in out:
            out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def _save_hf_shards(tensors: dict, out: Path, shards: int) -> None:
    import json

    import mlx.core as mx

    names = sorted(tensors)
    shards = max(1, min(shards, len(names)))
    groups = [names[i * len(names) // shards:(i + 1) * len(names) // shards] for i in range(shards)]
    weight_map = {}
    for i, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        mx.save_safetensors(str(out / fname), {k: tensors[k] for k in group}, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, fname))
    if shards > 1:
        total = sum(int(tensors[k].nbytes) for k in names)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def make_tiny_hf_model(arch: str, out_dir: str | Path, seed: int = 0,
                       vocab_words: list[str] | None = None, *, shards: int = 1,
                       dtype: str | None = None, legacy: bool = False,
                       transformers_config: bool = True, **overrides) -> Path:
    """A transformers-format directory with ``make_tiny_model``'s weights (module docstring)."""
    import json

    import mlx.core as mx

    out = Path(out_dir)
    model, config = _build(arch, out, seed, vocab_words, overrides)
    tensors = _hf_tensors(model, config, legacy)
    if dtype is not None:
        target = getattr(mx, dtype)
        tensors = {k: v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v
                   for k, v in tensors.items()}
    mx.eval(tensors)
    _save_hf_shards(tensors, out, shards)
    cfg = _hf_config(config, transformers_config, dtype)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


REFERENCE_TOKENS = (2, 5, 9, 14, 7, 22, 31, 11)
"""Token ids (BOS first) on which ``make_transformers_reference`` records logits."""


def make_transformers_reference(arch: str, out_dir: str | Path, seed: int = 0, *,
                                dtype: str = "float32", max_shard_size: str | None = None,
                                tokens=REFERENCE_TOKENS, **overrides) -> Path:
    """A checkpoint saved by transformers itself, with transformers' logits (needs torch).

    1. ``make_tiny_hf_model`` writes the tokenizer and the config (through
       transformers' config class); its weights are discarded.
    2. transformers builds ``AutoModelForCausalLM`` from that config (eager
       attention, float32), seeded: matrices ~ N(0, 0.1), 1-D parameters
       (norms, biases) get N(0, 0.2) noise; with ``dtype="bfloat16"`` every
       parameter is rounded to bfloat16 first.
    3. ``save_pretrained(safe_serialization=True)`` (sharded below
       ``max_shard_size``) in ``dtype``, and ``reference_logits.npy``: the float32
       logits [1,T,V] of ``tokens`` from transformers' forward.
    """
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out_dir)
    make_tiny_hf_model(arch, out, seed, **overrides)
    for f in out.glob("model*.safetensors*"):
        f.unlink()
    config = AutoConfig.from_pretrained(str(out))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                             dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.2)
            else:
                p.normal_(0.0, 0.1)
            if dtype == "bfloat16":
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
        logits = model(torch.tensor([list(tokens)])).logits.float().numpy()
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(out), safe_serialization=True, **kw)
    np.save(out / "reference_logits.npy", logits)
    return out
