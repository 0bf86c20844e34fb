"""Attention patterns: an explicit-softmax attention kernel we can hook.

mlx-lm's attention modules call a module-level ``scaled_dot_product_attention``
(imported from ``mlx_lm.models.base``) which runs the fused
``mx.fast.scaled_dot_product_attention``; the pattern never exists as an array.
Gemma2 computes attention inline in its ``Attention.__call__``.

Algorithm:
  1. ``SdpaSwap`` replaces the name ``scaled_dot_product_attention`` in every
     Python module that defines the model's classes (reference counted, so
     nested uses share one swap) and puts the original back on exit.
  2. The replacement looks for the innermost running hooked module that wants
     its pattern (``hooks.current_entry``). None -> call the original kernel
     (bitwise-identical forward for layers we do not touch).
  3. Otherwise compute it explicitly: repeat k/v for GQA, scores = scale *
     q k^T, apply the mask (``"causal"``, boolean or additive array) and
     optional sinks, softmax (precise), run the entry's pattern hooks (edit /
     capture / stop_gradient), and return pattern @ v.
  4. Inline attention (gemma2) is handled by an ``override`` on the attention
     module that re-implements its ``__call__`` with the same hook call.
"""

from __future__ import annotations

import sys
from typing import Any

import mlx.core as mx

from attribution.model import hooks

SDPA_NAME = "scaled_dot_product_attention"

_ORIGINALS: dict[str, Any] = {}
_COUNTS: dict[str, int] = {}


def _apply_mask(scores, mask):
    """Apply an mlx-lm mask (None, "causal", bool or additive array) to scores [...,Tq,Tk]."""
    if mask is None:
        return scores
    if isinstance(mask, str):
        tq, tk = scores.shape[-2:]
        q_idx = mx.arange(tk - tq, tk)
        mask = q_idx[:, None] >= mx.arange(tk)[None]
    if mask.dtype == mx.bool_:
        return mx.where(mask, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
    return scores + mask


def explicit_attention(queries, keys, values, scale, mask, entry, sinks=None):
    """Attention with an explicit softmax; ``entry.apply_pattern`` sees [B,H,Tq,Tk]."""
    n_heads, n_kv = queries.shape[1], keys.shape[1]
    if n_heads != n_kv:
        keys = mx.repeat(keys, n_heads // n_kv, axis=1)
        values = mx.repeat(values, n_heads // n_kv, axis=1)
    scores = (queries * scale) @ keys.swapaxes(-1, -2)
    scores = _apply_mask(scores, mask)
    if sinks is not None:
        # A sink is an extra logit per head that takes probability mass but no value.
        b, h, tq, _ = scores.shape
        sink = mx.broadcast_to(sinks.reshape(1, h, 1, 1).astype(scores.dtype), (b, h, tq, 1))
        full = mx.softmax(mx.concatenate([sink, scores], axis=-1), axis=-1, precise=True)
        pattern = full[..., 1:]
    else:
        pattern = mx.softmax(scores, axis=-1, precise=True)
    pattern = entry.apply_pattern(pattern)
    return pattern @ values


def _make_replacement(original):
    def scaled_dot_product_attention(queries, keys, values, cache, scale, mask, sinks=None):
        entry = next((e for e in reversed(hooks.CURRENT) if e.wants_pattern()), None)
        if entry is None or hasattr(cache, "bits"):
            return original(queries, keys, values, cache=cache, scale=scale, mask=mask,
                            sinks=sinks) if sinks is not None else original(
                queries, keys, values, cache=cache, scale=scale, mask=mask)
        return explicit_attention(queries, keys, values, scale, mask, entry, sinks)

    scaled_dot_product_attention._attribution_original = original
    return scaled_dot_product_attention


class SdpaSwap:
    """Context manager swapping ``scaled_dot_product_attention`` in the given Python modules."""

    def __init__(self, module_names: list[str]) -> None:
        self.names = [n for n in module_names if hasattr(sys.modules.get(n), SDPA_NAME)]
        self._done: list[str] = []

    def __enter__(self) -> "SdpaSwap":
        try:
            for name in self.names:
                mod = sys.modules[name]
                if _COUNTS.get(name, 0) == 0:
                    _ORIGINALS[name] = getattr(mod, SDPA_NAME)
                    setattr(mod, SDPA_NAME, _make_replacement(_ORIGINALS[name]))
                _COUNTS[name] = _COUNTS.get(name, 0) + 1
                self._done.append(name)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        while self._done:
            name = self._done.pop()
            _COUNTS[name] -= 1
            if _COUNTS[name] == 0:
                setattr(sys.modules[name], SDPA_NAME, _ORIGINALS.pop(name))
                del _COUNTS[name]


def uses_sdpa(attn_module) -> bool:
    """True when the attention module's Python module calls the swappable kernel."""
    mod = sys.modules.get(hooks.base_class(attn_module).__module__)
    return mod is not None and hasattr(mod, SDPA_NAME)


def gemma2_attention(self, base_call, x, mask=None, cache=None):
    """Gemma2 ``Attention.__call__`` (mlx-lm) with the pattern passed through the hooks.

    Same operations as ``mlx_lm.models.gemma2.Attention`` (logit softcapping,
    query_pre_attn_scalar scale), with GQA done by repeating k/v so that the
    softmax output is the [B,H,Tq,Tk] pattern the hooks expect.
    """
    entry = hooks.current_entry()
    if entry is None or not entry.wants_pattern():
        return base_call(self, x, mask, cache)
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, self.n_heads, -1).transpose(0, 2, 1, 3)
    k = self.k_proj(x).reshape(b, t, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
    v = self.v_proj(x).reshape(b, t, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
    if cache is not None:
        q, k = self.rope(q, offset=cache.offset), self.rope(k, offset=cache.offset)
        k, v = cache.update_and_fetch(k, v)
    else:
        q, k = self.rope(q), self.rope(k)
    q = q * self.scale
    if self.repeats > 1:
        k, v = mx.repeat(k, self.repeats, axis=1), mx.repeat(v, self.repeats, axis=1)
    scores = q @ k.swapaxes(-1, -2)
    scores = mx.tanh(scores / self.attn_logit_softcapping) * self.attn_logit_softcapping
    scores = _apply_mask(scores, mask)
    pattern = entry.apply_pattern(mx.softmax(scores, precise=True, axis=-1))
    out = (pattern @ v).transpose(0, 2, 1, 3).reshape(b, t, -1)
    return self.o_proj(out)


# Attention classes that compute attention inline, by Python module name.
INLINE_ATTENTION = {"mlx_lm.models.gemma2": gemma2_attention}
