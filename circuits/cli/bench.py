"""``circuits bench``: score every discovery method against the organisms' ground truth.

Writes ``benchmark.csv`` and ``benchmark.md`` (one row per organism, task,
method, ablation: node/edge ROC AUC, precision at ground-truth size, IG-vs-exact
r, faithfulness at 10% of edges, CPR, CMD, runtimes).
"""

from __future__ import annotations

from pathlib import Path

from circuits.cli._common import progress, staged
from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="ground-truth benchmark of circuit discovery on the organisms")
    p.add_argument("--organisms", nargs="*", default=None, help="default: every shipped organism")
    p.add_argument("--tasks", nargs="*", default=None, help="default: each organism's tasks")
    p.add_argument("--methods", nargs="*", default=["eap", "eap-ig", "exact", "acdc"])
    p.add_argument("--ablations", nargs="*", default=["counterfactual"])
    p.add_argument("--n", type=int, default=None, help="examples per task (default: the config's)")
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    p.add_argument("--config", type=Path, default=None, help="TOML or JSON options file")


def run(args) -> int:
    from dataclasses import replace

    from circuits.bench import BenchConfig, run_benchmark, write_benchmark

    cfg = BenchConfig() if args.n is None else replace(BenchConfig(), n=args.n)
    with progress(args, "benchmark") as bar:
        res = run_benchmark(args.organisms, args.tasks, args.methods, args.ablations, cfg,
                            on_progress=lambda s, d, t: bar(d, t))
    with staged(args.out) as tmp:
        write_benchmark(res, tmp)
    cols = [c for c in ("organism", "task", "method", "ablation", "node_auc", "edge_auc",
                        "faith_top10pct_edges", "cpr", "cmd", "runtime_edge_s") if c in res.table]
    emit(args, {"out": str(args.out), "rows": res.table[cols].to_dict("records")},
         [res.table[cols].to_string(index=False), f"-> {args.out / 'benchmark.md'}"])
    return 0
