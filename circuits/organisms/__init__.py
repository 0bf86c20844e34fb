"""Model organisms: small llama-architecture mlx-lm models with known circuits.

``names()`` lists the shipped organisms, ``path(name)`` gives the directory of one
(an ordinary mlx-lm model directory: config.json, model.safetensors, tokenizer
files, card.json, README.md, ground_truth.json), ``train(name, out_dir, seed=...)``
retrains one from its recipe, ``ground_truth(name_or_path)`` recomputes its
exact-patching ground truth and ``ship(name, out_dir)`` does all of it (train,
re-score, head scores, ground truth, card).

Algorithm of ``path``:
  1. Look the name up among the recipes (``recipes.RECIPES``).
  2. Return ``circuits/organisms/shipped/<name>``; raise ``OrganismError`` if the
     name is unknown or its weights are missing.
"""

from __future__ import annotations

from pathlib import Path

from circuits.errors import OrganismError
from circuits.organisms.card import read_card
from circuits.organisms.ground_truth import (
    GroundTruth, GroundTruthConfig, TaskGroundTruth, ground_truth, load_ground_truth,
)
from circuits.organisms.heads import HeadScores, head_scores
from circuits.organisms.patching import Component
from circuits.organisms.recipes import RECIPES, OrganismRecipe
from circuits.organisms.training import TaskResult, TrainResult, evaluate, train
from circuits.organisms.ship import annotate, ship

SHIPPED = Path(__file__).resolve().parent / "shipped"
"""Directory of the shipped organisms."""


def names() -> tuple[str, ...]:
    """Names of the organisms (one recipe and one shipped directory each)."""
    return tuple(RECIPES)


def path(name: str) -> Path:
    """Directory of the shipped organism ``name`` (loadable with ``attribution.load_model``)."""
    if name not in RECIPES:
        raise OrganismError(f"unknown organism {name!r}; known: {', '.join(RECIPES)}")
    p = SHIPPED / name
    if not (p / "model.safetensors").exists():
        raise OrganismError(f"organism {name!r} is not shipped at {p}; train it with "
                            f"circuits.organisms.train({name!r}, {str(p)!r})")
    return p


def card(name: str) -> dict:
    """The model card (card.json) of a shipped organism."""
    return read_card(path(name))


__all__ = [
    "RECIPES",
    "SHIPPED",
    "Component",
    "GroundTruth",
    "GroundTruthConfig",
    "HeadScores",
    "OrganismRecipe",
    "TaskGroundTruth",
    "TaskResult",
    "TrainResult",
    "annotate",
    "card",
    "evaluate",
    "ground_truth",
    "head_scores",
    "load_ground_truth",
    "names",
    "path",
    "ship",
    "train",
]
