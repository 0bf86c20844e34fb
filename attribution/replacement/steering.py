"""Feature interventions and steered generation on the replacement model.

A ``FeatureIntervention`` sets, scales or ablates one feature at some
positions. Two modes (DESIGN B4):

``iterative`` — effects propagate through the real model:
  1. Splice every unit with live errors (``spliced_forward(live_error=True)``):
     at each output site add reconstruction(f') − reconstruction(f), i.e.
     (new − current)·W_dec for edited features; features downstream are
     recomputed from the changed residual, so edits propagate.
``constrained`` — direct effects only:
  1. Clean state of the prompt; edited latents f' give write deltas
     Δ_j = Σ_i (f'_i − f_i) @ W_dec(i → j) at each output site j.
  2. Push Δ through the linearised model (frozen attention patterns, norm
     scales incl. the final norm, MLP outputs and all other features held
     constant) with one forward-mode JVP; that map is linear, so the JVP is
     the exact frozen change.
  3. New logits = softcap(z + dz) with z the clean pre-softcap logits and
     dz = d(final-norm output) @ W_U. Reported feature activations are
     activation(pre + dpre) (not fed back: direct effects only), with the
     edited features at their new values.
``generate`` appends greedy tokens, recomputing the full forward each step
(no KV cache) with the interventions applied (positions None = every
position, including generated ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import mlx.core as mx
import numpy as np

from attribution.model.tokens import as_tokens
from attribution.replacement.errors import SteeringError
from attribution.replacement.linear import linear_forward
from attribution.replacement.model import ReplacementModel
from attribution.replacement.spliced import spliced_forward
from attribution.replacement.units import activations, targets_of, write_vectors

Positions = int | Sequence[int] | None


@dataclass(frozen=True)
class FeatureIntervention:
    """Set, scale or ablate one feature at given positions."""

    layer: int
    """Layer of the feature's dictionary (CLT: source layer)."""
    feature: int
    """Latent index."""
    mode: Literal["set", "scale", "ablate"] = "set"
    """set: activation := value; scale: activation *= value; ablate: activation := 0."""
    value: float = 0.0
    """New activation (set) or factor (scale); ignored for ablate."""
    positions: Positions = None
    """Token positions; None = every position."""

    def __post_init__(self) -> None:
        if self.mode not in ("set", "scale", "ablate"):
            raise SteeringError(f"mode {self.mode!r}; use 'set', 'scale' or 'ablate'")
        if not np.isfinite(self.value):
            raise SteeringError(f"value must be finite, got {self.value!r}")


class SteerResult(NamedTuple):
    """Outcome of ``steer`` (arrays are [T, ...], unbatched)."""

    logits: mx.array
    """[T,V] logits with the interventions."""
    clean_logits: mx.array
    """[T,V] logits without them."""
    activations: dict
    """layer -> [T,m] feature activations with the interventions."""
    clean_activations: dict
    """layer -> [T,m] clean feature activations."""
    mode: str
    """``constrained`` or ``iterative``."""


class GenerateResult(NamedTuple):
    """Outcome of ``generate``."""

    tokens: list
    """Prompt plus generated ids."""
    new_tokens: list
    """Generated ids only."""
    text: str
    """Decoded generated text."""


def _as_rm(model, dictionaries) -> ReplacementModel:
    return model if isinstance(model, ReplacementModel) else ReplacementModel(model, dictionaries)


def _masks(rm: ReplacementModel, ivs: Sequence[FeatureIntervention], t: int) -> list:
    out = []
    for iv in ivs:
        if iv.layer not in rm.units:
            raise SteeringError(f"no dictionary on layer {iv.layer}; layers with one: {rm.layers}")
        width = rm.units[iv.layer].width
        if not 0 <= iv.feature < width:
            raise SteeringError(f"feature {iv.feature} out of range for layer {iv.layer} (width {width})")
        pos = np.zeros(t, dtype=bool)
        if iv.positions is None:
            pos[:] = True
        else:
            idx = np.atleast_1d(np.asarray(iv.positions, dtype=np.int64))
            if idx.size and (idx.min() < 0 or idx.max() >= t):
                raise SteeringError(f"positions {iv.positions!r} out of range for {t} tokens")
            pos[idx] = True
        mask = np.zeros((t, width), dtype=bool)
        mask[pos, iv.feature] = True
        out.append((iv, mx.array(mask)))
    return out


