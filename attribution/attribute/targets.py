"""Logit targets: directions in final-norm-output space at one position.

A target's value is ``norm_out[pos] · direction`` where norm_out is the
final norm's output (frozen in the linearised model), before Gemma-2's
softcap. Construction:
  1. Vocabulary logit t: direction W_U[:, t] − mean_v W_U[:, v] (demeaned,
     so the value is logit_t − mean logit); name "".
  2. Default targets: the top logits at the last position by probability,
     taken until their cumulative probability reaches ``prob_mass`` and at
     most ``max_logits``; weights are their probabilities.
  3. Custom directions (``LogitTarget(name, direction)``), e.g.
     ``logit_diff(model, good, bad)`` = W_U[:, good] − W_U[:, bad]; custom
     targets share weight 1 equally.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import mlx.core as mx
import numpy as np

from attribution.graph.keys import LogitNode
from attribution.replacement.errors import LogitTargetError


class LogitTarget(NamedTuple):
    """One logit node: a named direction (token_id −1) or a vocabulary logit."""

    name: str
    """Custom direction name; "" for a vocabulary logit."""
    direction: mx.array | None = None
    """[d_model] direction in final-norm-output space (None: built from token_id)."""
    token_id: int = -1
    """Vocabulary id for a vocabulary logit, else −1."""


class ResolvedTargets(NamedTuple):
    """Logit targets ready for attribution."""

    keys: list
    """``LogitNode`` per target."""
    directions: mx.array
    """[n, d] directions."""
    weights: np.ndarray
    """[n] float64 weights (probabilities; custom targets 1/n_custom)."""
    probs: np.ndarray
    """[n] probability of each vocabulary logit (0 for custom)."""
    values: np.ndarray
    """[n] clean target values (norm_out[pos] · direction)."""
    labels: list
    """Output-token text (or the custom name) per target."""


TargetSpec = int | LogitTarget | Sequence[int | LogitTarget] | None


def logit_diff(model, good: int, bad: int, name: str = "logit_diff") -> LogitTarget:
    """The direction W_U[:, good] − W_U[:, bad] (its value is logit(good) − logit(bad))."""
    for t in (good, bad):
        _check_token(model, t)
    w = model.W_U
    return LogitTarget(name, w[:, int(good)] - w[:, int(bad)])


def _check_token(model, t) -> int:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < model.vocab_size:
        raise LogitTargetError(
            f"logit target {t!r} is not in the vocabulary [0, {model.vocab_size}); pass an id from "
            "model.encode(...) or a LogitTarget(name, direction)")
    return int(t)


def _directions(model, ids: list[int]) -> dict[int, mx.array]:
    """{t: W_U[:, t] − mean_t W_U}, from one evaluated W_U.

    Why: ``model.W_U`` of a quantized head dequantizes the whole [d, vocab] matrix; taken
    once per target in one lazy graph, ten targets held ten copies (measured 10.8 GB for
    Llama-3.2-1B's 128k vocabulary). Here W_U is read once and the mean and the columns
    are evaluated together, after which the full copy is freed."""
    uniq = list(dict.fromkeys(ids))
    w = model.W_U
    cols = mx.take(w, mx.array(uniq, dtype=mx.int32), axis=1).T - mx.mean(w, axis=1)
    mx.eval(cols)
    return {t: cols[k] for k, t in enumerate(uniq)}


def resolve_targets(model, spec: TargetSpec, logits_last: mx.array, norm_last: mx.array, pos: int,
                    max_logits: int = 10, prob_mass: float = 0.95) -> ResolvedTargets:
    """Turn a target spec into directions and weights (module docstring)."""
    probs = np.asarray(mx.softmax(logits_last.astype(mx.float32), axis=-1), dtype=np.float64)
    if isinstance(spec, str):
        raise LogitTargetError(
            f"targets={spec!r}: name strings are not targets; pass token ids, None (top logits) "
            "or a direction, e.g. logit_diff(model, good_id, bad_id)")
    if spec is None:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        n = min(int(np.searchsorted(cum, prob_mass) + 1), max_logits, len(order))
        items: list = [int(t) for t in order[:n]]
    elif isinstance(spec, (int, np.integer, LogitTarget)) and not isinstance(spec, bool):
        items = [spec]
    else:
        items = list(spec)
    if not items:
        raise LogitTargetError("no logit targets given; pass None for the top logits")
    n_custom = sum(isinstance(x, LogitTarget) and x.token_id < 0 for x in items)
    keys, dirs, weights, ps, labels = [], [], [], [], []
    vocab_ids = [_check_token(model, x.token_id if isinstance(x, LogitTarget) else x) for x in items
                 if not (isinstance(x, LogitTarget) and x.token_id < 0)]
    unembed = _directions(model, vocab_ids) if vocab_ids else {}
    for x in items:
        if isinstance(x, LogitTarget) and x.token_id < 0:
            d = mx.array(x.direction).astype(mx.float32).reshape(-1)
            if x.direction is None or d.shape[0] != model.d_model:
                raise LogitTargetError(
                    f"custom logit target {x.name!r} needs a direction of length d_model="
                    f"{model.d_model}")
            keys.append(LogitNode(pos, -1, x.name))
            dirs.append(d)
            weights.append(1.0 / n_custom)
            ps.append(0.0)
            labels.append(x.name)
        else:
            t = _check_token(model, x.token_id if isinstance(x, LogitTarget) else x)
            keys.append(LogitNode(pos, t))
            dirs.append(unembed[t])
            weights.append(float(probs[t]) if spec is None else 0.0)
            ps.append(float(probs[t]))
            labels.append(model.to_str_tokens([t])[0])
    if spec is not None and n_custom < len(items):  # user-chosen vocabulary logits: weights = probs
        weights = [p if k.token_id >= 0 else w for k, p, w in zip(keys, ps, weights)]
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() > 1:
        w = w / w.sum()
    directions = mx.stack(dirs)
    values = np.asarray(directions @ norm_last.astype(mx.float32), dtype=np.float64)
    return ResolvedTargets(keys, directions, w, np.asarray(ps), values, labels)


__all__ = ["LogitTarget", "ResolvedTargets", "logit_diff", "resolve_targets"]
