"""Architecture-neutral views used by the foreign formats.

``effective_encoder(d)`` returns (W [d_in,m], b [m], kind, threshold, k) with
``d.encode(x) == act(x @ W + b)`` where act is ReLU, JumpReLU(threshold) or TopK(k)
and any b_dec subtraction is folded into b (b = b_enc - b_dec @ W_enc).
BatchTopK/Matryoshka export as JumpReLU with their global threshold; Gated as the
equivalent JumpReLU (W = W_gate * exp(r), b = b_mag, threshold from the gate).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from sae.arch import (
    BatchTopKDictionary,
    GatedDictionary,
    JumpReLUDictionary,
    ReLUDictionary,
    TopKDictionary,
)
from sae.errors import UnknownArchitectureError


def encoder_parts(d, fold_b_dec: bool):
    """(W, b, kind, threshold, k) as numpy; see the module docstring."""
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


def build_from_parts(W, b, W_dec, b_dec, kind, threshold=None, k=None, *, W_skip=None,
                     in_site=None, out_site=None, apply_b_dec_to_input=False):
    """A dictionary from effective encoder parts (inverse of ``encoder_parts``)."""
    d_in, m = W.shape
    d_out = W_dec.shape[1]
    common = dict(d_out=d_out, in_site=in_site, out_site=out_site, skip=W_skip is not None,
                  apply_b_dec_to_input=apply_b_dec_to_input)
    if kind == "relu":
        d = ReLUDictionary(d_in, m, **common)
    elif kind == "topk":
        d = TopKDictionary(d_in, m, k=int(k), **common)
    elif kind == "jumprelu":
        d = JumpReLUDictionary(d_in, m, **common)
        d.log_threshold = mx.array(np.log(np.maximum(np.asarray(threshold, np.float64),
                                                     1e-30)).astype(np.float32))
    else:
        raise UnknownArchitectureError(f"unknown activation kind {kind!r}")
    d.W_enc, d.b_enc = mx.array(W.astype(np.float32)), mx.array(b.astype(np.float32))
    d.W_dec, d.b_dec = mx.array(W_dec.astype(np.float32)), mx.array(b_dec.astype(np.float32))
    if W_skip is not None:
        d.W_skip = mx.array(W_skip.astype(np.float32))
    return d
