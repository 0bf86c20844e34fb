"""The unfrozen spliced forward: dictionaries in the real (nonlinear) model.

Algorithm (``spliced_forward``), per unit, with latents computed live:
  1. At the input site: pre = pre_acts(x), f = activation(pre) (a CLT layer
     uses ``clt_layer_activation`` with the clean pre-activations of the other
     layers as context), then f' = ``edit(layer, f)`` (identity by default).
  2. At the output site, two error modes:
     - ``live_error=False`` (the replacement model): output =
       reconstruction(f') + the clean error of ``state`` (+ ``error_delta``).
       With no edits this equals the clean activation, so logits are the
       original ones (the error makes the splice exact).
     - ``live_error=True`` (steering, any length): output = true activation +
       reconstruction(f') − reconstruction(f), i.e. DESIGN B4's "add
       (value − current)·W_dec": the MLP and every un-edited feature stay live.
  3. Attention, norms and un-replaced MLPs run normally (nothing is frozen),
     so gradients of this forward are gradients of the full model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import mlx.core as mx

from attribution.replacement.forward import hooked_forward
from attribution.replacement.model import CleanState, ReplacementModel
from attribution.replacement.units import clt_layer_activation, pre_acts, reconstruct

FeatureEdit = Callable[[int, mx.array], mx.array]


class SplicedOut(NamedTuple):
    """Outputs of ``spliced_forward``."""

    logits: mx.array
    """[B,T,V]."""
    norm_out: mx.array
    """[B,T,d] final-norm output."""
    live: dict
    """layer -> [B,T,m] latents computed from the live input (before edits)."""
    acts: dict
    """layer -> [B,T,m] latents after edits (what the unit decodes)."""


def _recon(rm, layer: int, acts: dict, x_in: mx.array) -> mx.array:
    return reconstruct(rm.units[layer], rm.units, acts, x_in)


def spliced_forward(rm: ReplacementModel, tokens: mx.array, state: CleanState | None = None,
                    edit: FeatureEdit | None = None, error_delta: dict | None = None,
                    live_error: bool = False) -> SplicedOut:
    """Forward of int32 tokens [B,T] with every unit spliced in (module docstring)."""
    if not live_error and state is None:
        raise ValueError("live_error=False needs the clean state (its error terms)")
    context = state.pre if state is not None else None
    live: dict = {}
    acts: dict = {}
    xin: dict = {}

    def encode(layer: int, x: mx.array) -> None:
        u = rm.units[layer]
        pre = pre_acts(u, x)
        f = clt_layer_activation(u, pre, context) if u.kind == "clt" else u.dictionary.activation(pre)
        xin[layer], live[layer] = x, f
        acts[layer] = f if edit is None else edit(layer, f)

    def output(layer: int, y: mx.array) -> mx.array:
        new = _recon(rm, layer, acts, xin[layer])
        if live_error:
            out = y + (new - _recon(rm, layer, live, xin[layer]))
        else:
            out = new + state.error[layer]
        if error_delta is not None and layer in error_delta:
            out = out + error_delta[layer]
        return out

    edits, reads = [], []
    for layer, u in rm.units.items():
        if u.kind == "sae":
            def both(x, l=layer):
                encode(l, x)
                return output(l, x)
            edits.append((u.out_site, both))
        else:
            def read(x, l=layer):
                encode(l, x)
                return x

            reads.append((u.in_site, read))
            edits.append((u.out_site, lambda y, l=layer: output(l, y)))
    fo = hooked_forward(rm.model, tokens, edits=edits, reads=reads)
    return SplicedOut(fo.logits, fo.norm_out, live, acts)


__all__ = ["FeatureEdit", "SplicedOut", "spliced_forward"]
