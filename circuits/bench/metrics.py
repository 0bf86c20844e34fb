"""Recovery metrics against a ground-truth set: ROC AUC and precision/recall at k.

Algorithm:
  1. ``roc_auc``: the Mann-Whitney form, P(score of a random positive > score of a
     random negative) + 1/2 P(tie), computed from average ranks (ties share ranks).
  2. ``precision_recall_at_k``: take the k highest scores (stable order), count
     positives among them; precision = hits / k, recall = hits / #positives.
     At k = #positives the two are equal.
"""

from __future__ import annotations

import numpy as np

from circuits.errors import BenchmarkError


def _avg_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def roc_auc(scores, positive) -> float:
    """ROC AUC of ``scores`` for the boolean labels ``positive`` (ties count 1/2)."""
    s, y = np.asarray(scores, float), np.asarray(positive, bool)
    if s.shape != y.shape:
        raise BenchmarkError(f"scores {s.shape} and labels {y.shape} differ in shape")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise BenchmarkError("ROC AUC needs at least one positive and one negative")
    r = _avg_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_recall_at_k(scores, positive, k: int | None = None) -> tuple[float, float]:
    """(precision, recall) of the top ``k`` scores (default k = number of positives)."""
    s, y = np.asarray(scores, float), np.asarray(positive, bool)
    k = int(y.sum()) if k is None else int(k)
    if k < 1 or k > len(s):
        raise BenchmarkError(f"k must lie in [1, {len(s)}], got {k}")
    hits = int(y[np.argsort(-s, kind="stable")[:k]].sum())
    return hits / k, hits / max(int(y.sum()), 1)