def _editor(masks):
    def edit(layer: int, f: mx.array) -> mx.array:
        for iv, mask in masks:
            if iv.layer != layer:
                continue
            new = (f * iv.value if iv.mode == "scale"
                   else mx.full(f.shape, iv.value if iv.mode == "set" else 0.0, f.dtype))
            f = mx.where(mask, new, f)
        return f
    return edit


def _softcap(model, z: mx.array) -> mx.array:
    c = model.logit_softcap
    return z if c is None else c * mx.tanh(z / c)


def _constrained(rm: ReplacementModel, state, edit) -> tuple[mx.array, dict]:
    model = rm.model
    new_f = {l: edit(l, state.acts[l][None])[0] for l in rm.units}
    tangents = [mx.zeros_like(state.embed)[None]]
    for uj in rm.units.values():
        d = mx.zeros((state.tokens.shape[1], model.d_model))
        for i, ui in rm.units.items():
            if uj in targets_of(ui, rm.units):
                d = d + (new_f[i] - state.acts[i]) @ write_vectors(ui, uj)
        tangents.append(d[None])
    layers = list(rm.units)

    def fun(*deltas):
        lo = linear_forward(rm, state, list(deltas))
        return [lo.norm_out] + [lo.x_in[l] for l in layers]

    primals = [mx.zeros_like(t) for t in tangents]
    _, tan = mx.jvp(fun, primals, tangents)
    dz = tan[0][0] @ model.W_U
    if model.logit_softcap is None:  # logits are linear in the final-norm output
        logits = state.logits + dz
    else:
        logits = _softcap(model, state.norm_out @ model.W_U + dz)
    pres = {l: state.pre[l] + tan[k + 1][0] @ rm.encoder(l)[0] for k, l in enumerate(layers)}
    acts = activations(rm.units, pres)
    acts = {l: edit(l, acts[l][None])[0] for l in layers}
    return logits, acts


def steer(model, dictionaries, tokens, interventions: Sequence[FeatureIntervention],
          mode: Literal["constrained", "iterative"] = "constrained") -> SteerResult:
    """Logits and feature activations with features edited (module docstring).

    ``model`` may be a ``ReplacementModel`` (then ``dictionaries`` is ignored)."""
    if mode not in ("constrained", "iterative"):
        raise SteeringError(f"mode {mode!r}; use 'constrained' or 'iterative'")
    rm = _as_rm(model, dictionaries)
    state = rm.clean(tokens)
    edit = _editor(_masks(rm, list(interventions), state.tokens.shape[1]))
    if mode == "iterative":
        out = spliced_forward(rm, state.tokens, state, edit=edit, live_error=True)
        logits, acts = out.logits[0], {l: a[0] for l, a in out.acts.items()}
    else:
        logits, acts = _constrained(rm, state, edit)
    mx.eval(logits, acts)
    return SteerResult(logits, state.logits, acts, dict(state.acts), mode)


def generate(model, dictionaries, tokens, interventions: Sequence[FeatureIntervention],
             n_tokens: int = 5, mode: Literal["constrained", "iterative"] = "iterative") -> GenerateResult:
    """Greedy generation of ``n_tokens`` with the interventions applied at every step."""
    if not isinstance(n_tokens, int) or n_tokens < 0:
        raise SteeringError(f"n_tokens must be an int >= 0, got {n_tokens!r}")
    rm = _as_rm(model, dictionaries)
    ids = [int(i) for i in np.asarray(as_tokens(tokens, rm.model)).reshape(-1)]
    prompt_len = len(ids)
    for _ in range(n_tokens):
        res = steer(rm, None, ids, interventions, mode=mode)
        ids.append(int(mx.argmax(res.logits[-1]).item()))
    new = ids[prompt_len:]
    return GenerateResult(ids, new, rm.model.decode(new) if new else "")


__all__ = ["FeatureIntervention", "GenerateResult", "SteerResult", "generate", "steer"]
