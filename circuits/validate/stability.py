"""Stability of a discovered circuit under example resampling (bootstrap Jaccard).

Algorithm (``stability``):
  1. Discover the circuit on the full dataset (reference selection).
  2. ``n_boot`` times: draw N examples with replacement (seeded), rediscover with
     the same config, and take the Jaccard index |A n B| / |A u B| of the
     selected units against the reference.
  3. Report the mean, standard deviation and every value; mean >= 0.8 counts as
     stable (DESIGN.md B5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from circuits.discover import DiscoverConfig, discover
from circuits.errors import ValidationError


@dataclass(frozen=True)
class Stability:
    """Bootstrap Jaccard of one discovery config."""

    mean_jaccard: float
    """Mean Jaccard of bootstrap circuits against the full-data circuit."""
    std_jaccard: float
    """Standard deviation over bootstrap draws."""
    jaccards: tuple[float, ...]
    """One value per bootstrap draw."""
    stable: bool
    """mean_jaccard >= 0.8."""
    reference: tuple[str, ...]
    """Units selected on the full data."""
    ablation: str
    """Ablation of the discovery runs."""

    def to_frame(self) -> pd.DataFrame:
        """One row per bootstrap draw: draw, jaccard, ablation."""
        return pd.DataFrame({"draw": range(len(self.jaccards)), "jaccard": self.jaccards,
                             "ablation": self.ablation})


def jaccard(a, b) -> float:
    """|A n B| / |A u B| (1 for two empty sets)."""
    a, b = set(a), set(b)
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def stability(model: Any, data: Any, n_boot: int = 10, seed: int = 0,
              on_progress: Callable | None = None, **cfg: Any) -> Stability:
    """Bootstrap Jaccard of ``discover(model, data, **cfg)`` (module docstring)."""
    if n_boot < 1:
        raise ValidationError(f"n_boot must be >= 1, got {n_boot}")
    c = DiscoverConfig(**cfg)
    kw = {k: getattr(c, k) for k in c.__dataclass_fields__}
    ref = discover(model, data, **kw).selected
    rng = np.random.default_rng(seed)
    vals = []
    for b in range(n_boot):
        idx = rng.integers(0, len(data), size=len(data))
        vals.append(jaccard(ref, discover(model, data.subset(idx), **kw).selected))
        if on_progress:
            on_progress("bootstrap", b + 1, n_boot)
    v = np.asarray(vals)
    return Stability(float(v.mean()), float(v.std()), tuple(vals), bool(v.mean() >= 0.8),
                     tuple(ref), c.ablation)
