"""Weight-based feature statistics: logit effects, decoder neighbours, opposing directions.

Logit effects (``logit_effects``), the direct path of a feature's write vector v = W_dec[i]:
  1. logits = softcap(final_norm(h) @ W_U). The final norm is identified by probing
     (``attribution.model.norms.norm_form``):
       RMSNorm   norm(h) = h · r(h) · g          -> direction v · g
       Gemma     norm(h) = h · r(h) · (1 + g)    -> direction v · (1 + g)
       LayerNorm norm(h) = (h − mean h) · r(h) · g + b  -> direction (v − mean v) · g
     r(h) > 0 depends on the whole residual, not on the feature: it rescales every
     token's effect by the same positive factor, so the *ranking* within a feature is
     exact while the magnitudes are in "per unit of r" (as if r = 1). The bias b and
     Gemma2's softcap (monotone) do not change the ranking either.
  2. effects = (v · g) @ W_U, computed for chunks of features (never [m, vocab] at once),
     keeping the top-n and bottom-n tokens per feature with ``argpartition``.
Decoder geometry (``decoder_geometry``), with unit rows u_i = W_dec[i] / ||W_dec[i]||:
  1. For a chunk of rows, S = U[chunk] @ Uᵀ ([chunk, m], never m × m).
  2. Neighbours: top-n of S per row excluding the row itself.
  3. Opposing directions: per row, the number of j with S_ij < −0.7 (and < −0.9); the
     number of unordered pairs is the sum over rows divided by 2 (S is symmetric).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sae.features.errors import DictionaryModelMismatchError


class TopTokens(NamedTuple):
    """Per-feature top promoted and suppressed tokens along W_dec · norm gain · W_U."""

    promoted_ids: np.ndarray
    """[m, n] int64 token ids, largest effect first."""
    promoted: np.ndarray
    """[m, n] float32 effects (per unit of the final norm's data-dependent scale)."""
    suppressed_ids: np.ndarray
    """[m, n] int64 token ids, most negative first."""
    suppressed: np.ndarray
    """[m, n] float32 effects."""
    norm: str
    """How the final norm was applied: "rms", "rms_1p", "layer" or "none"."""


class DecoderGeometry(NamedTuple):
    """Nearest decoder directions and counts of strongly opposing ones."""

    neighbour_ids: np.ndarray
    """[m, n] int64 features with the largest cosine, best first."""
    neighbour_cos: np.ndarray
    """[m, n] float32 their cosines."""
    opposing: np.ndarray
    """[m, len(thresholds)] int64: per feature, how many others have cosine < threshold."""
    opposing_pairs: dict
    """{threshold: number of unordered pairs with cosine < threshold}."""


def final_norm_gain(model) -> tuple[np.ndarray | None, str, bool]:
    """(gain [d] or None, form, centre): how the final norm scales a direction (step 1)."""
    from attribution.model.norms import norm_form

    norm = getattr(model, "final_norm", None)
    form = norm_form(norm) if norm is not None else None
    if form is None:
        return None, "none", False
    w = norm.get("weight") if isinstance(norm, dict) else None
    g = None if w is None else np.array(w.astype(_f32()), dtype=np.float64)
    if g is not None and form == "rms_1p":
        g = 1.0 + g
    return g, form, form == "layer"


def _f32():
    import mlx.core as mx

    return mx.float32


def _to_np(a) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a.astype(np.float32, copy=False)
    return np.array(a.astype(_f32()), dtype=np.float32)


def _top_n(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the n largest entries per row, sorted descending."""
    n = min(n, x.shape[1])
    part = np.argpartition(-x, n - 1, axis=1)[:, :n]
    vals = np.take_along_axis(x, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64), np.take_along_axis(vals, order, axis=1)


def logit_effects(model, W_dec, n: int = 10, chunk: int = 512) -> TopTokens:
    """Top-n promoted / suppressed tokens per feature (step 2); W_dec [m, d_model]."""
    W = _to_np(W_dec).astype(np.float64)
    if W.shape[1] != model.d_model:
        raise DictionaryModelMismatchError(
            f"W_dec has d_out={W.shape[1]} but the model's d_model={model.d_model}; logit effects "
            "need a dictionary that writes into this model's residual stream")
    g, form, centre = final_norm_gain(model)
    if centre:
        W = W - W.mean(axis=1, keepdims=True)
    if g is not None:
        W = W * g
    W_U = _to_np(model.W_U)                                            # [d, vocab]
    out = [[], [], [], []]
    for s in range(0, W.shape[0], chunk):
        e = W[s:s + chunk].astype(np.float32) @ W_U
        pi, pv = _top_n(e, n)
        si, sv = _top_n(-e, n)
        for lst, a in zip(out, (pi, pv, si, -sv)):
            lst.append(a)
    pi, pv, si, sv = (np.concatenate(x) for x in out)
    return TopTokens(pi, pv.astype(np.float32), si, sv.astype(np.float32), form)


def decoder_geometry(W_dec, n: int = 10, thresholds=(-0.7, -0.9), chunk: int = 1024) -> DecoderGeometry:
    """Neighbours and opposing counts from decoder cosines, chunked (steps 1-3)."""
    W = _to_np(W_dec)
    U = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    m = U.shape[0]
    n = min(n, m - 1)
    ids, coss, opp = [], [], []
    for s in range(0, m, chunk):
        S = U[s:s + chunk] @ U.T
        rows = np.arange(S.shape[0])
        opp.append(np.stack([(S < t).sum(axis=1) for t in thresholds], axis=1))
        S[rows, s + rows] = -np.inf                                    # not its own neighbour
        if n > 0:
            i, c = _top_n(S, n)
            ids.append(i)
            coss.append(c)
    opposing = np.concatenate(opp).astype(np.int64)
    if n > 0:
        nid, ncos = np.concatenate(ids), np.concatenate(coss).astype(np.float32)
    else:
        nid, ncos = np.zeros((m, 0), np.int64), np.zeros((m, 0), np.float32)
    pairs = {float(t): int(opposing[:, j].sum() // 2) for j, t in enumerate(thresholds)}
    return DecoderGeometry(nid, ncos, opposing, pairs)
