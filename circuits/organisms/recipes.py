"""Recipes (model config + data mixture + optimiser) for the shipped model organisms.

Algorithm (how a recipe turns into a model, see ``training.py``):
  1. The vocabulary is the union of the tasks' words, the filler grammar's words
     and the two-digit years, so every task prompt is in-vocabulary and word-level.
  2. The model is a llama-architecture mlx-lm model built from ``model_config``.
  3. Training draws documents from ``mixture`` (task kind, weight), one document
     per row, and minimises next-token cross-entropy with AdamW.

Why a mixture and weight decay: a model trained on one task alone spreads the
solution over every head it has (redundant, dense circuits); a mixture makes heads
compete for several jobs and weight decay removes unused paths, so each task's
circuit is small and distinct (DESIGN.md B5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

FILLER_SUBJECTS = ("the cat", "the dog", "a child", "the teacher", "an old man", "the bird",
                   "my friend", "the farmer", "a student", "the doctor", "the baker", "the king")
FILLER_VERBS = ("saw", "liked", "found", "watched", "painted", "carried", "wanted", "heard",
                "followed", "cleaned", "moved", "opened")
FILLER_OBJECTS = ("the box", "a tree", "the river", "a small boat", "the red door", "a song",
                  "the window", "a long road", "the green hill", "a quiet room", "the lamp",
                  "an apple")
FILLER_TAILS = ("", "yesterday", "in the morning", "near the road", "every day", "with care",
                "at night", "again")


@dataclass(frozen=True)
class OrganismRecipe:
    """Everything needed to train one organism from scratch."""

    name: str
    """Organism name (directory under ``circuits/organisms/shipped``)."""
    hidden_size: int
    """d_model."""
    num_layers: int
    """Transformer blocks."""
    num_heads: int
    """Attention heads per block (d_head = hidden_size / num_heads)."""
    intermediate_size: int
    """MLP hidden width (llama SwiGLU); small for near attention-only organisms."""
    mixture: tuple[tuple[str, float], ...]
    """(document kind, weight): kinds ioi, greater_than, induction, filler."""
    eval_tasks: tuple[str, ...]
    """Tasks scored on held-out data for the card and the accuracy bars."""
    steps: int = 2000
    """Optimiser steps."""
    batch_size: int = 64
    """Documents per step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup: int = 100
    """Warm-up steps."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay (sparsifies circuits, see module docstring)."""
    induction_len: tuple[int, int] = (4, 12)
    """Inclusive range of the repeated segment length in induction documents."""
    max_position_embeddings: int = 64
    """Longest context the organism supports."""
    eval_n: int = 500
    """Held-out examples per task for the card."""
    extra: dict = field(default_factory=dict)
    """Free-form notes stored in the card."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        kinds = {k for k, _ in self.mixture}
        unknown = kinds - {"ioi", "greater_than", "induction", "filler"}
        if unknown or any(w <= 0 for _, w in self.mixture):
            raise ValueError(f"bad mixture {self.mixture}")

    def model_config(self, vocab_size: int, bos: int, eos: int) -> dict:
        """mlx-lm llama config dict (float32, tied embeddings to keep the files small)."""
        return {
            "model_type": "llama", "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_heads, "intermediate_size": self.intermediate_size,
            "vocab_size": vocab_size, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": True, "bos_token_id": bos, "eos_token_id": eos,
            "torch_dtype": "float32", "head_dim": self.hidden_size // self.num_heads,
        }


RECIPES: dict[str, OrganismRecipe] = {
    "induction": OrganismRecipe(
        name="induction", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=32,
        mixture=(("induction", 0.8), ("filler", 0.2)), eval_tasks=("induction",),
        steps=2500, lr=5e-3, weight_decay=0.05,
        extra={"note": "2-layer llama with a tiny MLP; circuit: previous-token head(s) in "
                       "layer 0 feed induction head(s) in layer 1"},
    ),
    "ioi": OrganismRecipe(
        name="ioi", hidden_size=128, num_layers=4, num_heads=8, intermediate_size=256,
        mixture=(("ioi", 0.45), ("greater_than", 0.25), ("induction", 0.15), ("filler", 0.15)),
        eval_tasks=("ioi", "greater_than", "induction"), steps=3000, lr=2e-3, weight_decay=0.05,
        extra={"note": "4-layer llama, default demo model; solves IOI and greater-than"},
    ),
}


def filler_words() -> tuple[str, ...]:
    """Words of the filler grammar."""
    parts = (*FILLER_SUBJECTS, *FILLER_VERBS, *FILLER_OBJECTS, *FILLER_TAILS, ".")
    return tuple(dict.fromkeys(w for p in parts for w in p.split()))


def vocabulary() -> tuple[str, ...]:
    """The organisms' shared word list (task words, filler words), deterministic order."""
    from circuits import tasks

    words: list[str] = []
    for name in ("ioi", "greater_than"):
        words.extend(tasks.get(name).words())
    words.extend(filler_words())
    return tuple(dict.fromkeys(words))
