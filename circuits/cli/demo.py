"""``circuits demo``: the whole mission on the shipped ``ioi`` organism, into ``out/demo/``.

Algorithm:
  1. Check the machine (BLAS, ``dot``) and say what it gives MLX.
  2. ``circuits.pipeline.demo.run_demo`` with progress bars per stage: train
     transcoders, build the graph, prune, validate by patching, write figures.
  3. Print every artifact's path and the headline figures.
"""

from __future__ import annotations

import time
from pathlib import Path

from circuits.cli._common import positive_int, staged
from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="run the end-to-end pipeline on the shipped ioi organism")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing non-empty --out (old results are removed, never mixed)")
    p.add_argument("--model", default=None, help="model directory (default: the ioi organism)")
    p.add_argument("--tokens", type=positive_int, default=None, help="transcoder training tokens")
    p.add_argument("--no-dashboards", action="store_true", help="skip feature dashboards")
    p.add_argument("--selection", default="faithful", choices=["faithful", "influence"],
                   help="headline circuit: the smallest one with measured faithfulness in [0.9, 1.1] and "
                        "complement <= 0.2 (default), or influence pruning (node 0.8, edge 0.98) alone")
    p.add_argument("--config", type=Path, default=None, help="TOML or JSON options file")


def run(args) -> int:
    from dataclasses import replace

    from circuits.cli._common import _Bar
    from circuits.cli.doctor import collect
    from circuits.pipeline.demo import DemoConfig, run_demo

    t0 = time.perf_counter()
    doc = collect(512)
    cfg = DemoConfig(dashboards=not args.no_dashboards, selection=args.selection)
    if args.tokens:
        cfg = replace(cfg, dictionaries=replace(cfg.dictionaries, tokens=args.tokens))
    bars: dict = {}

    def progress(stage, done, total):
        bar = bars.get(stage)
        if bar is None:
            for b in bars.values():
                b.close()
            bar = bars[stage] = _Bar(args, stage, total)
        bar(done, total)

    try:
        with staged(args.out) as tmp:
            res = run_demo(tmp, args.model, cfg, progress)
    finally:
        for b in bars.values():
            b.close()
    # Artifacts were written under the staging directory, now renamed to --out.
    arts = {k: str(args.out / Path(v).relative_to(tmp)) if str(v).startswith(str(tmp)) else v
            for k, v in res.artifacts.items()}
    f = res.figures
    wall = time.perf_counter() - t0
    lines = [f"machine: {doc['blas_library'] or doc['blas_status']} at {doc['matmul_gflops']} GFLOP/s",
             f"prompt: {f['prompt']!r} -> {f['answer']!r} (not {f['wrong']!r})",
             f"graph: {f['graph_nodes']} nodes, {f['graph_edges']} edges; "
             f"circuit: {f['circuit_nodes']} nodes, {f['circuit_edges']} edges",
             f"replacement score  {f['replacement_full']:.3f} (graph)  {f['replacement_pruned']:.3f} (circuit)",
             f"completeness score {f['completeness_full']:.3f} (graph)  {f['completeness_pruned']:.3f} (circuit)",
             f"faithfulness (patching, counterfactual) {f['faithfulness']:.3f}; "
             f"complement {f['completeness_patching']:.3f}"
             + (f" ({f['selection_reason']})" if f.get("selection_reason") else ""),
             f"influence-pruned circuit: {f['influence_circuit_nodes']} nodes, faithfulness "
             f"{f['influence_faithfulness']:.3f}, complement {f['influence_complement']:.3f}",
             f"node scores vs exact patching: IG r = {f['ig_vs_patching_r']:.3f}, AtP r = "
             f"{f['atp_vs_patching_r']:.3f}, jump-aware r = {f['jump_aware_vs_patching_r']:.3f}",
             f"graph-predicted vs measured feature ablations: r = "
             f"{f['graph_vs_patching_r_constrained']:.3f} (constrained), "
             f"{f['graph_vs_patching_r_iterative']:.3f} (iterative)",
             f"transcoders: mean FVU {f['fvu_mean']:.3f}, mean CE recovered {f['ce_recovered_mean']:.3f}",
             "artifacts:"] + [f"  {k:28s} {v}" for k, v in arts.items()] + [
             f"wall time {wall:.0f} s"]
    emit(args, {"figures": f, "artifacts": arts, "wall_s": round(wall, 1)}, lines)
    return 0
