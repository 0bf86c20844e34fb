"""One hooked forward pass: site edits, site reads and the final-norm output.

Algorithm (``hooked_forward``):
  1. Build an ``attribution.model.plan.Plan``: edits in forward order of their
     sites (stable, so call order within a site), then reads, then ``freeze``
     (stop-gradient on every attention pattern and every norm scale, the
     final norm included) when asked.
  2. Add a post-hook on the final norm that stores its output: logit targets
     are read there, before the unembedding (and before Gemma-2's softcap).
  3. Install, call the mlx-lm module, remove every hook (also on errors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import mlx.core as mx

from attribution.errors import UnsupportedArchitectureError
from attribution.model.plan import Plan
from attribution.sites import Site

Hook = tuple[Site, Callable[[mx.array], mx.array]]


class ForwardOut(NamedTuple):
    """Result of ``hooked_forward``."""

    logits: mx.array
    """[B,T,V] logits."""
    norm_out: mx.array
    """[B,T,d] output of the final norm (logits = softcap(norm_out @ W_U))."""


def final_norm(model):
    """The final norm module, or an error naming what is missing."""
    if model.final_norm is None:
        raise UnsupportedArchitectureError(
            f"{model.arch}: no final norm module found; logit targets are read at its output "
            "(add its attribute name to attribution/model/wrapper.py)")
    return model.final_norm


def hooked_forward(model, tokens: mx.array, edits: Sequence[Hook] = (), reads: Sequence[Hook] = (),
                   freeze: bool = False) -> ForwardOut:
    """Run ``model`` on int32 tokens [B,T] with the given edits and reads (module docstring)."""
    plan = Plan(model)
    for site, fn in sorted(edits, key=lambda e: e[0].order):
        plan.edit(site, fn)
    for site, fn in reads:
        plan.read(site, fn)
    if freeze:
        plan.freeze()
    cell: list = [None]

    def store(x):
        cell[0] = x
        return x

    plan.hooks.add_post(final_norm(model), store)
    with plan:
        logits = model.module(tokens)
    if cell[0] is None:
        raise UnsupportedArchitectureError(
            f"{model.arch}: the forward never called the final norm module, so logit targets "
            "cannot be read; check attribution/model/wrapper.py's final_norm")
    return ForwardOut(logits, cell[0])


__all__ = ["ForwardOut", "final_norm", "hooked_forward"]
