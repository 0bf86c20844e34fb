"""Synthetic activations with known sparse features (ground truth for dictionary learning).

Algorithm (``make_truth`` once per config, then ``sample`` / ``stream`` per batch):
  1. Directions: ``n_features`` unit-norm Gaussian vectors in R^d (rows of ``directions``);
     with ``orthogonalize`` and ``n_features <= d`` they are made orthonormal (QR).
  2. Firing probabilities: Zipf-like p_i = c · i^-alpha (i = 1..n_features), with c found
     by bisection so that sum_i p_i = ``mean_l0`` after clipping at ``max_prob`` (the
     expected number of active features per row is exactly ``mean_l0``).
  3. Hierarchy (optional): ``n_parents`` parents are drawn among the most frequent quarter
     of features, each gets ``children_per_parent`` children drawn among the rest. Because
     p decreases with i, p_child <= p_parent; a child's own event fires with probability
     q_c = p_c / p_parent and the child fires only when its parent fires and its own
     event fires, so its marginal rate stays p_c (exactly, without correlation).
  4. Firing events: a Gaussian copula. z = sqrt(1 - s)·e + sqrt(s)·(g @ L^T) with
     e ~ N(0, I) per feature, g ~ N(0, I_r) shared, L [n_features, r] with unit rows; a
     feature's own event is z_i < Phi^-1(q_i). Each z_i is N(0, 1) so the marginals are
     q_i; corr(z_i, z_j) = s·<L_i, L_j>. s = 0 (or r = 0) gives independent events.
  5. Magnitudes: per-feature means m_i = ``magnitude_mean`` · exp(``magnitude_spread`` ·
     N(0, 1)); per firing event |N(m_i, std_i)| ("folded_normal", std_i =
     ``magnitude_std`` · m_i), m_i · Exp(1) ("exponential") or a lognormal with mean m_i
     and log-std ``magnitude_std`` ("lognormal").
  6. Activations: x = codes @ directions + bias + ``noise_std`` · N(0, I), float32; the
     codes [n, n_features] are the true sparse codes (magnitude where firing, else 0).

Every random draw comes from ``numpy.random.default_rng`` seeded by (``seed``, purpose,
batch index), so the truth and each batch are reproducible and do not depend on the order of calls.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Literal

import numpy as np
from scipy.special import ndtri

from sae.errors import ConfigError

Magnitude = Literal["folded_normal", "exponential", "lognormal"]
_PURPOSE_TRUTH, _PURPOSE_SAMPLE = 1, 2


@dataclass(frozen=True)
class SyntheticConfig:
    """Configuration of a synthetic feature model (see the module docstring)."""

    d: int = 256
    """Hidden size (dimension of every activation row)."""
    n_features: int = 4096
    """Number of true features (normally > d: superposition)."""
    mean_l0: float = 25.0
    """Expected number of active true features per row (sum of firing probabilities)."""
    zipf_alpha: float = 1.0
    """Zipf exponent: p_i ∝ i^-alpha before scaling to ``mean_l0`` (0 = uniform)."""
    max_prob: float = 0.5
    """Upper clip of any feature's firing probability."""
    magnitude: Magnitude = "folded_normal"
    """Distribution of a firing feature's magnitude (folded_normal, exponential, lognormal)."""
    magnitude_mean: float = 1.0
    """Typical per-feature mean magnitude."""
    magnitude_std: float = 0.5
    """folded_normal: std relative to the feature's mean; lognormal: std of log magnitude."""
    magnitude_spread: float = 0.0
    """Log-std of per-feature means around ``magnitude_mean`` (0 = all equal)."""
    correlation_rank: int = 0
    """Rank r of the shared Gaussian factor in the firing copula (0 = independent)."""
    correlation_strength: float = 0.0
    """Share s in [0, 1) of each feature's latent variance from the shared factor."""
    n_parents: int = 0
    """Number of hierarchy parents (drawn among the most frequent quarter of features)."""
    children_per_parent: int = 0
    """Children per parent; a child fires only when its parent fires (one level)."""
    orthogonalize: bool = False
    """Make directions orthonormal (needs n_features <= d)."""
    bias_norm: float = 0.0
    """Norm of a constant random offset added to every row (0 = none)."""
    noise_std: float = 0.0
    """Std of isotropic Gaussian noise added to every coordinate."""
    seed: int = 0
    """Seed of the truth (directions, probabilities, hierarchy) and of the batches."""

    def __post_init__(self) -> None:
        if self.d < 1 or self.n_features < 1:
            raise ConfigError(f"d and n_features must be >= 1 (got d={self.d}, "
                              f"n_features={self.n_features})")
        if not 0 < self.mean_l0 <= self.n_features * self.max_prob:
            raise ConfigError(f"mean_l0={self.mean_l0} must be in (0, n_features*max_prob="
                              f"{self.n_features * self.max_prob}]; lower mean_l0 or raise "
                              "max_prob")
        if not 0 < self.max_prob <= 1 or self.zipf_alpha < 0:
            raise ConfigError("need 0 < max_prob <= 1 and zipf_alpha >= 0")
        if self.magnitude not in ("folded_normal", "exponential", "lognormal"):
            raise ConfigError(f"unknown magnitude {self.magnitude!r}; use folded_normal, "
                              "exponential or lognormal")
        if self.magnitude_mean <= 0 or self.magnitude_std < 0 or self.magnitude_spread < 0:
            raise ConfigError("need magnitude_mean > 0, magnitude_std >= 0, magnitude_spread >= 0")
        if not 0 <= self.correlation_strength < 1 or self.correlation_rank < 0:
            raise ConfigError("need 0 <= correlation_strength < 1 and correlation_rank >= 0")
        if self.n_parents < 0 or self.children_per_parent < 0:
            raise ConfigError("n_parents and children_per_parent must be >= 0")
        top = self.n_features // 4
        n_children = self.n_parents * self.children_per_parent
        if self.n_parents > top or n_children > self.n_features - top:
            raise ConfigError(f"hierarchy too large: n_parents <= {top} and n_parents*"
                              f"children_per_parent <= {self.n_features - top} for "
                              f"n_features={self.n_features}")
        if self.orthogonalize and self.n_features > self.d:
            raise ConfigError(f"orthogonalize needs n_features <= d (got {self.n_features} > "
                              f"{self.d}); set orthogonalize=False")
        if self.bias_norm < 0 or self.noise_std < 0:
            raise ConfigError("bias_norm and noise_std must be >= 0")


