"""Synthetic ground truth for dictionary learning: a generator and metrics against the truth.

  1. ``SyntheticConfig`` (+ ``cpu_preset``, ``synth_sae_bench_16k_preset``) → ``make_truth``
     → ``sample`` / ``stream`` / ``generate`` (activations, true directions, true codes).
  2. ``score(decoder, features, latents, codes, ...)`` / ``score_dictionary(dict, truth)``
     → ``SyntheticScores`` (MCC, F1, uniqueness, shrinkage, absorption, dead, FVU).
"""

from sae.synthetic.generator import (
    SyntheticBatch, SyntheticConfig, SyntheticTruth, cpu_preset, generate, make_truth, sample,
    stream, synth_sae_bench_16k_preset, zipf_probs,
)
from sae.synthetic.metrics import (
    SyntheticScores, abs_cosines, match, mcc, score, score_dictionary, uniqueness,
)

__all__ = [
    "SyntheticBatch", "SyntheticConfig", "SyntheticScores", "SyntheticTruth", "abs_cosines",
    "cpu_preset", "generate", "make_truth", "match", "mcc", "sample", "score", "score_dictionary",
    "stream", "synth_sae_bench_16k_preset", "uniqueness", "zipf_probs",
]
