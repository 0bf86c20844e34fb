"""Synthetic activations with known sparse features (for tests and sanity checks).

1. Draw ``n_features`` unit directions in R^d (ground truth dictionary).
2. Each token activates each feature independently with probability
   ``active / n_features``; magnitudes are |N(0,1)| + 0.5 (so firing is clear).
3. x = sum of active magnitudes x directions (+ optional Gaussian noise).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class SyntheticData(NamedTuple):
    """Synthetic sparse-feature activations."""

    x: np.ndarray
    """[n_tokens, d] float32 activations."""
    features: np.ndarray
    """[n_features, d] unit ground-truth directions."""
    codes: np.ndarray
    """[n_tokens, n_features] float32 true coefficients."""


def sparse_features(n_tokens: int, d: int, n_features: int, active: float = 3.0,
                    noise: float = 0.0, seed: int = 0) -> SyntheticData:
    """Tokens that are sparse non-negative combinations of known unit directions."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n_features, d))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    on = rng.random((n_tokens, n_features)) < active / n_features
    mags = np.abs(rng.standard_normal((n_tokens, n_features))) + 0.5
    codes = (on * mags).astype(np.float32)
    x = codes @ feats + noise * rng.standard_normal((n_tokens, d))
    return SyntheticData(x.astype(np.float32), feats.astype(np.float32), codes)


def max_cosine_recovery(learned: np.ndarray, true: np.ndarray) -> np.ndarray:
    """For each true direction, the best |cosine| with any learned row [n_true]."""
    a = learned / np.maximum(np.linalg.norm(learned, axis=1, keepdims=True), 1e-12)
    b = true / np.maximum(np.linalg.norm(true, axis=1, keepdims=True), 1e-12)
    return (b @ a.T).max(axis=1)
