"""Per-feature statistics of one dictionary over a dataset (what dashboards show).

Algorithm (``feature_stats``):
  1. Pass 1 streams latents (``stream.iter_latents``). Over the counted tokens it sums,
     per feature: the firing count (activation > 0), the sum of firing activations, the
     maximum, and a histogram of firing activations on fixed log-spaced edges shared by
     all features (``np.bincount`` over feature·n_bins + bin; values outside the edges
     are counted as underflow / overflow). The same pass feeds the top-k tracker.
  2. density = count / n_tokens; mean = sum / count (over firing tokens); max = 0 for a
     feature that never fired.
  3. Pass 2 (only when quantile samples are requested): the latents come from pass 1's
     sparse cache when it stayed under ``cache_bytes``, else the dataset is read again.
     bin edges per feature at the quantiles of its firing distribution, read off the
     cumulative histogram of pass 1 (so edges lie on histogram edges: approximate
     quantiles, exact bins), then ``QuantileSampler`` fills a reservoir per bin.
  4. Weight statistics: logit effects (when the dictionary's out_site is in or adds to the
     residual stream: resid_*, attn_out, mlp_out) and
     decoder neighbours / opposing directions (``geometry``).
Memory is O(m · (n_bins + k · window)); nothing grows with the dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from attribution.sites import Site
from sae.errors import ConfigError
from sae.features.errors import EmptyDatasetError
from sae.features.examples import Examples, QuantileSampler, TopKTracker
from sae.features.geometry import (
    DecoderGeometry,
    TopTokens,
    decoder_geometry,
    logit_effects,
)
from sae.features.stream import (
    LatentBatch,
    StreamConfig,
    check_dictionary,
    iter_latents,
    reiterable,
)


@dataclass(frozen=True)
class FeatureStatsConfig:
    """What ``feature_stats`` computes."""

    stream: StreamConfig = field(default_factory=StreamConfig)
    """How the dataset is cut into contexts and batches."""
    top_k: int = 20
    """Top-activating examples kept per feature."""
    per_context: bool = True
    """At most one top example per context (its max token); False ranks every token."""
    window: int = 8
    """Tokens kept on each side of an example's centre token."""
    n_quantiles: int = 4
    """Activation-quantile bins for sampled examples (0 disables pass 2)."""
    quantile_examples: int = 5
    """Examples sampled per quantile bin (0 disables pass 2)."""
    hist_range: tuple = (1e-4, 1e4)
    """(low, high) of the shared log-spaced histogram edges."""
    hist_bins_per_decade: int = 20
    """Histogram resolution (also the resolution of the quantile edges)."""
    n_logits: int = 10
    """Promoted / suppressed tokens kept per feature (0 skips logit effects)."""
    n_neighbours: int = 10
    """Nearest decoder directions kept per feature (0 skips the decoder geometry)."""
    opposing_thresholds: tuple = (-0.7, -0.9)
    """Cosine thresholds below which two decoder directions count as opposing."""
    chunk: int = 1024
    """Rows per chunk in the weight computations (bounds memory at chunk × max(m, vocab))."""
    seed: int = 0
    """Seed of the reservoir priorities."""
    cache_bytes: int = 256 << 20
    """Pass-1 latents are kept sparse for pass 2 while they fit in this many bytes (12 per
    non-zero); beyond it the cache is dropped and pass 2 re-runs the model (0: always re-run)."""

    def __post_init__(self) -> None:
        lo, hi = self.hist_range
        if not 0 < lo < hi:
            raise ConfigError(f"hist_range must satisfy 0 < low < high, got {self.hist_range}")
        if min(self.top_k, self.hist_bins_per_decade, self.chunk) < 1 or self.window < 0:
            raise ConfigError("top_k, hist_bins_per_decade and chunk must be >= 1, window >= 0")
        if min(self.n_quantiles, self.quantile_examples, self.n_logits, self.n_neighbours) < 0:
            raise ConfigError("n_quantiles, quantile_examples, n_logits, n_neighbours must be >= 0")

    def hist_edges(self) -> np.ndarray:
        """The shared histogram edges (float64)."""
        lo, hi = np.log10(self.hist_range[0]), np.log10(self.hist_range[1])
        return np.logspace(lo, hi, round((hi - lo) * self.hist_bins_per_decade) + 1)


