"""Schedules: functions of training progress.

1. ``lr_factor(step, total, warmup, decay_frac)``: linear warm-up over ``warmup`` steps,
   then constant, then linear decay to 0 over the last ``decay_frac`` of the steps (B2).
2. ``sparsity_factor(step, total, warmup_frac)``: the sparsity coefficient ramps
   linearly from 0 over the first ``warmup_frac`` of the steps.
3. Schedule parts give an annealing value s(progress) in [0, 1] that other parts read
   (the ``lp`` penalty's p-annealing), progress = steps done / total steps
   (``LossContext.progress``, an array inside the compiled step):
   - ``constant``: s = ``level``;
   - ``linear``: 0 before ``start``, 1 after ``end``, linear between;
   - ``cosine``: the same ramp, shaped (1 - cos(pi r)) / 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx

from sae.errors import ConfigError
from sae.parts.base import Part
from sae.parts.registry import register


def lr_factor(step: int, total: int, warmup: int, decay_frac: float) -> float:
    """LR multiplier at ``step`` (0-based) of ``total`` (module docstring, 1)."""
    w = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    n_decay = int(total * decay_frac)
    d = min(1.0, (total - step) / n_decay) if n_decay > 0 else 1.0
    return w * max(d, 0.0)


def sparsity_factor(step: int, total: int, warmup_frac: float) -> float:
    """Sparsity-coefficient multiplier at ``step`` (module docstring, 2)."""
    ramp = max(1, int(total * warmup_frac))
    return min(1.0, (step + 1) / ramp)


@register("schedule", "constant")
@dataclass(frozen=True)
class Constant(Part):
    """s = level."""

    level: float = 0.0
    """The constant annealing value."""

    def value(self, progress):
        return mx.array(self.level, mx.float32)


@register("schedule", "linear")
@dataclass(frozen=True)
class Linear(Part):
    """Linear ramp from 0 at ``start`` to 1 at ``end`` (fractions of training)."""

    start: float = 0.0
    """Progress where the ramp starts."""
    end: float = 1.0
    """Progress where it reaches 1."""

    def check(self, d) -> None:
        if not 0 <= self.start < self.end <= 1:
            raise ConfigError(f"schedule needs 0 <= start < end <= 1, got {self.start}, {self.end}")

    def ramp(self, progress):
        p = mx.array(progress, mx.float32)
        return mx.clip((p - self.start) / (self.end - self.start), 0.0, 1.0)

    def value(self, progress):
        return self.ramp(progress)


@register("schedule", "cosine")
@dataclass(frozen=True)
class Cosine(Linear):
    """Cosine-shaped ramp."""

    def value(self, progress):
        return (1 - mx.cos(math.pi * self.ramp(progress))) / 2
