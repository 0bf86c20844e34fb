"""Hugging Face ``transformers`` checkpoints, loaded through mlx-lm's own model classes.

A transformers checkpoint (config.json + model.safetensors, or shards plus
model.safetensors.index.json) holds the tensors mlx-lm needs, and mlx-lm's
loader already runs each model class's ``sanitize`` (which drops rotary
buffers, transposes GPT-2's Conv1D weights, unties heads). What it does not
handle, and what this module fixes in memory (nothing is written):
  - transformers >= 5 configs nest rope settings under ``rope_parameters``
    (per layer type for Gemma 3) and describe Gemma 3's local/global layers by
    ``layer_types``; mlx-lm's llama/qwen2/gemma2/gemma3_text/phi3 classes read
    only ``rope_theta``/``rope_scaling``/``sliding_window_pattern`` and fall
    back to defaults silently (Llama 3 would run with theta 10000);
  - GPT-2 configs without ``n_ctx`` (transformers writes only n_positions),
    and ``GPT2LMHeadModel`` weight names (``transformer.h.0.attn.c_attn.weight``,
    a tied ``lm_head.weight``, the ``attn.bias``/``attn.masked_bias`` buffers
    of older versions);
  - a tied ``lm_head.weight`` saved by some exporters for Gemma 2 (or a
    tied Phi-3), which mlx-lm's class has no slot for.
Every step only fills keys a config lacks or renames names mlx-lm would
reject, so an mlx-lm directory passes through unchanged.

Algorithm (``config_overrides``):
  1. ``rope_parameters`` (flat): ``rope_theta`` from it; ``rope_scaling`` =
     the rest when its ``rope_type`` is not "default" (phi3's class wants
     the key ``type``); ``partial_rotary_factor`` from it.
     Nested (gemma3_text): the ``full_attention`` entry gives ``rope_theta``
     and ``rope_scaling``, the ``sliding_attention`` entry
     ``rope_local_base_freq``.
  2. gemma3_text without ``sliding_window_pattern``: p from ``layer_types``
     (mlx-lm makes layer i global iff i % p == p - 1), checked against every
     entry; ``_sliding_window_pattern`` when layer_types does not settle it.
  3. gpt2: ``n_ctx`` = ``n_positions``.
  4. ``tie_word_embeddings`` missing: tied iff the weights hold no
     ``lm_head.weight`` (mlx-lm's llama defaults to tied and would drop a
     real head).

Algorithm (``rename_weights``, run before the class's ``sanitize``):
  1. gpt2: strip the ``transformer.`` prefix; drop ``lm_head.weight`` (always
     tied to wte) and the ``attn.bias``/``attn.masked_bias`` mask buffers.
  2. gemma2, and phi3 when tied (no ``sanitize`` in mlx-lm to do it): drop
     ``lm_head.weight``.
  3. Every architecture: drop ``rotary_emb.inv_freq`` buffers.

``check_config`` refuses what mlx-lm's classes would compute differently
from transformers without any error (a hard-coded activation, GPT-2's
layer-index attention scaling). ``context_limit`` is the longest prompt for
which mlx-lm's class matches transformers: models whose transformers
attention uses a sliding window that mlx-lm's class does not implement
(gemma2, mistral/llama/qwen2/phi3 with ``sliding_window``) are exact only up
to the window.
"""

from __future__ import annotations

from collections.abc import Iterable

from attribution.errors import NotAModelError, UnsupportedArchitectureError

# mlx-lm model classes that hard-code an activation: (config key, accepted values).
_ACTIVATIONS = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "phi3"),
                    (("hidden_act", ("silu", "swish")),)),
    **dict.fromkeys(("gemma2", "gemma3_text"),
                    (("hidden_activation", ("gelu_pytorch_tanh", "gelu_new")),
                     ("hidden_act", ("gelu_pytorch_tanh", "gelu_new")))),
    "gpt2": (("activation_function", ("gelu_new", "gelu_pytorch_tanh")),),
}
# Families whose mlx-lm class attends to every earlier position even when the
# transformers model uses a sliding window (llama reads layer_types, so only
# configs without them are affected).
_NO_WINDOW = ("gemma2", "mistral", "llama", "qwen2", "phi3")
# Model types whose mlx-lm ModelArgs has a tie_word_embeddings field.
_TIE_FIELD = ("llama", "mistral", "qwen2", "qwen3", "phi3")


def _flat_rope(model_type: str, params: dict, config: dict) -> dict:
    out: dict = {}
    if "rope_theta" not in config and "rope_theta" in params:
        out["rope_theta"] = float(params["rope_theta"])
    kind = params.get("rope_type", params.get("type", "default"))
    if "rope_scaling" not in config and kind not in (None, "default"):
        scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
        if model_type == "phi3":  # phi3's ModelArgs requires the key "type"
            scaling["type"] = scaling.pop("rope_type", kind)
        out["rope_scaling"] = scaling
    if "partial_rotary_factor" not in config and "partial_rotary_factor" in params:
        out["partial_rotary_factor"] = float(params["partial_rotary_factor"])
    return out


