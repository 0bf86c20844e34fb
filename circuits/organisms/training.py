"""Train a model organism: a small llama-architecture mlx-lm model on a task mixture.

Algorithm:
  1. Build the word-level tokenizer over ``recipes.vocabulary()`` and the llama
     model from the recipe's config dict with ``mlx_lm.utils._get_classes``;
     ``mx.random.seed(seed)`` fixes the initialisation. Parameters stay float32.
  2. For ``steps`` steps: draw a batch from ``CorpusSampler`` (seeded), compute the
     masked next-token cross-entropy, and update with AdamW (linear warm-up, cosine
     decay to 10% of the peak rate). Report (step, loss, lr) through ``on_step``.
  3. Score every ``eval_tasks`` task on held-out prompts (seed ``EVAL_SEED``, never
     used by training) with ``circuits.tasks.score``.
  4. Save config.json, model.safetensors and tokenizer files with mlx-lm's
     ``save_config``/``save_model`` plus ``card.json``/``README.md`` into a temporary
     directory, then rename it over ``out_dir`` (atomic replace). An earlier
     ground_truth.json is not carried over: it described other weights
     (``ship``/``annotate`` recompute it).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np

import attribution  # noqa: F401  (optimised BLAS before mlx)
import mlx.core as mx
from mlx import nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from circuits.errors import OrganismError
from circuits.organisms.card import write_card
from circuits.organisms.corpus import CorpusSampler
from circuits.organisms.recipes import RECIPES, OrganismRecipe, vocabulary

EVAL_SEED = 10_000
"""Seed of the held-out evaluation prompts stored in the card."""


@dataclass(frozen=True)
class TaskResult:
    """Held-out score of one task."""

    accuracy: float
    """Fraction solved (IOI/greater-than: metric > 0; induction: top-1 copy)."""
    mean_metric: float
    """Mean of the task's default metric."""
    metric: str
    """Name of that metric."""
    n: int
    """Held-out examples."""


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` produced."""

    name: str
    """Organism name."""
    out_dir: Path
    """Directory holding the mlx-lm model, tokenizer and card."""
    seed: int
    """Training seed."""
    steps: int
    """Optimiser steps taken."""
    final_loss: float
    """Mean loss over the last 50 steps."""
    train_seconds: float
    """Wall-clock training time (excluding evaluation and saving)."""
    tasks: dict[str, TaskResult]
    """Held-out score per evaluated task."""


def build_model(recipe: OrganismRecipe, tokenizer: Any, seed: int) -> tuple[nn.Module, dict]:
    """Seeded llama model and its config dict."""
    from mlx_lm.utils import _get_classes

    cfg = recipe.model_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    model_cls, args_cls = _get_classes(cfg)
    mx.random.seed(seed)
    model = model_cls(args_cls.from_dict(cfg))
    mx.eval(model.parameters())
    return model, cfg


def _schedule(recipe: OrganismRecipe) -> Callable[[mx.array], mx.array]:
    warm = optim.linear_schedule(recipe.lr * 0.01, recipe.lr, recipe.warmup)
    decay = optim.cosine_decay(recipe.lr, max(1, recipe.steps - recipe.warmup), recipe.lr * 0.1)
    return optim.join_schedules([warm, decay], [recipe.warmup])


def _loss(model: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array) -> mx.array:
    ce = nn.losses.cross_entropy(model(inputs), targets, reduction="none")
    return (ce * mask).sum() / mask.sum()


def fit(model: nn.Module, recipe: OrganismRecipe, tokenizer: Any, seed: int,
        on_step: Callable[[int, float, float], None] | None = None) -> list[float]:
    """Run the training loop in place; returns the per-step losses."""
    sampler = CorpusSampler(recipe, tokenizer, seed)
    opt = optim.AdamW(learning_rate=_schedule(recipe), weight_decay=recipe.weight_decay)
    grad_fn = nn.value_and_grad(model, _loss)
    losses: list[float] = []
    for step in range(recipe.steps):
        b = sampler.batch(recipe.batch_size)
        loss, grads = grad_fn(model, mx.array(b.inputs), mx.array(b.targets), mx.array(b.mask))
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
        losses.append(float(loss))
        if not math.isfinite(losses[-1]):
            raise OrganismError(f"training {recipe.name!r} diverged at step {step} (loss {loss})")
        if on_step is not None:
            on_step(step + 1, losses[-1], float(opt.learning_rate))
    return losses


def evaluate(model: nn.Module, tokenizer: Any, task_names: tuple[str, ...],
             n: int = 500, seed: int = EVAL_SEED) -> dict[str, TaskResult]:
    """Held-out accuracy and mean metric of a model on each task."""
    from circuits import tasks

    out = {}
    for name in task_names:
        data = tasks.get(name).generate(n, seed, tokenizer)
        s = tasks.score(data, model)
        out[name] = TaskResult(s.accuracy, s.metric, data.metric_kind, n)
    return out


def _save(model: nn.Module, cfg: dict, tokenizer: Any, out_dir: Path, card: dict) -> None:
    """Write the organism into a temporary sibling directory, then rename it into place."""
    from mlx_lm.utils import save_config, save_model

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp creates 0700
        save_model(tmp, model)
        save_config(cfg, tmp / "config.json")
        tokenizer.save_pretrained(str(tmp))
        write_card(tmp, card)
        old = out_dir.with_name(f".{out_dir.name}.old")
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def train(name: str | OrganismRecipe, out_dir: str | Path, seed: int = 0,
          on_step: Callable[[int, float, float], None] | None = None,
          steps: int | None = None) -> TrainResult:
    """Train organism ``name`` (or a custom recipe) with ``seed`` and save it to ``out_dir``."""
    from attribution.tokenizer import word_level_tokenizer

    if isinstance(name, OrganismRecipe):
        recipe = name
    elif name in RECIPES:
        recipe = RECIPES[name]
    else:
        raise OrganismError(f"unknown organism {name!r}; known: {', '.join(RECIPES)}")
    if steps is not None:
        recipe = replace(recipe, steps=int(steps))
    tokenizer = word_level_tokenizer(list(vocabulary()))
    model, cfg = build_model(recipe, tokenizer, seed)
    t0 = time.perf_counter()
    losses = fit(model, recipe, tokenizer, seed, on_step)
    seconds = time.perf_counter() - t0
    scores = evaluate(model, tokenizer, recipe.eval_tasks, recipe.eval_n)
    final = float(np.mean(losses[-50:]))
    n_params = int(sum(v.size for _, v in tree_flatten(model.parameters())))
    card = {
        "name": recipe.name, "seed": seed, "recipe": asdict(recipe), "model_config": cfg,
        "n_parameters": n_params, "vocab_size": len(tokenizer), "steps": recipe.steps,
        "final_loss": final, "train_seconds": round(seconds, 1), "eval_seed": EVAL_SEED,
        "tasks": {k: asdict(v) for k, v in scores.items()},
        "optimizer": "mlx.optimizers.AdamW", "dtype": "float32",
    }
    out_dir = Path(out_dir)
    _save(model, cfg, tokenizer, out_dir, card)
    return TrainResult(recipe.name, out_dir, seed, recipe.steps, final, seconds, scores)

