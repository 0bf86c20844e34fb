"""Feature co-activation over a dataset: counts, Jaccard, PMI/NPMI, Pearson, Fisher + BH.

Algorithm:
  1. Stream latents (``stream.iter_latents``); for dictionaries A and B (B = A for one
     layer, or the next layer's dictionary for adjacent layers; one forward serves both)
     take the counted tokens: X_A [n, m_A], X_B [n, m_B]; a feature is *active* when its
     activation exceeds ``threshold``.
  2. Per batch, with sparse CSR matrices: binary counts C += 1[X_A]ᵀ 1[X_B] and
     co-moments S += X_Aᵀ X_B (only co-firing pairs are non-zero), plus per-feature counts,
     sums and sums of squares. When m_A · m_B <= ``dense_limit`` the running totals are
     dense arrays (fast); above it they stay sparse, so m × m is never materialised.
  3. Pairs with C_ij >= ``min_count`` are kept (i < j for one dictionary), and for them:
       Jaccard = c / (a + b − c);  PMI = ln(c·n / (a·b));  NPMI = PMI / −ln(c / n)
       Pearson r = (n·S − Σx·Σy) / sqrt((n·Σx² − (Σx)²)(n·Σy² − (Σy)²))  over all n tokens
       p = Fisher one-sided "together" (``significance``), q = BH over *all* pairs
       (m(m−1)/2 or m_A·m_B; untested pairs count as p = 1: conservative).
  4. ``coactivation_report`` does the same densely for a small set of circuit features
     (possibly at several sites), keeps every pair (count 0 included), adds the "apart"
     test, and labels each pair: together / apart / never (both fire, never jointly) /
     silent (one never fires) / independent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sae.errors import ConfigError
from sae.features.errors import EmptyDatasetError
from sae.features.significance import benjamini_hochberg, fisher_greater
from sae.features.stream import StreamConfig, check_dictionary, iter_latents


@dataclass(frozen=True)
class CoactivationConfig:
    """What ``coactivation`` / ``coactivation_report`` compute."""

    stream: StreamConfig = field(default_factory=StreamConfig)
    """How the dataset is cut into contexts and batches."""
    threshold: float = 0.0
    """A feature is active on a token when its activation exceeds this."""
    min_count: int = 5
    """Keep only pairs active together on at least this many tokens (dataset-wide mode)."""
    alpha: float = 0.05
    """False-discovery rate for the BH-controlled ``significant`` columns."""
    dense_limit: int = 1 << 22
    """Largest m_A · m_B accumulated in dense arrays; above it the totals stay sparse."""

    def __post_init__(self) -> None:
        if self.min_count < 1 or not 0 < self.alpha < 1 or self.dense_limit < 0:
            raise ConfigError("min_count must be >= 1, alpha in (0, 1), dense_limit >= 0")


class PairAccumulator:
    """Running co-activation totals of two feature sets (steps 1-2); B is A when ``same``."""

    def __init__(self, m_a: int, m_b: int | None = None, threshold: float = 0.0,
                 dense_limit: int = 1 << 22):
        self.same = m_b is None
        self.m_a, self.m_b = int(m_a), int(m_a if m_b is None else m_b)
        self.threshold, self.n = float(threshold), 0
        self.dense = self.m_a * self.m_b <= dense_limit
        shape = (self.m_a, self.m_b)
        # Counts are held as float64 (exact below 2**53) so sparse products add without casts.
        self.C = np.zeros(shape) if self.dense else sp.csr_matrix(shape, dtype=np.float64)
        self.S = np.zeros(shape, np.float64) if self.dense else sp.csr_matrix(shape, dtype=np.float64)
        self.side = [_Marginals(self.m_a), _Marginals(self.m_b)]

    def update(self, a: np.ndarray, b: np.ndarray | None = None) -> None:
        """Add tokens: a [n, m_A] (and b [n, m_B] aligned row by row)."""
        xa, ba = _csr(a, self.threshold)
        xb, bb = (xa, ba) if b is None else _csr(b, self.threshold)
        self.n += a.shape[0]
        self.side[0].update(xa, ba)
        self.side[1].update(xb, bb)
        c, s = ba.T @ bb, xa.T @ xb
        if self.dense:
            self.C += c.toarray()
            self.S += s.toarray()
        else:
            self.C, self.S = self.C + c.tocsr(), self.S + s.tocsr()

    def pairs(self, min_count: int) -> tuple[np.ndarray, ...]:
        """(i, j, count, co-moment) of pairs with count >= min_count (i < j when ``same``)."""
        if self.dense:
            i, j = np.nonzero(self.C >= min_count)
            c, s = self.C[i, j], self.S[i, j]
        else:
            coo = self.C.tocoo()
            keep = coo.data >= min_count
            i, j, c = coo.row[keep], coo.col[keep], coo.data[keep]
            s = np.asarray(self.S[i, j]).ravel()
        if self.same:
            up = i < j
            i, j, c, s = i[up], j[up], c[up], s[up]
        return i.astype(np.int64), j.astype(np.int64), np.rint(c).astype(np.int64), s

    @property
    def n_pairs(self) -> int:
        """Size of the hypothesis family: all unordered (or cross) pairs."""
        return self.m_a * (self.m_a - 1) // 2 if self.same else self.m_a * self.m_b


class _Marginals:
    def __init__(self, m: int):
        self.count = np.zeros(m, np.int64)
        self.sum = np.zeros(m, np.float64)
        self.sumsq = np.zeros(m, np.float64)

    def update(self, x: sp.csr_matrix, bx: sp.csr_matrix) -> None:
        self.count += np.asarray(bx.sum(axis=0), dtype=np.int64).ravel()
        self.sum += np.asarray(x.sum(axis=0)).ravel()
        self.sumsq += np.asarray(x.multiply(x).sum(axis=0)).ravel()


def _csr(a: np.ndarray, threshold: float) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(values, active indicator) as CSR matrices, from one ``nonzero`` over the dense batch."""
    rows, cols = np.nonzero(a)
    vals = a[rows, cols].astype(np.float64)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=a.shape[0]))])
    x = sp.csr_matrix((vals, cols, indptr), shape=a.shape)
    on = vals > threshold
    indptr_b = np.concatenate([[0], np.cumsum(np.bincount(rows[on], minlength=a.shape[0]))])
    return x, sp.csr_matrix((np.ones(int(on.sum())), cols[on], indptr_b), shape=a.shape)


