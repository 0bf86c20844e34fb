"""Where each site lives in an mlx-lm architecture.

mlx-lm blocks share attribute names across families (llama, mistral, qwen2/3,
phi3: ``self_attn``/``mlp``/``input_layernorm``/``post_attention_layernorm``;
gpt2: ``attn``/``mlp``/``ln_1``/``ln_2``; gemma2/3 add a post-attention and a
post-feedforward norm around a ``pre_feedforward_layernorm``).

Algorithm (``layer_handles``):
  1. Find the attention and MLP children of the block by name.
  2. Collect every direct child that is a norm (probe-able 1-D weight + eps)
     into ``norms`` in definition order.
  3. Find the attention output projection inside the attention module.
  4. Sandwich-norm blocks (a ``post_feedforward_layernorm`` child): the
     residual contributions are the outputs of ``post_attention_layernorm``
     and ``post_feedforward_layernorm``; the MLP pre-norm is
     ``pre_feedforward_layernorm``. Otherwise the contributions are the
     attention / MLP outputs and the MLP pre-norm is the norm named
     ``post_attention_layernorm``/``ln_2``/..., else the second norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attribution.errors import UnsupportedArchitectureError
from attribution.model.norms import is_norm_candidate

_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe")
_OUT_PROJ_NAMES = ("o_proj", "c_proj", "out_proj", "dense", "wo")
# Families whose attention and MLP both read resid_pre (no resid_mid exists).
PARALLEL_RESIDUAL_ARCHS = ("phi", "gptj", "cohere", "cohere2")
_PRE_MLP_NAMES = ("post_attention_layernorm", "ln_2", "ffn_norm", "norm2")
# config.json model_types the test suite builds tiny models of (attribution/tiny.py); error
# messages list them when a config names a type mlx-lm cannot build.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3",
                         "gpt2", "gpt_neox", "mixtral")


@dataclass(frozen=True)
class LayerHandles:
    """The modules of one transformer block that sites attach to."""

    index: int
    """Block index."""
    block: Any
    """The block module (resid_pre = its input, resid_post = its output)."""
    attn: Any
    """The attention module."""
    mlp: Any
    """The MLP module (mlp_in = its input)."""
    norms: dict
    """Direct norm children of the block, name -> module, in definition order."""
    out_proj: Any
    """Attention output projection (attn_z = its input, reshaped per head)."""
    attn_out_point: Any
    """Module whose output is attn_out (attention, or Gemma's post-attention norm)."""
    mlp_out_point: Any
    """Module whose output is mlp_out (MLP, or Gemma's post-feedforward norm)."""
    pre_mlp_norm: Any
    """Norm whose input is resid_mid."""


def _child(module, names):
    for n in names:
        if isinstance(module, dict) and n in module:
            return module[n]
    return None


def layer_handles(index: int, block) -> LayerHandles:
    """Locate the hook points of block ``index``; a missing one is None (see ``require``)."""
    attn = _child(block, _ATTN_NAMES)
    mlp = _child(block, _MLP_NAMES)
    norms = {k: v for k, v in block.items() if is_norm_candidate(v)}
    out_proj = _child(attn, _OUT_PROJ_NAMES) if attn is not None else None
    if "post_feedforward_layernorm" in norms and "post_attention_layernorm" in norms:
        attn_point, mlp_point = norms["post_attention_layernorm"], norms["post_feedforward_layernorm"]
        pre_mlp = norms.get("pre_feedforward_layernorm")
    else:
        attn_point, mlp_point = attn, mlp
        named = [norms[n] for n in _PRE_MLP_NAMES if n in norms]
        pre_mlp = named[0] if named else (list(norms.values())[1] if len(norms) >= 2 else None)
    return LayerHandles(index, block, attn, mlp, norms, out_proj, attn_point, mlp_point, pre_mlp)


def require(handles: LayerHandles, field_name: str, site) -> Any:
    """The handle ``field_name`` needed by ``site``, or an error naming what is missing."""
    value = getattr(handles, field_name)
    if value is None:
        raise UnsupportedArchitectureError(
            f"{site} needs the block's {field_name.replace('_', ' ')}, which was not found in "
            f"{type(handles.block).__name__} (children: {', '.join(handles.block.keys())}); "
            "add its attribute name to attribution/model/arch.py"
        )
    return value


def inner_model(module):
    """The backbone (``module.model`` in mlx-lm causal-LM wrappers)."""
    return module["model"] if isinstance(module, dict) and "model" in module else module


def find_attr(module, names: tuple[str, ...]):
    """The first child among ``names``, or None."""
    for n in names:
        if isinstance(module, dict) and n in module:
            return module[n]
    return None