def cpu_preset(**overrides) -> SyntheticConfig:
    """CPU-sized preset: d=256, 4,096 features, L0 25, Zipf 1, correlation, hierarchy."""
    base = SyntheticConfig(d=256, n_features=4096, mean_l0=25.0, zipf_alpha=1.0, max_prob=0.5,
                           magnitude="folded_normal", magnitude_mean=1.0, magnitude_std=0.5,
                           magnitude_spread=0.3, correlation_rank=16, correlation_strength=0.3,
                           n_parents=64, children_per_parent=4, seed=0)
    return replace(base, **overrides)


def synth_sae_bench_16k_preset(**overrides) -> SyntheticConfig:
    """Published-scale preset modelled on SAELens's SynthSAEBench-16k.

    ASSUMPTIONS (the published config was not available offline; check against SAELens's
    ``SyntheticModel.from_pretrained`` config before comparing numbers): 16,384 features in
    a 768-dimensional space, Zipfian firing (exponent 0.5, max prob 0.4), mean L0 ≈ 34,
    magnitudes |N(1, 0.5)| with per-feature spread, a low-rank (rank 100) firing
    correlation, one-level hierarchy (128 parents × 4 children, SAELens's trees are deeper
    and may be mutually exclusive), unit-norm bias. The generator's Zipf scaling (to a mean
    L0) differs from SAELens's min/max-prob rescaling.
    """
    base = SyntheticConfig(d=768, n_features=16384, mean_l0=34.0, zipf_alpha=0.5, max_prob=0.4,
                           magnitude="folded_normal", magnitude_mean=1.0, magnitude_std=0.5,
                           magnitude_spread=0.3, correlation_rank=100, correlation_strength=0.3,
                           n_parents=128, children_per_parent=4, bias_norm=1.0, seed=0)
    return replace(base, **overrides)


