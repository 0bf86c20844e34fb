"""``circuits bench``: score every discovery method against a ground truth.

Targets: the shipped organisms (``--organisms NAME ...``, default all), or your
own llama-family model (``--model DIR``) with a ground truth (``--ground-truth
FILE``, default ``DIR/ground_truth.json``; schema in
``circuits/organisms/ground_truth.py``). ``--tasks`` takes built-in task names
and task files (``.jsonl``/``.csv`` of prompt, corrupted_prompt, answer,
wrong_answer); a task file is scored against the ground-truth task named after
the file (or the only task of a one-task ground truth).

Algorithm:
  1. Check every flag (one line naming the flag and the fix on bad input).
  2. ``circuits.bench.run_benchmark`` resolves the targets first (model, ground
     truth schema and components, task files), so bad input fails before any
     scoring, then scores each (organism, task, method, ablation).
  3. Write ``benchmark.csv`` and ``benchmark.md`` (node/edge ROC AUC, precision
     at ground-truth size, node r against exact patching, faithfulness at 10% of
     edges, CPR, CMD, runtimes) into ``--out``, staged so failures leave nothing.
"""

from __future__ import annotations

from pathlib import Path

from circuits.cli._common import add_common, progress, staged
from circuits.cli._out import emit
from circuits.cli.validate_component import check_choices, float_flag, int_flag


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="ground-truth benchmark of circuit discovery (organisms or your model)")
    add_common(p, out_default="out/bench", model=False)
    p.add_argument("--organisms", nargs="*", default=None, help="shipped organisms (default: all)")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="your own llama-family mlx-lm model directory instead of --organisms")
    p.add_argument("--ground-truth", default=None, metavar="FILE",
                   help="ground-truth JSON (default: DIR/ground_truth.json; schema of the "
                        "shipped organisms' ground_truth.json)")
    p.add_argument("--tasks", nargs="*", default=None, metavar="TASK",
                   help="built-in task names or task files (.jsonl/.csv); default: the ground truth's")
    p.add_argument("--methods", nargs="*", default=["eap", "eap-ig", "exact", "acdc"],
                   metavar="METHOD", help="eap, eap-ig, exact, acdc")
    p.add_argument("--ablations", nargs="*", default=["counterfactual"], metavar="ABLATION",
                   help="counterfactual, zero, mean, resample")
    p.add_argument("--n", default=None, metavar="N",
                   help="examples per task (default: the ground truth's n)")
    p.add_argument("--ig-steps", default=8, metavar="K", help="EAP-IG interpolation steps (default 8)")
    p.add_argument("--acdc-threshold", default=0.05, metavar="TAU",
                   help="ACDC removal threshold in metric units (default 0.05)")
    p.add_argument("--qkv", default="joint", metavar="MODE",
                   help="head inputs: joint (one edge per head) or separate (q, k, v)")


def run(args) -> int:
    from circuits.bench import BenchConfig, run_benchmark, write_benchmark
    from circuits.discover import ABLATIONS, METHODS

    methods = check_choices(args.methods, "--methods", METHODS)
    ablations = check_choices(args.ablations, "--ablations", ABLATIONS)
    qkv = check_choices([args.qkv], "--qkv", ("joint", "separate"))[0]
    cfg = BenchConfig(ig_steps=int_flag(args.ig_steps, "--ig-steps", 1, "EAP-IG steps"),
                      tau=float_flag(args.acdc_threshold, "--acdc-threshold", 0.0,
                                     "the ACDC threshold in metric units"),
                      qkv=qkv,
                      n=None if args.n is None else int_flag(args.n, "--n", 1, "examples per task"))
    with progress(args, "benchmark") as bar:
        res = run_benchmark(args.organisms, args.tasks, methods, ablations, cfg,
                            on_progress=lambda s, d, t: bar(d, t), model=args.model,
                            ground_truth=args.ground_truth)
    with staged(args.out) as tmp:
        write_benchmark(res, tmp)
    cols = [c for c in ("organism", "task", "method", "ablation", "node_auc", "edge_auc",
                        "faith_top10pct_edges", "cpr", "cmd", "runtime_edge_s") if c in res.table]
    emit(args, {"out": str(args.out), "rows": res.table[cols].to_dict("records"),
                "skipped": list(res.skipped)},
         [res.table[cols].to_string(index=False), f"-> {Path(args.out) / 'benchmark.md'}"])
    return 0