class QuantileExamples(NamedTuple):
    """Sampled examples per activation-quantile bin."""

    edges: np.ndarray
    """[m, n_bins + 1] bin edges per feature; bin q holds edges[q] <= a < edges[q+1]
    (last bin closed)."""
    examples: Examples
    """Rows g = feature · n_bins + q."""


@dataclass(frozen=True)
class FeatureStats:
    """Everything ``feature_stats`` measured (arrays indexed by feature)."""

    site: Site
    """Where the dictionary reads."""
    n_tokens: int
    """Counted tokens (padding and BOS excluded)."""
    n_contexts: int
    """Contexts read."""
    count: np.ndarray
    """[m] int64 tokens on which the feature fired (> 0)."""
    density: np.ndarray
    """[m] float64 count / n_tokens."""
    mean_activation: np.ndarray
    """[m] float64 mean over firing tokens (0 when it never fired)."""
    max_activation: np.ndarray
    """[m] float64 largest activation (0 when it never fired)."""
    hist_edges: np.ndarray
    """[n_bins + 1] shared histogram edges."""
    hist_counts: np.ndarray
    """[m, n_bins] int64 firing activations per bin."""
    underflow: np.ndarray
    """[m] int64 firing activations below hist_edges[0]."""
    overflow: np.ndarray
    """[m] int64 firing activations above hist_edges[-1]."""
    top: Examples
    """Top examples, rows = features."""
    window: int
    """Half-width of the example windows."""
    quantiles: QuantileExamples | None = None
    """Quantile-sampled examples (None when not requested)."""
    logits: TopTokens | None = None
    """Logit effects (None when skipped or not applicable)."""
    geometry: DecoderGeometry | None = None
    """Decoder neighbours and opposing counts (None when skipped)."""

    @property
    def width(self) -> int:
        """Number of features m."""
        return int(self.count.shape[0])


class _Moments:
    """Pass-1 accumulators (step 1)."""

    def __init__(self, m: int, edges: np.ndarray):
        self.edges, self.nb = edges, edges.size - 1
        self.n = 0
        self.count = np.zeros(m, np.int64)
        self.total = np.zeros(m, np.float64)
        self.max = np.zeros(m, np.float64)
        self.hist = np.zeros(m * self.nb, np.int64)
        self.under = np.zeros(m, np.int64)
        self.over = np.zeros(m, np.int64)

    def update(self, acts: np.ndarray, mask: np.ndarray) -> None:
        a = acts[mask]                                                  # [n, m]
        m = a.shape[1]
        self.n += a.shape[0]
        if a.shape[0]:
            np.maximum(self.max, a.max(axis=0), out=self.max)
        # Everything else from the firing entries only (one nonzero, then bincounts).
        rows, feat = np.nonzero(a > 0)
        vals = a[rows, feat]
        self.count += np.bincount(feat, minlength=m)
        self.total += np.bincount(feat, weights=vals, minlength=m)
        b = histogram_bins(vals, self.edges)
        self.under += np.bincount(feat[b < 0], minlength=m)
        self.over += np.bincount(feat[b >= self.nb], minlength=m)
        ok = (b >= 0) & (b < self.nb)
        self.hist += np.bincount(feat[ok] * self.nb + b[ok], minlength=m * self.nb)


class _LatentCache:
    """Pass-1 latents as per-batch sparse (row, col, value) triples, up to ``limit`` bytes."""

    def __init__(self, limit: int):
        self.limit, self.nbytes = int(limit), 0
        self.items: list | None = [] if limit > 0 else None

    def add(self, batch: LatentBatch) -> None:
        if self.items is None:
            return
        a = batch.acts[0]
        flat = a.reshape(-1, a.shape[-1])
        r, c = np.nonzero(flat)
        self.nbytes += 12 * r.size + batch.tokens.nbytes + batch.mask.nbytes
        if self.nbytes > self.limit:
            self.items = None  # too big: pass 2 re-runs the model instead
            return
        self.items.append((batch.tokens, batch.mask, batch.first_context, a.shape,
                           r.astype(np.int32), c.astype(np.int32), flat[r, c]))

    def batches(self):
        for tokens, mask, first, shape, r, c, v in self.items:
            dense = np.zeros(shape, np.float32)
            dense.reshape(-1, shape[-1])[r, c] = v
            yield LatentBatch(tokens, mask, {0: dense}, first)


