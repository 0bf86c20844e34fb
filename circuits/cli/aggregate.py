"""``circuits aggregate``: attribution graphs of many task prompts, summarised as one.

Algorithm:
  1. Load the model and dictionaries (refusing dictionaries recorded as trained on another
     model unless ``--force``); check the flags before any work.
  2. For rows 0..``--examples``−1 of ``--task`` (default: the organism's first task): the
     exact graph with the logit difference logit(answer) − logit(wrong) as target, pruned
     at ``--node-threshold`` / ``--edge-threshold`` (``--no-prune`` keeps the full graphs).
  3. ``circuits.multi.aggregate`` with ``--positions`` (none: position-free keys), then the
     ``--min-presence`` filter for the figure; with ``--supernodes``, ``find_supernodes`` on
     the filtered aggregate (decoder + profile + co-activation, ``--threshold``,
     ``--bootstrap``).
  4. Write (staged, so a failure leaves nothing): ``aggregate.json`` +
     ``aggregate.safetensors`` (the whole aggregate), ``nodes.csv`` and ``edges.csv`` (the
     filtered tables), ``aggregate.dot`` and ``aggregate.svg`` (the filtered mean graph,
     supernodes drawn as one node each), ``supernodes.json`` with ``--supernodes``.
"""

from __future__ import annotations

import json
from pathlib import Path

from circuits.cli._common import (
    CLIError, add_common, add_force, load, load_dicts, nonneg_int, positive_int, progress, staged, unit_interval,
)
from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="aggregate the graphs of many task prompts (presence, mean, std, supernodes)")
    add_common(p, out_default="out/aggregate")
    add_force(p)
    p.add_argument("--dicts", type=Path, default=Path("out/dictionaries/dictionaries"))
    p.add_argument("--task", default=None, help="built-in task name or task file (default: the organism's first)")
    p.add_argument("--examples", type=positive_int, default=8, help="task rows 0..N-1 to aggregate")
    p.add_argument("--positions", default="none", choices=["none", "absolute", "from_end"],
                   help="node keys: position-free (none), one template (absolute) or right-aligned (from_end)")
    p.add_argument("--no-prune", action="store_true", help="aggregate the full graphs, not the pruned circuits")
    p.add_argument("--node-threshold", type=unit_interval, default=0.8, help="pruning: node influence share kept")
    p.add_argument("--edge-threshold", type=unit_interval, default=0.98, help="pruning: edge influence share kept")
    p.add_argument("--min-presence", type=unit_interval, default=0.5,
                   help="figure and tables: keep nodes and edges present in at least this share of prompts")
    p.add_argument("--supernodes", action="store_true", help="cluster the kept features into supernodes")
    p.add_argument("--threshold", type=float, default=0.3, help="supernode cut on the combined cosine distance")
    p.add_argument("--bootstrap", type=nonneg_int, default=20, help="bootstrap resamples for supernode stability")
    p.add_argument("--batch-size", type=positive_int, default=64)


def _graphs(model, dicts, args, bar):
    from attribution import GraphConfig, build_graph, logit_diff

    from circuits.cli._prompt import organism_tasks, task_row
    from circuits.prune import prune

    task = args.task
    if task is None:
        own = organism_tasks(model)
        if not own:
            raise CLIError(f"no task given for model {model.path}: pass --task NAME or --task FILE.jsonl")
        task = own[0]
    specs = [task_row(model, task, i) for i in range(args.examples)]  # all rows checked before any graph
    out = []
    for i, spec in enumerate(specs):
        g = build_graph(model, dicts, list(spec.clean), targets=logit_diff(model, spec.answer, spec.wrong),
                        config=GraphConfig(batch_size=args.batch_size))
        g = g if args.no_prune else prune(g, args.node_threshold, args.edge_threshold).graph
        out.append(g)
        bar(i + 1, len(specs))
    return task, out


def run(args) -> int:
    from circuits.multi import AggregateConfig, MultiError, SupernodeConfig, aggregate, find_supernodes

    if not 0 <= args.threshold <= 2:
        raise CLIError(f"--threshold is a cosine distance in [0, 2], got {args.threshold}")
    model = load(args)
    dicts = load_dicts(args, model)
    with staged(args.out) as tmp, progress(args, "graphs") as bar:
        task, graphs = _graphs(model, dicts, args, bar)
        try:
            agg = aggregate(graphs, AggregateConfig(positions=args.positions))
            kept = agg.filter(args.min_presence)
            sn = find_supernodes(kept, SupernodeConfig(threshold=args.threshold, n_bootstrap=args.bootstrap),
                                 decoders=dicts) if args.supernodes else None
        except MultiError as exc:
            raise CLIError(str(exc)) from None
        agg.save(tmp)
        kept.nodes.to_csv(tmp / "nodes.csv", index=False)
        kept.edges.to_csv(tmp / "edges.csv", index=False)
        dot = kept.to_dot(supernodes=sn)
        (tmp / "aggregate.dot").write_text(dot)
        from viz.render import render

        render(dot, tmp / "aggregate.svg")
        if sn is not None:
            rec = {"groups": {k: list(v) for k, v in sn.groups.items()}, "components": list(sn.components),
                   "threshold": args.threshold, "bootstrap": args.bootstrap,
                   "ari_mean": None if sn.ari_mean != sn.ari_mean else sn.ari_mean,
                   "ari_std": None if sn.ari_std != sn.ari_std else sn.ari_std,
                   "stability": json.loads(sn.stability.to_json(orient="records"))}
            (tmp / "supernodes.json").write_text(json.dumps(rec, indent=1, sort_keys=True))
    rec = {"out": str(args.out), "task": task, "prompts": agg.n_prompts, "nodes": agg.n_nodes,
           "edges": agg.n_edges, "min_presence": args.min_presence, "nodes_kept": kept.n_nodes,
           "edges_kept": kept.n_edges, "edge_cv": kept.edge_cv(),
           "supernodes": None if sn is None else len(sn.groups),
           "stability_ari": None if sn is None or sn.ari_mean != sn.ari_mean else sn.ari_mean}
    lines = [f"aggregate of {agg.n_prompts} prompts of {task}: {agg.n_nodes} nodes, {agg.n_edges} edges",
             f"present in >= {args.min_presence:.0%} of prompts: {kept.n_nodes} nodes, {kept.n_edges} edges "
             f"(edge-weight CV {kept.edge_cv():.3f})"]
    if sn is not None:
        lines.append(f"supernodes: {len(sn.groups)} (bootstrap ARI {sn.ari_mean:.3f})")
    lines.append(f"-> {args.out}")
    emit(args, rec, lines)
    return 0
