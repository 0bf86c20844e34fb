"""Attention-pattern scores that identify previous-token, duplicate-token and induction heads.

Algorithm:
  1. Draw ``n`` sequences [bos] + S + S, where S is ``seg_len`` distinct random
     non-special tokens (seeded). Position p of the second copy holds the token at
     position p - seg_len.
  2. Capture every layer's ``attn_pattern`` [B, H, T, T] with ``attribution.capture``.
  3. Scores per head, averaged over examples and query positions q:
     - previous-token: A[q, q-1] over q >= 2 (q = 1 would attend to <bos>);
     - two-back: A[q, q-2] over q >= 3;
     - duplicate-token: A[q, q-seg_len] over q in the second copy;
     - induction (canonical, Olsson et al.): A[q, q-seg_len+1] over q in the second
       copy, the token after the earlier occurrence of the current token;
     - induction_shifted: A[q, q-seg_len+2], one further on. A layer-1 head that
       matches its query against a two-back head's output and reads the answer
       from a previous-token head's output at that key attends there; it predicts
       the same token as a canonical induction head (our organisms learn this
       variant: see their cards).
  4. A head is identified as a kind when its score is >= ``threshold``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

import attribution  # noqa: F401  (optimised BLAS before mlx)
import mlx.core as mx
from attribution import Site, capture

from circuits.tasks.induction import bos_id, token_pool

HEAD_KINDS = ("previous_token", "two_back", "duplicate_token", "induction", "induction_shifted")


class HeadScores(NamedTuple):
    """Attention-pattern scores of every head."""

    scores: dict[str, np.ndarray]
    """kind -> [n_layers, n_heads] mean attention on the kind's target key."""
    identified: dict[str, list[dict]]
    """kind -> [{layer, head, score}] with score >= threshold, best first."""
    threshold: float
    """Identification threshold."""


def repeated_sequences(tokenizer: Any, n: int, seg_len: int, seed: int) -> np.ndarray:
    """[n, 1 + 2*seg_len] (or without bos) int32 sequences [bos] + S + S."""
    pool = token_pool(tokenizer)
    rng = np.random.default_rng([seed, 3])
    bos = bos_id(tokenizer)
    rows = []
    for _ in range(n):
        seg = pool[rng.choice(pool.size, size=seg_len, replace=False)]
        rows.append([*([] if bos is None else [bos]), *seg, *seg])
    return np.asarray(rows, dtype=np.int32)


def pattern_scores(patterns: mx.array, seg_len: int, offset: int) -> dict[str, np.ndarray]:
    """Per-head scores from one layer's patterns [B, H, T, T] (``offset``: 1 with bos)."""
    a = np.array(patterns.astype(mx.float32))
    t = a.shape[-1]
    q_prev = np.arange(max(2, offset + 1), t)
    q_two = np.arange(max(3, offset + 2), t)
    q_rep = np.arange(offset + seg_len, t)
    return {
        "previous_token": a[:, :, q_prev, q_prev - 1].mean(axis=(0, 2)),
        "two_back": a[:, :, q_two, q_two - 2].mean(axis=(0, 2)),
        "duplicate_token": a[:, :, q_rep, q_rep - seg_len].mean(axis=(0, 2)),
        "induction": a[:, :, q_rep, q_rep - seg_len + 1].mean(axis=(0, 2)),
        "induction_shifted": a[:, :, q_rep[:-1], q_rep[:-1] - seg_len + 2].mean(axis=(0, 2)),
    }


def head_scores(model: Any, n: int = 64, seg_len: int = 12, seed: int = 0,
                threshold: float = 0.3) -> HeadScores:
    """Previous-token, duplicate-token and induction scores of every head of ``model``."""
    toks = repeated_sequences(model.tokenizer, n, seg_len, seed)
    offset = 1 if bos_id(model.tokenizer) is not None else 0
    sites = [Site(layer, "attn_pattern") for layer in range(model.n_layers)]
    cache = capture(model, mx.array(toks), sites)
    per_layer = [pattern_scores(cache[s], seg_len, offset) for s in sites]
    scores = {k: np.stack([p[k] for p in per_layer]) for k in HEAD_KINDS}
    identified = {}
    for kind, s in scores.items():
        hits = [{"layer": int(layer), "head": int(h), "score": float(s[layer, h])}
                for layer, h in zip(*np.nonzero(s >= threshold))]
        identified[kind] = sorted(hits, key=lambda d: -d["score"])
    return HeadScores(scores, identified, threshold)


def heads_card(hs: HeadScores, n: int, seg_len: int, seed: int) -> dict:
    """JSON-ready summary of ``head_scores`` for the model card."""
    return {
        "method": f"mean attention to the target key on {n} sequences [bos]+S+S, |S|={seg_len}, "
                  f"seed {seed} (circuits.organisms.heads.head_scores)",
        "threshold": hs.threshold,
        "identified": hs.identified,
        "scores": {k: np.round(v, 4).tolist() for k, v in hs.scores.items()},
    }