def histogram_bins(vals: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``np.histogram``'s bin of each value (last bin closed); -1 below, n_bins above."""
    b = np.searchsorted(edges, vals, side="right") - 1
    return np.where(vals == edges[-1], edges.size - 2, b)


def quantile_edges(hist: np.ndarray, edges: np.ndarray, n_q: int, max_act: np.ndarray) -> np.ndarray:
    """[m, n_q + 1] per-feature bin edges at approximate quantiles (step 3)."""
    m = hist.shape[0]
    cum = np.cumsum(hist, axis=1)
    total = np.maximum(cum[:, -1:], 1)
    out = np.empty((m, n_q + 1))
    out[:, 0] = 0.0                                                    # firing means > 0
    for q in range(1, n_q):
        j = (cum < total * q / n_q).sum(axis=1)                        # first bin reaching q/n_q
        out[:, q] = edges[np.minimum(j + 1, edges.size - 1)]
    out[:, n_q] = np.maximum(max_act, out[:, n_q - 1])
    out[:, 1:n_q] = np.minimum(out[:, 1:n_q], out[:, n_q:n_q + 1])
    return np.maximum.accumulate(out, axis=1)


def feature_stats(model, dictionary, dataset, config: FeatureStatsConfig = FeatureStatsConfig(), *,
                  site: Site | str | None = None,
                  progress: Callable[[int], None] | None = None) -> FeatureStats:
    """Statistics of every feature of ``dictionary`` over ``dataset`` (see the module docstring).

    ``dataset``: path, iterable of texts / token-id arrays, or a callable returning one.
    ``progress`` is called with the number of tokens counted so far after every batch.
    """
    site = check_dictionary(model, dictionary, site)
    data = reiterable(dataset)
    m = int(dictionary.width)
    mom = _Moments(m, config.hist_edges())
    top = TopKTracker(m, config.top_k, config.window, config.per_context)
    n_ctx = 0
    cache = _LatentCache(config.cache_bytes if config.n_quantiles and config.quantile_examples else 0)
    for batch in iter_latents(model, {0: dictionary}, data, config.stream, sites={0: site}):
        a = batch.acts[0]
        mom.update(a, batch.mask)
        top.update(a, batch.mask, batch.tokens, batch.first_context)
        cache.add(batch)
        n_ctx = batch.first_context + batch.tokens.shape[0]
        if progress is not None:
            progress(mom.n)
    if mom.n == 0:
        raise EmptyDatasetError("no counted tokens: every position was padding or BOS")
    hist = mom.hist.reshape(m, mom.nb)
    quant = None
    if config.n_quantiles and config.quantile_examples:
        edges = quantile_edges(hist, mom.edges, config.n_quantiles, mom.max)
        sampler = QuantileSampler(edges, config.quantile_examples, config.window, config.seed)
        again = cache.batches() if cache.items is not None else iter_latents(
            model, {0: dictionary}, data, config.stream, sites={0: site})
        for batch in again:
            sampler.update(batch.acts[0], batch.mask, batch.tokens, batch.first_context)
        quant = QuantileExamples(edges, sampler.result())
    return FeatureStats(
        site=site, n_tokens=mom.n, n_contexts=n_ctx, count=mom.count, density=mom.count / mom.n,
        mean_activation=mom.total / np.maximum(mom.count, 1), max_activation=mom.max,
        hist_edges=mom.edges, hist_counts=hist, underflow=mom.under, overflow=mom.over,
        top=top.result(), window=config.window, quantiles=quant,
        logits=_logits(model, dictionary, config), geometry=_geometry(dictionary, config))


_WRITES_RESIDUAL = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def _logits(model, dictionary, config: FeatureStatsConfig) -> TopTokens | None:
    # Only a write vector added to the residual stream has a direct path to the logits
    # (an mlp_in SAE reconstructs a normalised copy, so it is skipped).
    out = getattr(dictionary, "out_site", None)
    if not config.n_logits or int(dictionary.d_out) != model.d_model or (
            out is not None and out.kind not in _WRITES_RESIDUAL):
        return None
    return logit_effects(model, dictionary.W_dec, config.n_logits, config.chunk)


def _geometry(dictionary, config: FeatureStatsConfig) -> DecoderGeometry | None:
    if not config.n_neighbours and not config.opposing_thresholds:
        return None
    return decoder_geometry(dictionary.W_dec, config.n_neighbours, config.opposing_thresholds, config.chunk)