@dataclass(frozen=True)
class SyntheticTruth:
    """The ground truth drawn from a ``SyntheticConfig`` (arrays are read-only)."""

    config: SyntheticConfig
    """The config it was drawn from."""
    directions: np.ndarray
    """[n_features, d] unit-norm true feature directions (float32)."""
    probs: np.ndarray
    """[n_features] marginal firing probabilities (float64)."""
    own_probs: np.ndarray
    """[n_features] probability of a feature's own event (p / p_parent for children)."""
    mean_magnitudes: np.ndarray
    """[n_features] per-feature magnitude means."""
    parent: np.ndarray
    """[n_features] parent index of each feature, -1 for none."""
    loadings: np.ndarray
    """[n_features, r] unit-row factor loadings of the firing copula (r may be 0)."""
    bias: np.ndarray
    """[d] constant offset (float32)."""

    @property
    def hierarchy_pairs(self) -> np.ndarray:
        """[n_pairs, 2] (parent, child) index pairs."""
        child = np.nonzero(self.parent >= 0)[0]
        return np.stack([self.parent[child], child], axis=1)

    @property
    def latent_correlation(self) -> np.ndarray:
        """[n_features, n_features] correlation of the copula's latent z (1 on the diagonal)."""
        s = self.config.correlation_strength if self.loadings.shape[1] else 0.0
        c = s * (self.loadings @ self.loadings.T)
        np.fill_diagonal(c, 1.0)
        return c


@dataclass(frozen=True)
class SyntheticBatch:
    """One batch of generated rows."""

    x: np.ndarray
    """[n, d] float32 activations."""
    codes: np.ndarray | None
    """[n, n_features] float32 true sparse codes (None when not requested)."""


def zipf_probs(n: int, alpha: float, mean_l0: float, max_prob: float) -> np.ndarray:
    """p_i = min(c·i^-alpha, max_prob) with c such that sum p = mean_l0 (bisection on log c)."""
    base = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    lo, hi = np.log(mean_l0 / base.sum()) - 1.0, np.log(max_prob / base[-1]) + 1.0
    # sum(min(c·base, max_prob)) is monotone in c, so bisection converges.
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.minimum(np.exp(mid) * base, max_prob).sum() < mean_l0:
            lo = mid
        else:
            hi = mid
    return np.minimum(np.exp(hi) * base, max_prob)


def _rng(seed: int, purpose: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, index])


def make_truth(config: SyntheticConfig) -> SyntheticTruth:
    """Draw directions, probabilities, magnitudes, hierarchy and copula loadings."""
    c = config
    rng = _rng(c.seed, _PURPOSE_TRUTH)
    w = rng.standard_normal((c.n_features, c.d))
    if c.orthogonalize:
        q, _ = np.linalg.qr(w.T)
        w = q.T
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    probs = zipf_probs(c.n_features, c.zipf_alpha, c.mean_l0, c.max_prob)
    means = c.magnitude_mean * np.exp(c.magnitude_spread * rng.standard_normal(c.n_features))
    parent = np.full(c.n_features, -1, np.int64)
    top = c.n_features // 4
    if c.n_parents and c.children_per_parent:
        parents = rng.choice(top, c.n_parents, replace=False)
        children = rng.choice(np.arange(top, c.n_features),
                              c.n_parents * c.children_per_parent, replace=False)
        parent[children] = np.repeat(parents, c.children_per_parent)
    own = probs.copy()
    has = parent >= 0
    own[has] = probs[has] / probs[parent[has]]
    r = c.correlation_rank if c.correlation_strength > 0 else 0
    loadings = rng.standard_normal((c.n_features, r))
    if r:
        loadings /= np.linalg.norm(loadings, axis=1, keepdims=True)
    bias = rng.standard_normal(c.d)
    bias *= c.bias_norm / np.linalg.norm(bias)
    arrays = dict(directions=w.astype(np.float32), probs=probs, own_probs=own,
                  mean_magnitudes=means, parent=parent, loadings=loadings,
                  bias=bias.astype(np.float32))
    for a in arrays.values():
        a.setflags(write=False)
    return SyntheticTruth(config=c, **arrays)


