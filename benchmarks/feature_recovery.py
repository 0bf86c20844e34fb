"""Feature-level circuit recovery on the hand-compiled organism (known feature circuit).

Run from the repo root: ``.venv/bin/python benchmarks/feature_recovery.py``. Algorithm:
  1. Build the class-match organism (``circuits.organisms.feature_truth``) in a temporary
     directory and ``--prompts`` evaluation prompts (seed ``--seed``).
  2. Dictionaries: ``true-mlp`` (each MLP written as its own ReLU transcoder) and, per
     ``--archs`` entry, transcoders trained on the organism's task activations (width
     ``--width``, k ``--k``, ``--tokens`` tokens); trained latents are matched to planted
     units (``match_features``: mean of decoder cosine and activation correlation >=
     ``--threshold``).
  3. For every prompt: the exact attribution graph of logit(answer) - logit(wrong), scored by
     ``circuits.bench.feature_recovery.score_recovery`` (node AUC on influence, edge AUC on
     |weight| and on edge influence, precision/recall of the influence-pruned circuit at
     0.8 / 0.98); means over prompts (AUCs over the prompts where they are defined).
  4. Print one JSON line per (organism, dictionary, training seed ``--train-seeds``; the
     trained results vary with it) and append it to ``--out``
     (``benchmarks/results/feature_recovery.jsonl``), with the best match score of every
     planted unit, the timings and ``environment_record()``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

# isort: off
import attribution  # noqa: F401  (must come first: loads the optimised BLAS before mlx)
import numpy as np
from attribution import build_graph, load_model, logit_diff
from attribution.perf import environment_record
from circuits.bench.feature_recovery import score_recovery
from circuits.organisms import feature_truth as ft
# isort: on

RESULTS = Path(_HERE) / "results" / "feature_recovery.jsonl"

_MEANS = ("node_auc", "edge_auc", "edge_auc_influence", "node_precision", "node_recall",
          "edge_precision", "edge_recall", "error_share", "n_feature_nodes", "n_edges",
          "n_true_nodes_in_graph", "n_true_edges_in_graph", "n_kept_features", "n_kept_edges")


def _mean(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r[key] is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def score_dictionary(model, dicts, data, truths) -> tuple[dict, float]:
    """Mean recovery scores over the prompts, and the seconds spent building graphs."""
    rows, t_graph = [], 0.0
    for i, truth in enumerate(truths):
        a, w = int(data.answer[i]), int(data.wrong[i])
        t0 = time.perf_counter()
        g = build_graph(model, dicts, data.clean[i], targets=logit_diff(model, a, w))
        t_graph += time.perf_counter() - t0
        rows.append(score_recovery(g, truth).to_dict())
    return {k: _mean(rows, k) for k in _MEANS}, t_graph


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--archs", default="topk,batchtopk,relu")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=2 ** 21)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--train-seeds", default="0,1,2",
                    help="one trained set (and JSON line) per seed and architecture")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:  # the organism lives as long as the run
        return run(args, load_model(ft.build_feature_organism(tmp)))


def run(args, model) -> int:
    """Steps 1-4 of the module docstring on the built organism ``model``."""
    env = environment_record()
    data = ft.feature_task(args.prompts, args.seed)
    base = [ft.feature_truth(c) for c in data.clean]
    true_tcs = ft.true_transcoders(model)
    runs = [("true-mlp", None, true_tcs, base, 0.0, None)]
    seeds = [int(x) for x in args.train_seeds.split(",") if x]
    for arch, seed in [(a, s) for a in args.archs.split(",") if a for s in seeds]:
        spec = ft.TranscoderSpec(arch=arch, width=args.width, k=args.k, tokens=args.tokens, seed=seed)
        t0 = time.perf_counter()
        trained = ft.train_task_transcoders(model, spec)
        train_s = time.perf_counter() - t0
        matches = {l: ft.match_features(trained.dictionaries[f"L{l}"], true_tcs[f"L{l}"], l,
                                        threshold=args.threshold, inputs=trained.inputs[l][:4000])
                   for l in range(2)}
        truths = [ft.truth_for_dictionaries(t, matches) for t in base]
        best = {name: round(score, 3) for m in matches.values()
                for name, (_, score) in m.best_latent().items()}
        runs.append((f"trained-{arch}", seed, trained.dictionaries, truths, train_s, best))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, seed, dicts, truths, train_s, best in runs:
        scores, graph_s = score_dictionary(model, dicts, data, truths)
        row = {"benchmark": "feature_recovery", "organism": "class_match", "dictionary": name,
               "prompts": args.prompts, "seed": args.seed, "train_seed": seed,
               "width": None if name == "true-mlp" else args.width,
               "k": None if name == "true-mlp" else args.k,
               "tokens": None if name == "true-mlp" else args.tokens,
               "match_threshold": None if name == "true-mlp" else args.threshold,
               "best_match": best, **scores, "train_s": round(train_s, 2),
               "graph_s_per_prompt": round(graph_s / args.prompts, 4), **env}
        line = json.dumps(row)
        print(line, flush=True)
        with open(args.out, "a") as fh:
            fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
