"""Architecture-neutral views and builders used by the foreign formats.

Export: ``encoder_parts(d)`` returns (W [d_in,m], b [m], kind, threshold, k) with
``d.encode(x) == act(x @ W + b)`` where act is ReLU, JumpReLU(threshold) or TopK(k)
and any b_dec subtraction is folded into b (b = b_enc - b_dec @ W_enc).
BatchTopK/Matryoshka export as JumpReLU with their global threshold; Gated as the
equivalent JumpReLU (W = W_gate * exp(r), b = b_mag, threshold from the gate).

Import (``build_dictionary``), without a second copy of any weight:
  1. every part is an ``mx.array`` (usually a lazily loaded tensor or a transposed
     view of one); float32 parts are used as they are, others are cast once;
  2. an empty dictionary of the right class is made (its zero weights are lazy and
     never materialised) and the parts are assigned by name after a shape check
     (``assign_arrays``; ``Dictionary.load_arrays`` would copy each array);
  3. JumpReLU thresholds are stored as log thresholds; negative thresholds are refused
     (our JumpReLU keeps theta > 0).
``fold_affine`` rewrites the parts of a dictionary whose input (and/or output) is a
norm's output before its affine (TransformerLens ``ln2.hook_normalized``) so that it
reads (writes) mlp_in = normalized * gain + shift:
  input:  W_enc / gain (rows); b_enc - (shift/gain) W_enc when b_dec is not subtracted;
          W_skip / gain (rows) and b_dec - (shift/gain) W_skip;
  output: W_dec * gain (columns), b_dec * gain + shift, W_skip * gain (columns).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from sae.arch import (
    BatchTopKDictionary,
    CrossLayerTranscoder,
    GatedDictionary,
    JumpReLUDictionary,
    ReLUDictionary,
    TopKDictionary,
)
from sae.errors import ConfigError, FormatError, UnknownArchitectureError

_CLASSES = {"relu": ReLUDictionary, "topk": TopKDictionary, "jumprelu": JumpReLUDictionary}


def encoder_parts(d, fold_b_dec: bool):
    """(W, b, kind, threshold, k) as numpy; see the module docstring."""
    if hasattr(d, "export_form"):  # sae.parts.ComposedDictionary: its parts know the form
        W, b, kind, thr, k = d.export_form()
        W, b = np.asarray(W), np.asarray(b)
        if fold_b_dec and d.apply_b_dec_to_input:
            b = b - np.array(d.b_dec) @ W
        return W.astype(np.float32), b.astype(np.float32), kind, thr, k
    W, b = np.array(d.W_enc), np.array(d.b_enc)
    thr, k = None, None
    if isinstance(d, GatedDictionary):
        scale = np.exp(np.array(d.r_mag))
        W, b, kind, thr = W * scale, np.array(d.b_mag), "jumprelu", np.array(d.threshold)
    elif isinstance(d, BatchTopKDictionary):
        kind = "jumprelu"
        thr = np.full((d.width,), max(float(np.array(d.threshold)), 0.0), np.float32)
    elif isinstance(d, TopKDictionary):
        kind, k = "topk", d.k
    elif isinstance(d, JumpReLUDictionary):
        kind, thr = "jumprelu", np.array(d.threshold)
    elif isinstance(d, ReLUDictionary):
        kind = "relu"
    else:
        raise UnknownArchitectureError(f"cannot export architecture {d.arch!r}")
    if fold_b_dec and d.apply_b_dec_to_input:
        b = b - np.array(d.b_dec) @ W
    return W.astype(np.float32), b.astype(np.float32), kind, thr, k


def f32(a) -> mx.array:
    """``a`` as a float32 mx.array: no copy for float32 mx arrays, one cast otherwise."""
    if not isinstance(a, mx.array):
        a = mx.array(np.asarray(a, dtype=np.float32))
    return a if a.dtype == mx.float32 else a.astype(mx.float32)


def log_threshold(threshold, width: int, where: str) -> mx.array:
    """log theta [width] (float32) from a threshold vector or scalar; refuses theta < 0."""
    t = f32(threshold)
    if t.size not in (1, width):
        raise FormatError(f"{where}: threshold has {t.size} values, expected {width} (one per "
                          "latent) or 1")
    t = mx.broadcast_to(t.reshape(-1), (width,))
    n_neg = int((t < 0).sum().item())
    if n_neg:
        raise FormatError(f"{where}: threshold has {n_neg} negative values; JumpReLU thresholds "
                          "here are positive (theta = exp(log theta)), so this file cannot be "
                          "represented exactly")
    # theta = 0 is a ReLU; 1e-30 keeps the log finite and differs only for pre in (0, 1e-30].
    return mx.log(mx.maximum(t, 1e-30))


def assign_arrays(d, arrays: dict, where: str) -> None:
    """Set ``d``'s parameters by name from ``arrays`` after checking names and shapes.

    Unlike ``load_arrays`` it never copies: same-dtype arrays (and views) are kept."""
    own = d.arrays()
    missing = sorted(set(own) - set(arrays))
    if missing:
        raise FormatError(f"{where}: missing tensors {missing} for a {d.arch} dictionary")
    for name, cur in own.items():
        a = arrays[name] if isinstance(arrays[name], mx.array) else mx.array(arrays[name])
        if tuple(a.shape) != tuple(cur.shape):
            raise FormatError(f"{where}: {name} has shape {list(a.shape)}, expected "
                              f"{list(cur.shape)}")
        a = a if a.dtype == cur.dtype else a.astype(cur.dtype)
        if isinstance(d, CrossLayerTranscoder) and name.startswith("W_dec_layers."):
            d.W_dec_layers[int(name.split(".")[1])] = a
        else:
            setattr(d, name, a)


def build_dictionary(kind: str, W_enc, b_enc, W_dec, b_dec, *, threshold=None, k=None,
                     W_skip=None, in_site=None, out_site=None, apply_b_dec_to_input=False,
                     where: str = "dictionary"):
    """A ReLU / TopK / JumpReLU dictionary from parts in our orientation (see module docstring).

    W_enc [d_in, m], b_enc [m], W_dec [m, d_out], b_dec [d_out], W_skip [d_in, d_out]."""
    if kind not in _CLASSES:
        raise UnknownArchitectureError(f"{where}: unknown activation kind {kind!r}; expected one "
                                       f"of {', '.join(_CLASSES)}")
    parts = {"W_enc": f32(W_enc), "b_enc": f32(b_enc), "W_dec": f32(W_dec), "b_dec": f32(b_dec)}
    if parts["W_enc"].ndim != 2 or parts["W_dec"].ndim != 2:
        raise FormatError(f"{where}: W_enc and W_dec must be matrices, got shapes "
                          f"{list(parts['W_enc'].shape)} and {list(parts['W_dec'].shape)}")
    d_in, m = parts["W_enc"].shape
    d_out = parts["W_dec"].shape[1]
    hp = {"k": int(k)} if kind == "topk" else {}
    try:
        d = _CLASSES[kind](d_in, m, d_out=d_out, in_site=in_site, out_site=out_site,
                           skip=W_skip is not None, apply_b_dec_to_input=apply_b_dec_to_input,
                           **hp)
    except ConfigError as e:
        raise FormatError(f"{where}: {e}") from e
    if W_skip is not None:
        parts["W_skip"] = f32(W_skip)
    if kind == "jumprelu":
        if threshold is None:
            raise FormatError(f"{where}: a JumpReLU dictionary needs a threshold tensor")
        parts["log_threshold"] = log_threshold(threshold, m, where)
    assign_arrays(d, parts, where)
    return d


def build_from_parts(W, b, W_dec, b_dec, kind, threshold=None, k=None, *, W_skip=None,
                     in_site=None, out_site=None, apply_b_dec_to_input=False):
    """A dictionary from effective encoder parts (inverse of ``encoder_parts``)."""
    return build_dictionary(kind, W, b, W_dec, b_dec, threshold=threshold, k=k, W_skip=W_skip,
                            in_site=in_site, out_site=out_site,
                            apply_b_dec_to_input=apply_b_dec_to_input)


def fold_affine(parts: dict, *, gain_in=None, shift_in=None, gain_out=None, shift_out=None,
                apply_b_dec_to_input: bool = False) -> dict:
    """Parts reading x = x_norm * gain_in + shift_in and writing y = y_norm * gain_out + shift_out.

    ``parts`` holds W_enc, b_enc, W_dec, b_dec (and optionally W_skip) in our orientation;
    gains and shifts are numpy vectors (or None). See the module docstring."""
    p = dict(parts)
    as_mx = lambda v: None if v is None else mx.array(np.asarray(v, np.float32))  # noqa: E731
    g_in, s_in, g_out, s_out = (as_mx(v) for v in (gain_in, shift_in, gain_out, shift_out))
    if g_in is not None:
        W_enc = p["W_enc"]
        p["W_enc"] = W_enc / g_in[:, None]
        if s_in is not None and not apply_b_dec_to_input:
            p["b_enc"] = p["b_enc"] - (s_in / g_in) @ W_enc
        if p.get("W_skip") is not None:
            if s_in is not None:
                p["b_dec"] = p["b_dec"] - (s_in / g_in) @ p["W_skip"]
            p["W_skip"] = p["W_skip"] / g_in[:, None]
    if g_out is not None:
        p["W_dec"] = p["W_dec"] * g_out[None, :]
        p["b_dec"] = p["b_dec"] * g_out + (0 if s_out is None else s_out)
        if p.get("W_skip") is not None:
            p["W_skip"] = p["W_skip"] * g_out[None, :]
    return p
