"""Significance of co-occurrence: Fisher's exact test (one-sided) and Benjamini–Hochberg.

1. For features i, j over n tokens with counts a, b and co-occurrence c, the 2×2 table
   [[c, a−c], [b−c, n−a−b+c]] has, with the margins fixed, c ~ Hypergeom(n, a, b).
   Fisher's one-sided p-values are then P(X >= c) ("fire together more than chance",
   ``hypergeom.sf(c−1, n, a, b)``) and P(X <= c) ("avoid each other", ``hypergeom.cdf``);
   this equals ``scipy.stats.fisher_exact(table, alternative="greater"/"less")``, but
   vectorised over all pairs: the tail is summed away from the mode with the pmf ratio
   recursion, starting from a log-pmf computed with ``betaln`` (scipy's ``hypergeom.sf``
   loops in Python per pair: ~50 s for 2·10^5 pairs).
2. Benjamini–Hochberg: sort p ascending, q_(r) = min_{s >= r} p_(s) · M / s, clip to 1,
   unsort. ``n_tests`` = M may exceed len(p): the untested hypotheses (pairs not kept)
   count as p = 1, which makes every q at least as large as with their true p-values
   (the step-up procedure is monotone), i.e. conservative.
"""

from __future__ import annotations

import numpy as np

from sae.errors import ConfigError


def _log_comb(n, k):
    from scipy.special import betaln

    return -np.log1p(n) - betaln(n - k + 1.0, k + 1.0)


def _log_pmf(k, a, b, n):
    return _log_comb(a, k) + _log_comb(n - a, b - k) - _log_comb(n, b)


def _tail(k0, a, b, n, up: bool) -> np.ndarray:
    """Sum of the pmf from k0 moving away from the mode (up or down), vectorised.

    Terms shrink monotonically away from the mode, so each pair stops once its next term
    is below 1e-17 of its running sum (the ratio recursion needs no special functions).
    """
    k0, a, b, n = (np.asarray(x, np.float64) for x in np.broadcast_arrays(k0, a, b, n))
    lo, hi = np.maximum(0, a + b - n), np.minimum(a, b)
    inside = (k0 >= lo) & (k0 <= hi)
    total = np.where(inside, 1.0, 0.0)
    idx = np.nonzero(inside)[0]
    k, term = k0[idx].copy(), np.ones(idx.size)
    while idx.size:
        aa, bb, nn = a[idx], b[idx], n[idx]
        if up:
            ratio = (aa - k) * (bb - k) / ((k + 1) * (nn - aa - bb + k + 1))
            k += 1
            ok = k <= hi[idx]
        else:
            ratio = k * (nn - aa - bb + k) / ((aa - k + 1) * (bb - k + 1))
            k -= 1
            ok = k >= lo[idx]
        term = term * np.where(ok, ratio, 0.0)
        total[idx] += term
        go = ok & (term > 1e-17 * total[idx])
        idx, k, term = idx[go], k[go], term[go]
    with np.errstate(invalid="ignore"):
        return np.where(inside, np.exp(_log_pmf(k0, a, b, n)) * total, 0.0)


def fisher_greater(c, a, b, n) -> np.ndarray:
    """One-sided Fisher p-value P(X >= c), X ~ Hypergeom(n, a, b) (step 1).

    Above the mode the upper tail is summed directly; at or below it, 1 − P(X <= c−1)
    (then the tail is >= about one half, so the complement loses no precision).
    """
    return _one_sided(c, a, b, n, greater=True)


def fisher_less(c, a, b, n) -> np.ndarray:
    """One-sided Fisher p-value P(X <= c) (step 1), by the mirror of ``fisher_greater``."""
    return _one_sided(c, a, b, n, greater=False)


def _one_sided(c, a, b, n, greater: bool) -> np.ndarray:
    c, a, b, n = (np.asarray(x, np.float64) for x in np.broadcast_arrays(c, a, b, n))
    shape = c.shape
    c, a, b, n = (x.ravel() for x in (c, a, b, n))
    mode = np.floor((a + 1) * (b + 1) / (n + 2))
    # Sum the tail that lies away from the mode; otherwise take the complement.
    direct = c > mode if greater else c < mode
    p = np.empty(c.shape)
    d, o = direct, ~direct
    p[d] = _tail(c[d], a[d], b[d], n[d], up=greater)
    start = c[o] - 1 if greater else c[o] + 1
    p[o] = 1.0 - _tail(start, a[o], b[o], n[o], up=not greater)
    return np.clip(p, 0.0, 1.0).reshape(shape)


def benjamini_hochberg(p, n_tests: int | None = None) -> np.ndarray:
    """BH-adjusted p-values (q-values) of ``p`` in a family of ``n_tests`` hypotheses (step 2)."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise ConfigError(f"p-values must be 1-D, got shape {p.shape}")
    if p.size and (np.isnan(p).any() or p.min() < 0 or p.max() > 1):
        raise ConfigError("p-values must lie in [0, 1] and not be NaN")
    m = p.size if n_tests is None else int(n_tests)
    if m < p.size:
        raise ConfigError(f"n_tests={m} is smaller than the {p.size} p-values given")
    if p.size == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, p.size + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty_like(q)
    out[order] = np.minimum(q, 1.0)
    return out
