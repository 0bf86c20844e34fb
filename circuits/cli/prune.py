"""``circuits prune``: turn an attribution graph into a circuit.

Algorithm:
  1. Load a graph directory (``Graph.load``).
  2. Prune by influence thresholds (default), top-n edges, an absolute edge
     threshold, or (``--method faithful``) the smallest influence-ranked circuit whose
     patching-measured faithfulness is in ``--band`` with complement <=
     ``--max-complement`` (``prune_faithful``; needs ``--dicts`` and the model).
  3. Save the pruned graph (staged) plus ``scores.json`` with replacement and
     completeness for the full, pruned and merged graphs; ``--method faithful`` adds
     the ``selection`` record to it and the measured curve as ``faithful_curve.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path

from circuits.cli import prune_faithful
from circuits.cli._common import CLIError, add_common, positive_int, progress, staged, unit_interval
from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="prune a graph into a circuit (influence / top-n / threshold / faithful)")
    add_common(p, out_default="out/circuit", model=False)
    p.add_argument("--graph", type=Path, default=Path("out/graph"), help="graph directory")
    p.add_argument("--method", default="influence", choices=["influence", "top", "threshold", "faithful"])
    p.add_argument("--node-threshold", type=unit_interval, default=0.8,
                   help="influence share of nodes kept, in (0, 1]")
    p.add_argument("--edge-threshold", type=unit_interval, default=0.98,
                   help="influence share of edges kept, in (0, 1]")
    p.add_argument("--top", type=positive_int, default=50, help="edges kept with --method top")
    p.add_argument("--abs-threshold", type=float, default=0.01, help="|weight| cut with --method threshold")
    prune_faithful.add_arguments(p)


NA_REASON = ("n/a: replacement and completeness measure how much of an exact graph's influence "
             "flows through error nodes; a {method} graph holds patching-style node scores, not "
             "that edge accounting")


def scores_applicable(graph) -> str | None:
    """None when replacement/completeness apply to ``graph``, else the reason they do not."""
    method = graph.metadata.get("method", "exact")
    return None if method == "exact" else NA_REASON.format(method=method)


def scores_record(result, graph=None) -> dict:
    """JSON-ready scores of a PruneResult (null with a reason where they do not apply)."""
    reason = None if graph is None else scores_applicable(graph)
    if reason is not None:
        return {k: {"replacement": None, "completeness": None} for k in ("full", "pruned", "merged")} | {
            "note": reason}
    return {k: getattr(result.scores, k)._asdict() for k in ("full", "pruned", "merged")}


def prune_graph(graph, args):
    from circuits import prune as P

    if args.method == "influence":
        return P.prune(graph, args.node_threshold, args.edge_threshold)
    if args.method == "top":
        return P.top_edges(graph, args.top, remove_dangling=True)
    return P.threshold_edges(graph, args.abs_threshold, remove_dangling=True)


def run(args) -> int:
    from attribution.graph import Graph

    if args.node_threshold == 0 or args.edge_threshold == 0:
        raise CLIError("--node-threshold and --edge-threshold must be in (0, 1]: 0 keeps nothing")
    if not (args.abs_threshold >= 0 and args.abs_threshold < float("inf")):
        raise CLIError(f"--abs-threshold must be a finite number >= 0, got {args.abs_threshold}")
    if args.method != "faithful":
        for flag in ("model", "dicts"):
            if getattr(args, flag) is not None:
                raise CLIError(f"--{flag} is for --method faithful (the other methods read only the graph)")
    graph = Graph.load(args.graph)
    selection = curve = None
    if args.method == "faithful":
        with progress(args, "faithful selection", unit="run") as bar:
            result, selection, curve = prune_faithful.select(graph, args, bar)
    else:
        result = prune_graph(graph, args)
    rec = {"out": str(args.out), "nodes": int(result.node_mask.sum()),
           "nodes_full": len(graph.nodes), "edges": int(result.graph.adjacency.nnz),
           "scores": scores_record(result, graph), "method": args.method}
    if selection is not None:
        rec["selection"] = selection
    with staged(args.out) as tmp:
        result.graph.save(tmp / "graph")
        (tmp / "scores.json").write_text(json.dumps(rec, indent=2, sort_keys=True, default=float))
        if curve is not None:
            curve.to_csv(tmp / "faithful_curve.csv", index=False)
    s = result.scores
    lines = [f"circuit: {rec['nodes']}/{rec['nodes_full']} nodes, {rec['edges']} edges -> {args.out}"]
    if selection is not None:
        lines += [("target met: " if selection["met"] else "TARGET NOT MET: ") + selection["reason"],
                  f"curve: {len(curve)} candidates, cpr {selection['cpr']:.3f}, cmd {selection['cmd']:.3f}, "
                  f"{selection['evaluations']} patched runs in {selection['forwards']} forwards"]
    if scores_applicable(graph) is None:
        lines += [f"replacement  full {s.full.replacement:.3f}  pruned {s.pruned.replacement:.3f}",
                  f"completeness full {s.full.completeness:.3f}  pruned {s.pruned.completeness:.3f}"]
    else:
        lines += [f"replacement  n/a", f"completeness n/a  ({scores_applicable(graph)})"]
    emit(args, rec, lines)
    return 0
