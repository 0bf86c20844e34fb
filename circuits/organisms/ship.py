"""Build a shipped organism end to end: train, score heads, compute ground truth, write the card.

Algorithm (``ship``):
  1. ``train(name, out_dir, seed)`` (atomic directory replace; card with held-out scores).
  2. Re-score the held-out tasks on the saved model (so the card always matches the
     current task definitions), then ``head_scores`` on the saved model (loaded with ``attribution.load_model``);
     the scores, the identified heads and the scoring arguments go into the card.
  3. ``ground_truth(out_dir, write=True)``: ground_truth.json beside the weights;
     each task's circuit and faithfulness are summarised in the card.
  4. Rewrite card.json and README.md (atomic writes).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from collections.abc import Callable

import attribution  # noqa: F401  (optimised BLAS before mlx)
from attribution import load_model

from circuits.organisms.card import read_card, update_card
from circuits.organisms.ground_truth import GroundTruth, GroundTruthConfig, ground_truth
from circuits.organisms.heads import head_scores, heads_card
from circuits.organisms.training import EVAL_SEED, TrainResult, evaluate, train

HEAD_ARGS = {"n": 64, "seg_len": 12, "seed": 0, "threshold": 0.3}
"""Arguments of ``head_scores`` used for the cards."""


def annotate(out_dir: str | Path, gt_config: GroundTruthConfig | None = None,
             on_progress: Callable[[str, int, int], None] | None = None,
             with_ground_truth: bool = True) -> GroundTruth | None:
    """Steps 2-4 for an already trained organism directory (step 3 only if asked)."""
    out_dir = Path(out_dir)
    model = load_model(out_dir)
    card = read_card(out_dir)
    recipe = card.get("recipe", {})
    scores = evaluate(model, model.tokenizer, tuple(recipe.get("eval_tasks", ())),
                      int(recipe.get("eval_n", 500)), int(card.get("eval_seed", EVAL_SEED)))
    hs = head_scores(model, **HEAD_ARGS)
    heads = {**heads_card(hs, HEAD_ARGS["n"], HEAD_ARGS["seg_len"], HEAD_ARGS["seed"]),
             "args": HEAD_ARGS}
    if not with_ground_truth:
        update_card(out_dir, tasks={k: asdict(v) for k, v in scores.items()}, heads=heads)
        return None
    gt = ground_truth(out_dir, config=gt_config, write=True, on_progress=on_progress)
    summary = {t: {"circuit": g.circuit, "faithfulness": g.faithfulness, "search": g.search,
                   "clean_metric": g.clean_metric, "corrupted_metric": g.corrupted_metric,
                   "metric": g.metric, "ablation": g.ablation}
               for t, g in gt.tasks.items()}
    update_card(out_dir, tasks={k: asdict(v) for k, v in scores.items()}, heads=heads,
                ground_truth=summary)
    return gt


def ship(name: str, out_dir: str | Path, seed: int = 0,
         on_step: Callable[[int, float, float], None] | None = None,
         on_progress: Callable[[str, int, int], None] | None = None) -> TrainResult:
    """Train organism ``name`` into ``out_dir`` and annotate it (heads, ground truth, card)."""
    res = train(name, out_dir, seed=seed, on_step=on_step)
    annotate(out_dir, on_progress=on_progress)
    return res