def pair_statistics(i, j, c, s, ma: _Marginals, mb: _Marginals, n: int) -> pd.DataFrame:
    """Step 3's columns for the given pairs (plain numpy; also used by the report)."""
    a, b = ma.count[i], mb.count[j]
    c = np.asarray(c, np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        union = a + b - c
        jac = np.where(union > 0, c / np.maximum(union, 1), 0.0)
        pmi = np.log(c * float(n)) - np.log(a.astype(np.float64) * b)
        pmi = np.where(c > 0, pmi, -np.inf)
        h = -np.log(c / float(n))
        npmi = np.where(c == 0, -1.0, np.where(h > 0, pmi / np.where(h > 0, h, 1), 1.0))
        cov = n * np.asarray(s, np.float64) - ma.sum[i] * mb.sum[j]
        var = (n * ma.sumsq[i] - ma.sum[i] ** 2) * (n * mb.sumsq[j] - mb.sum[j] ** 2)
        r = np.where(var > 0, cov / np.sqrt(np.where(var > 0, var, 1)), np.nan)
    return pd.DataFrame({"i": i, "j": j, "count": c, "count_i": a, "count_j": b, "jaccard": jac,
                         "pmi": pmi, "npmi": npmi, "pearson": np.clip(r, -1, 1),
                         "p_together": fisher_greater(c, a, b, n)})


class Coactivation(NamedTuple):
    """Dataset-wide co-activation of one dictionary (or two adjacent ones)."""

    pairs: pd.DataFrame
    """One row per kept pair: i, j, count, count_i, count_j, jaccard, pmi, npmi, pearson,
    p_together, q_together (BH over ``n_tests``), significant; sorted by count descending."""
    features: pd.DataFrame
    """Per feature of each side: side ("a"/"b"), feature, count, density."""
    n_tokens: int
    """Counted tokens."""
    n_tests: int
    """Size of the BH family (all pairs)."""


def coactivation_from_batches(batches: Iterable, m_a: int, m_b: int | None = None,
                              config: CoactivationConfig = CoactivationConfig()) -> Coactivation:
    """Co-activation from an iterable of ``a`` [n, m_A] or ``(a, b)`` token-aligned arrays."""
    acc = PairAccumulator(m_a, m_b, config.threshold, config.dense_limit)
    for item in batches:
        a, b = (item, None) if isinstance(item, np.ndarray) else item
        acc.update(a, b)
    return finish(acc, config)


def finish(acc: PairAccumulator, config: CoactivationConfig) -> Coactivation:
    """Step 3 on a filled accumulator."""
    if acc.n == 0:
        raise EmptyDatasetError("co-activation needs at least one counted token")
    i, j, c, s = acc.pairs(config.min_count)
    df = pair_statistics(i, j, c, s, acc.side[0], acc.side[1], acc.n)
    df["q_together"] = benjamini_hochberg(df["p_together"].to_numpy(), acc.n_pairs)
    df["significant"] = df["q_together"] <= config.alpha
    df = df.sort_values(["count", "i", "j"], ascending=[False, True, True], ignore_index=True)
    sides = [("a", acc.side[0])] + ([] if acc.same else [("b", acc.side[1])])
    feats = pd.concat([pd.DataFrame({"side": name, "feature": np.arange(mg.count.size), "count": mg.count,
                                     "density": mg.count / acc.n}) for name, mg in sides], ignore_index=True)
    return Coactivation(df, feats, acc.n, acc.n_pairs)


def coactivation(model, dictionary, dataset, config: CoactivationConfig = CoactivationConfig(), *,
                 other=None, site=None, other_site=None) -> Coactivation:
    """Co-activation of ``dictionary``'s features with each other, or with ``other``'s (e.g. the
    next layer's dictionary; its features are column j), over ``dataset`` (steps 1-3)."""
    dicts = {"a": dictionary} if other is None else {"a": dictionary, "b": other}
    sites = {"a": check_dictionary(model, dictionary, site)}
    if other is not None:
        sites["b"] = check_dictionary(model, other, other_site)

    def batches():
        for batch in iter_latents(model, dicts, dataset, config.stream, sites=sites):
            a = batch.acts["a"][batch.mask]
            yield a if other is None else (a, batch.acts["b"][batch.mask])

    m_b = None if other is None else int(other.width)
    return coactivation_from_batches(batches(), int(dictionary.width), m_b, config)
