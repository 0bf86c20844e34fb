"""Normalisation layers: identify their form by probing, and freeze their scales.

Freezing (for linearised attribution) keeps the forward value and stops the
gradient through each norm's data-dependent scale:
  RMSNorm          y = x * sg(rsqrt(mean(x^2) + eps)) * w
  Gemma RMSNorm    y = x * sg(rsqrt(mean(x^2) + eps)) * (1 + w)
  LayerNorm        y = (x - mean(x)) * sg(rsqrt(var(x) + eps)) * w + b
(sg = stop_gradient). The mean subtraction is linear and stays differentiable.

Algorithm (``norm_form``):
  1. Candidates are modules with a float ``eps`` and a 1-D ``weight`` (or,
     weightless, an int ``dims``).
  2. Run the module on a fixed random probe (non-zero mean, so RMS and
     LayerNorm differ) and compare with each candidate formula above using
     the module's own weight, bias and eps.
  3. The first formula matching within 1e-4 (relative; 3e-2 for half-precision
     weights) is the form; no match
     -> not a norm we can freeze (reported to the caller, never guessed from
     the class name alone).
"""

from __future__ import annotations

from typing import Literal

import mlx.core as mx

from attribution.model.hooks import base_class

NormForm = Literal["rms", "rms_1p", "layer"]


def _rms_scale(x, eps):
    return mx.rsqrt(mx.mean(mx.square(x.astype(mx.float32)), axis=-1, keepdims=True) + eps)


def _layer_parts(x, eps):
    xf = x.astype(mx.float32)
    mu = mx.mean(xf, axis=-1, keepdims=True)
    centred = xf - mu
    return centred, mx.rsqrt(mx.mean(mx.square(centred), axis=-1, keepdims=True) + eps)


def norm_formula(form: NormForm, x, weight, bias, eps, freeze: bool):
    """Evaluate a norm form; ``freeze`` applies stop_gradient to the scale."""
    sg = mx.stop_gradient if freeze else (lambda a: a)
    if form == "layer":
        centred, scale = _layer_parts(x, eps)
        y = centred * sg(scale)
    else:
        y = x.astype(mx.float32) * sg(_rms_scale(x, eps))
    if weight is not None:
        y = y * ((1.0 + weight) if form == "rms_1p" else weight)
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


def _params(module):
    weight = module.get("weight") if isinstance(module, dict) else None
    bias = module.get("bias") if isinstance(module, dict) else None
    eps = getattr(module, "eps", None)
    return weight, bias, eps


def _width(module) -> int | None:
    """Normalised width: the 1-D weight's length, or ``dims`` of a weightless LayerNorm."""
    weight, _, _ = _params(module)
    if isinstance(weight, mx.array):
        return int(weight.shape[0]) if weight.ndim == 1 else None
    dims = getattr(module, "dims", None)
    return dims if isinstance(dims, int) and not isinstance(dims, bool) else None


def is_norm_candidate(module) -> bool:
    """A float ``eps`` and a 1-D ``weight`` (or a weightless ``dims``): worth probing."""
    _, _, eps = _params(module)
    return isinstance(eps, float) and _width(module) is not None


def norm_form(module) -> NormForm | None:
    """Identify the module's normalisation formula by probing; None if none matches."""
    if not is_norm_candidate(module):
        return None
    weight, bias, eps = _params(module)
    dtype = weight.dtype if weight is not None else mx.float32
    probe = mx.random.normal((3, _width(module)), key=mx.random.key(1234)) * 1.7 + 0.6
    probe = probe.astype(dtype)
    try:
        # Call the original class so that hooks installed right now do not run.
        actual = base_class(module).__call__(module, probe).astype(mx.float32)
    except Exception:  # a module that cannot run on [3, n] is not a plain norm
        return None
    scale = float(mx.max(mx.abs(actual))) + 1e-6
    # Half-precision weights round the module's output; the forms differ by O(1).
    tol = 1e-4 if dtype == mx.float32 else 3e-2
    for form in ("rms", "rms_1p", "layer"):
        ref = norm_formula(form, probe, weight, bias if form == "layer" else None, eps, False)
        if bias is not None and form != "layer":
            ref = ref + bias
        if float(mx.max(mx.abs(ref.astype(mx.float32) - actual))) <= tol * scale:
            return form
    return None


def frozen_override(form: NormForm):
    """An ``override`` for hooks: the module's forward with its scale frozen."""

    def frozen_norm(module, base_call, x, *args, **kwargs):
        weight, bias, eps = _params(module)
        return norm_formula(form, x, weight, bias, eps, freeze=True)

    return frozen_norm