def _sliding_pattern(config: dict, where: str) -> int | None:
    types = config.get("layer_types")
    if not types:
        p = config.get("_sliding_window_pattern")
        return int(p) if p else None
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    if not full:
        p = config.get("_sliding_window_pattern")
        if p and int(p) > len(types):
            raise UnsupportedArchitectureError(
                f"{where}: every layer in layer_types is sliding-window, which mlx-lm's "
                "gemma3_text cannot build (its pattern needs a global layer); use a checkpoint "
                "with at least one full_attention layer")
        return int(p) if p else None
    p = full[0] + 1
    expected = ["full_attention" if i % p == p - 1 else "sliding_attention" for i in range(len(types))]
    if list(types) != expected:
        raise UnsupportedArchitectureError(
            f"{where}: layer_types {list(types)} is not one global layer every p layers, the only "
            "layout mlx-lm's gemma3_text builds; this checkpoint cannot be loaded faithfully")
    return p


def config_overrides(config: dict, weight_names: Iterable[str] = (), where: str = "config.json") -> dict:
    """Keys to add to a transformers ``config`` so mlx-lm reads it as transformers does.

    ``weight_names``: the checkpoint's tensor names (decide a missing
    ``tie_word_embeddings``). Returns only keys the config lacks (module
    docstring); ``where`` names the file in error messages."""
    model_type = str(config.get("model_type", ""))
    out: dict = {}
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and rope:
        if model_type == "gemma3_text" and isinstance(rope.get("full_attention"), dict):
            out.update(_flat_rope(model_type, rope["full_attention"], config))
            local = rope.get("sliding_attention") or {}
            if "rope_local_base_freq" not in config and "rope_theta" in local:
                out["rope_local_base_freq"] = float(local["rope_theta"])
        elif all(not isinstance(v, dict) for v in rope.values()):
            out.update(_flat_rope(model_type, rope, config))
    if model_type == "gemma3_text" and "sliding_window_pattern" not in config:
        p = _sliding_pattern(config, where)
        if p is not None:
            out["sliding_window_pattern"] = p
    if model_type == "gpt2" and "n_ctx" not in config and config.get("n_positions"):
        out["n_ctx"] = int(config["n_positions"])
    names = set(weight_names)
    if model_type in _TIE_FIELD and "tie_word_embeddings" not in config and names:
        out["tie_word_embeddings"] = "lm_head.weight" not in names
    return out


def check_config(config: dict, where: str = "config.json") -> None:
    """Refuse settings mlx-lm's class would silently compute differently (module docstring)."""
    model_type = str(config.get("model_type", ""))
    for key, ok in _ACTIVATIONS.get(model_type, ()):
        value = config.get(key)
        if value is not None and value not in ok:
            raise UnsupportedArchitectureError(
                f"{where} sets {key}={value!r}, but mlx-lm's {model_type} class always uses "
                f"{ok[0]}; the model would compute another function, so it is not loaded")
    if model_type == "gpt2":
        if config.get("scale_attn_by_inverse_layer_idx"):
            raise UnsupportedArchitectureError(
                f"{where} sets scale_attn_by_inverse_layer_idx, which mlx-lm's gpt2 class does not "
                "implement; this GPT-2 variant cannot be loaded faithfully")
        if config.get("scale_attn_weights") is False:
            raise UnsupportedArchitectureError(
                f"{where} sets scale_attn_weights=false, but mlx-lm's gpt2 class always scales "
                "attention by 1/sqrt(d_head); this GPT-2 variant cannot be loaded faithfully")


def context_limit(config: dict) -> int | None:
    """Longest prompt on which mlx-lm's class equals transformers (module docstring), or None."""
    ctx = config.get("max_position_embeddings") or config.get("n_positions") or config.get("n_ctx")
    limit = int(ctx) if ctx else None
    model_type = str(config.get("model_type", ""))
    window = config.get("sliding_window")
    uses_window = bool(window) and (model_type != "qwen2" or config.get("use_sliding_window"))
    if model_type in _NO_WINDOW and uses_window and not (model_type == "llama" and config.get("layer_types")):
        limit = int(window) if limit is None else min(limit, int(window))
    return limit


def rename_weights(config: dict, weights: dict) -> tuple[dict, tuple[str, ...]]:
    """(weights mlx-lm's ``sanitize`` accepts, one note per kind of change made)."""
    model_type = str(config.get("model_type", ""))
    notes: list[str] = []
    out = dict(weights)
    inv = [k for k in out if k.endswith("rotary_emb.inv_freq")]
    for k in inv:
        del out[k]
    if inv:
        notes.append(f"dropped {len(inv)} rotary_emb.inv_freq buffers")
    if model_type == "gpt2":
        prefixed = [k for k in out if k.startswith("transformer.")]
        for k in prefixed:
            out[k[len("transformer."):]] = out.pop(k)
        if prefixed:
            notes.append(f"stripped 'transformer.' from {len(prefixed)} names")
        # mlx-lm's gpt2 attention has no parameter named attn.bias: these are mask buffers.
        buffers = [k for k in out if k.endswith((".attn.bias", ".attn.masked_bias"))]
        for k in buffers:
            del out[k]
        if buffers:
            notes.append(f"dropped {len(buffers)} attention mask buffers")
    always_tied = model_type in ("gpt2", "gemma2")  # mlx-lm's class has no lm_head at all
    tied_phi3 = model_type == "phi3" and bool(config.get("tie_word_embeddings"))  # no sanitize
    if (always_tied or tied_phi3) and "lm_head.weight" in out:
        if always_tied and config.get("tie_word_embeddings") is False:
            raise NotAModelError(
                f"config.json says {model_type} has an untied lm_head, which mlx-lm's {model_type} "
                "class cannot hold; this checkpoint cannot be loaded faithfully")
        del out["lm_head.weight"]
        notes.append("dropped the tied lm_head.weight")
    return out, tuple(notes)


__all__ = ["check_config", "config_overrides", "context_limit", "rename_weights"]