def fires(truth: SyntheticTruth, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, n_features] bool firing events (copula, then hierarchy gating)."""
    c = truth.config
    r = truth.loadings.shape[1]
    if r:
        # float32 latents: half the memory traffic; thresholds stay exact to ~1e-7.
        z = rng.standard_normal((n, c.n_features), np.float32)
        z *= np.float32(np.sqrt(1.0 - c.correlation_strength))
        g = rng.standard_normal((n, r), np.float32)
        z += np.float32(np.sqrt(c.correlation_strength)) * (g @ truth.loadings.T.astype(np.float32))
        on = z < ndtri(truth.own_probs)
    else:
        on = rng.random((n, c.n_features), np.float32) < truth.own_probs
    child = np.nonzero(truth.parent >= 0)[0]
    if child.size:
        # Parents are roots (one level), so one gating pass enforces the hierarchy exactly.
        on[:, child] &= on[:, truth.parent[child]]
    return on


def _magnitudes(truth: SyntheticTruth, feat: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Magnitudes of the firing events of features ``feat`` (one per event)."""
    c, m = truth.config, truth.mean_magnitudes[feat]
    if c.magnitude == "folded_normal":
        return np.abs(m + c.magnitude_std * m * rng.standard_normal(m.size))
    if c.magnitude == "exponential":
        return m * rng.exponential(1.0, m.size)
    s = c.magnitude_std
    return m * np.exp(s * rng.standard_normal(m.size) - 0.5 * s * s)


def sample(truth: SyntheticTruth, n: int, batch_index: int = 0, *,
           return_codes: bool = True) -> SyntheticBatch:
    """Batch number ``batch_index`` of ``n`` rows (deterministic in seed, n and index)."""
    if n < 1:
        raise ConfigError(f"n must be >= 1 (got {n})")
    c = truth.config
    rng = _rng(c.seed, _PURPOSE_SAMPLE, batch_index)
    on = fires(truth, n, rng)
    rows, feat = np.nonzero(on)
    # Magnitudes only for the events that fire (about mean_l0 per row, not n_features).
    codes = np.zeros((n, c.n_features), np.float32)
    codes[rows, feat] = _magnitudes(truth, feat, rng)
    x = codes @ truth.directions + truth.bias
    if c.noise_std:
        x += (c.noise_std * rng.standard_normal(x.shape)).astype(np.float32)
    return SyntheticBatch(x=x.astype(np.float32, copy=False), codes=codes if return_codes else None)


def stream(truth: SyntheticTruth, batch: int, n_batches: int | None = None, *,
           start: int = 0, return_codes: bool = False) -> Iterator[SyntheticBatch]:
    """Batches ``start``, ``start+1``, ... of ``batch`` rows (endless when n_batches is None)."""
    i = start
    while n_batches is None or i < start + n_batches:
        yield sample(truth, batch, i, return_codes=return_codes)
        i += 1


def generate(config: SyntheticConfig, n: int, *, return_codes: bool = True,
             batch: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(activations [n, d], directions [n_features, d], codes [n, n_features] or None)."""
    truth = make_truth(config)
    xs, cs = [], []
    for i, b in enumerate(range(0, n, batch)):
        s = sample(truth, min(batch, n - b), i, return_codes=return_codes)
        xs.append(s.x)
        cs.append(s.codes)
    codes = np.concatenate(cs) if return_codes else None
    return np.concatenate(xs), np.array(truth.directions), codes
