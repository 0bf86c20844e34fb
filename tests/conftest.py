"""Shared test set-up: offline Hugging Face, our BLAS preload before mlx."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import attribution  # noqa: E402,F401  (must precede any mlx import)
