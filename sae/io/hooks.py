"""TransformerLens hook names (SAELens ``hook_name``, circuit-tracer ``feature_*_hook``) -> Sites.

Published dictionaries name the activation they read and write with a
TransformerLens hook, either absolute (``blocks.3.hook_resid_post``, SAELens) or
relative to a block (``hook_resid_mid``, circuit-tracer, which prefixes
``blocks.{layer}.``). ``hook_site`` resolves one name:

  1. Strip ``blocks.{l}.`` (or the template ``blocks.{layer}.``) to get the layer
     and the relative hook; a relative hook takes the layer given by the caller.
  2. Look the relative hook up in ``TL_HOOKS``:
       hook_resid_pre / hook_resid_mid / hook_resid_post -> resid_pre / resid_mid / resid_post
       hook_attn_out, hook_mlp_out                       -> attn_out, mlp_out
                                                            (after Gemma's post-norms, as in TL)
       attn.hook_z (hook_z)                              -> attn_z (heads flattened, d_in = H*dh)
       hook_mlp_in                                       -> resid_mid (TL: the MLP sub-block's
                                                            input, before its norm)
       mlp.hook_in   (circuit-tracer)                    -> mlp_in (after the pre-MLP norm and
                                                            its weight)
       mlp.hook_out  (circuit-tracer)                    -> mlp_out (the MLP module's output;
                                                            refused for a model whose MLP is
                                                            followed by a post-norm)
       ln2.hook_normalized                               -> mlp_in with ``pre_affine``: the value
                                                            is the pre-MLP norm's output *before*
                                                            its weight and bias, so the norm's
                                                            affine must be folded into the weights
                                                            (``norm_affine`` gives it from a model)
  3. Anything else (``mlp.hook_post``, ``hook_embed``, ``ln1.hook_normalized``, ...)
     has no Site and raises ``UnsupportedHookError`` listing ``TL_HOOKS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from attribution.sites import Site
from sae.errors import FormatError

TL_HOOKS: dict[str, str] = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "hook_mlp_in": "resid_mid",
    "attn.hook_z": "attn_z",
    "hook_z": "attn_z",
    "mlp.hook_in": "mlp_in",
    "mlp.hook_out": "mlp_out",
    "ln2.hook_normalized": "mlp_in",
}
"""Relative TransformerLens hook -> Site kind (see the module docstring for the exact meaning)."""

_PRE_AFFINE = "ln2.hook_normalized"
_MLP_MODULE_OUT = "mlp.hook_out"
_BLOCK = re.compile(r"blocks\.(\d+|\{layer\})\.(.+)")


class UnsupportedHookError(FormatError):
    """A dictionary reads or writes a TransformerLens hook that has no Site here."""


class NormFoldError(FormatError):
    """A hook's value needs the model's norm weights (``ln2.hook_normalized``) that are missing."""


@dataclass(frozen=True)
class HookSite:
    """Where a TransformerLens hook lives in our models."""

    hook: str
    """The hook name as written in the file (absolute or relative)."""
    site: Site
    """The Site holding the value (or, with ``pre_affine``, the value after the norm's affine)."""
    pre_affine: bool = False
    """True for ``ln2.hook_normalized``: the value is mlp_in before the pre-MLP norm's
    weight and bias; importers fold that affine into the dictionary (needs a model)."""
    mlp_module_out: bool = False
    """True for circuit-tracer's ``mlp.hook_out``: the MLP module's own output, which is
    mlp_out only when no post-feedforward norm follows the MLP."""


def supported_hooks() -> str:
    """The supported hook names, for error messages."""
    return ", ".join(f"blocks.{{l}}.{h}" for h in TL_HOOKS)


def hook_site(name, layer: int | None = None, *, where: str = "") -> HookSite:
    """Resolve a TransformerLens hook name to a ``HookSite`` (see the module docstring).

    ``layer``: the block of a relative name (circuit-tracer); an absolute name's own
    layer wins, and a mismatch with ``layer`` is refused."""
    where = f"{where}: " if where else ""
    if not isinstance(name, str) or not name.strip():
        raise UnsupportedHookError(f"{where}hook name {name!r} is empty or not a string; "
                                   f"supported: {supported_hooks()}")
    text = name.strip()
    m = _BLOCK.fullmatch(text)
    rel, own = (m.group(2), m.group(1)) if m else (text, None)
    if own is not None and own != "{layer}":
        if layer is not None and int(own) != layer:
            raise UnsupportedHookError(f"{where}hook {text!r} is on layer {own} but the file is "
                                       f"for layer {layer}; fix the config or the file name")
        layer = int(own)
    kind = TL_HOOKS.get(rel)
    if kind is None:
        raise UnsupportedHookError(f"{where}unsupported hook {text!r} (no matching site); "
                                   f"supported: {supported_hooks()}")
    if layer is None:
        raise UnsupportedHookError(f"{where}hook {text!r} names no layer; write it as "
                                   f"blocks.<layer>.{rel}")
    return HookSite(text, Site(int(layer), kind),  # type: ignore[arg-type]
                    pre_affine=rel == _PRE_AFFINE, mlp_module_out=rel == _MLP_MODULE_OUT)


def tl_hook_name(site: Site) -> str:
    """The hook we write for ``site`` in exported files (inverse of ``hook_site``).

    mlp_in is circuit-tracer's ``mlp.hook_in`` (TransformerLens has no hook for the
    MLP input after the norm's affine); attn_pattern has no dictionary hook."""
    if site.kind == "mlp_in":
        return f"blocks.{site.layer}.mlp.hook_in"
    if site.kind == "attn_z":
        return f"blocks.{site.layer}.attn.hook_z"
    if site.kind == "attn_pattern":
        raise UnsupportedHookError(f"site {site} has no TransformerLens dictionary hook; "
                                   "export dictionaries of residual-width sites or attn_z")
    return f"blocks.{site.layer}.hook_{site.kind}"


def check_on_model(hs: HookSite, model, where: str) -> None:
    """Refuse a hook ``model`` cannot host (layer range; ``mlp.hook_out`` before a post-norm)."""
    if model is None:
        return
    if hs.site.layer >= model.n_layers:
        raise UnsupportedHookError(f"{where}: hook {hs.hook} is on layer {hs.site.layer} but the "
                                   f"model has {model.n_layers} layers; is it for another model?")
    if hs.mlp_module_out:
        handles = model.layers[hs.site.layer]
        if handles.mlp_out_point is not handles.mlp:
            raise UnsupportedHookError(
                f"{where}: hook {hs.hook} is the MLP module's output but this model applies a "
                "post-feedforward norm after it (our mlp_out is after that norm); use a "
                "dictionary written for hook_mlp_out")


def norm_affine(model, layer: int, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(gain [d], shift [d] or None) with mlp_in = normalized * gain + shift at ``layer``.

    Read from the model's pre-MLP norm: RMSNorm weight w, Gemma's (1 + w), or
    LayerNorm's weight and bias. Raises ``NormFoldError`` without a model, for an
    unrecognised norm, or for a zero gain (the fold divides by it)."""
    if model is None:
        raise NormFoldError(f"{where}: ln2.hook_normalized is the MLP input before the norm's "
                            "weight; pass model= so the weight can be folded into the dictionary")
    from attribution.model.norms import norm_form

    norm = model.layers[layer].pre_mlp_norm
    form = norm_form(norm) if norm is not None else None
    if form is None:
        raise NormFoldError(f"{where}: cannot identify the pre-MLP norm of layer {layer} to fold "
                            "ln2.hook_normalized; load a dictionary trained on mlp.hook_in")
    weight, bias = norm.get("weight"), norm.get("bias")
    d = model.d_model
    gain = np.ones(d, np.float64) if weight is None else np.array(weight, np.float64)
    if form == "rms_1p":
        gain = 1.0 + gain
    shift = None if bias is None else np.array(bias, np.float64)
    if not np.all(gain != 0):
        raise NormFoldError(f"{where}: the pre-MLP norm of layer {layer} has "
                            f"{int((gain == 0).sum())} zero gains, so ln2.hook_normalized cannot "
                            "be recovered from mlp_in")
    return gain, shift
