"""Regenerate the transformers reference checkpoints here (needs torch + transformers).

    python tests/attribution/data/hf_reference/make.py

One directory per architecture, written by transformers' own ``save_pretrained``
with transformers' logits (``attribution.tiny.make_transformers_reference``);
bfloat16 weights, so they also cover the bf16 -> float32 load; llama sharded.
``test_load_formats.py`` loads them with ``load_model`` and compares the logits.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))

import attribution  # noqa: E402,F401  (BLAS preload before mlx)
from attribution.tiny import TINY_ARCHS, make_transformers_reference  # noqa: E402

# Settings mlx-lm's classes would get wrong if the config conversion were skipped.
OVERRIDES = {"gemma3": {"rope_theta": 12345.0, "rope_local_base_freq": 777.0}}


def main() -> None:
    for i, arch in enumerate(TINY_ARCHS):
        out = HERE / arch
        shutil.rmtree(out, ignore_errors=True)
        extra = OVERRIDES.get(arch, {} if arch == "gpt2" else {"rope_theta": 12345.0})
        make_transformers_reference(arch, out, seed=i, dtype="bfloat16",
                                    max_shard_size="64KB" if arch == "llama" else None, **extra)


if __name__ == "__main__":
    main()
