"""Shared set-up of the patching-style tests: a tiny llama with random transcoders."""

from __future__ import annotations

import mlx.core as mx

from attribution.attribute.targets import resolve_targets
from attribution.replacement import ReplacementModel
from attribution.testing_dicts import random_transcoders

TOKENS = [2, 5, 9, 14, 7, 22, 31, 11]


def spliced_setup(tiny_models, arch: str = "llama"):
    """(model, replacement model, clean state, top-logit target) on ``TOKENS``."""
    model = tiny_models[arch]
    rm = ReplacementModel(model, random_transcoders(model, 32, seed=11))
    state = rm.clean(mx.array([TOKENS]))
    tg = resolve_targets(model, [int(mx.argmax(state.logits[-1]))], state.logits[-1],
                         state.norm_out[-1], len(TOKENS) - 1)
    return model, rm, state, tg
