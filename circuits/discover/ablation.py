"""Ablated residual writes of every node: what a masked-out edge carries instead.

Algorithm (``ablated_writes``) for one length group of B clean prompts [B,T]:
  1. counterfactual: the writes of every node on the task's corrupted prompts
     (the clean model run on them), example by example.
  2. zero: all writes are 0.
  3. mean: the per-position mean write over the task's reference prompts that
     have at least T tokens, truncated to their first T tokens (a causal model's
     prefix activations are those of the prefix); if no reference prompt is that
     long, the mean over the task's own clean prompts of length T.
  4. resample: each example takes the writes of another prompt of the same
     length drawn with ``seed`` from the reference prompts of length T plus the
     other clean prompts of length T (never itself); none -> ``DiscoveryError``.
The result is stacked in the graph's upstream order: [U,B,T,d] (mean: [U,1,T,d],
zero: [U,1,1,1]).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np

import attribution  # noqa: F401  (optimised BLAS before mlx)
from circuits.errors import DiscoveryError
from circuits.tasks.base import TaskBatch

ABLATIONS = ("counterfactual", "zero", "mean", "resample")


def _stack_writes(mm: Any, tokens: np.ndarray | mx.array) -> mx.array:
    return mx.stack(mm.writes(mx.array(tokens))[:-1])


def _mean_writes(mm: Any, t: int) -> mx.array:
    ref = [r[:t] for r in mm.data.reference if r.size >= t]
    if not ref:
        ref = [c for c in mm.data.clean if c.size == t]
    total = None
    for s in range(0, len(ref), 64):  # chunks keep the activation memory bounded
        w = _stack_writes(mm, np.stack(ref[s:s + 64])).sum(axis=1, keepdims=True)
        total = w if total is None else total + w
    return total / len(ref)


def _resample_writes(mm: Any, b: TaskBatch, seed: int) -> mx.array:
    t = b.clean.shape[1]
    refs = [r for r in mm.data.reference if r.size == t]
    own = [(int(i), c) for i, c in enumerate(mm.data.clean) if c.size == t]
    rng = np.random.default_rng([seed, t])
    picks = []
    for i in np.asarray(b.index):
        pool = refs + [c for j, c in own if j != int(i)]
        if not pool:
            raise DiscoveryError(
                f"resample ablation: example {int(i)} has length {t} and no other prompt (reference "
                "or clean) has that length; use more examples or another ablation")
        picks.append(pool[int(rng.integers(len(pool)))])
    return _stack_writes(mm, np.stack(picks))


def ablated_writes(mm: Any, b: TaskBatch, kind: str, seed: int = 0) -> mx.array:
    """Ablated writes of every upstream node for batch ``b`` (module docstring)."""
    if kind == "counterfactual":
        return _stack_writes(mm, b.corrupted)
    if kind == "zero":
        return mx.zeros((mm.graph.n_nodes, 1, 1, 1))
    if kind == "mean":
        return _mean_writes(mm, b.clean.shape[1])
    if kind == "resample":
        return _resample_writes(mm, b, seed)
    raise DiscoveryError(f"ablation must be one of {ABLATIONS}, got {kind!r}")
