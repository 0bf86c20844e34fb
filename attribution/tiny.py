"""Tiny random mlx-lm models, saved as real model directories.

Used by the tests and benchmarks so that every code path loads a model the
way a real checkpoint is loaded (config.json + safetensors + tokenizer).

Algorithm (``make_tiny_model``):
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


def make_tiny_model(arch: str, out_dir: str | Path, seed: int = 0,
                    vocab_words: list[str] | None = None, **overrides) -> Path:
    """Build, perturb and save a tiny random mlx-lm model of ``arch``; returns ``out_dir``."""
    import mlx.core as mx
    from mlx_lm.utils import _get_classes, save_config, save_model

    from attribution.tokenizer import save_word_level_tokenizer

    tiny_config(arch, vocab_size=0)  # unknown arch -> ValueError before writing anything
    out = Path(out_dir)
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
    save_model(out, model)
    save_config(dict(config), out / "config.json")
    return out
