"""``circuits prune``: turn an attribution graph into a circuit.

Algorithm:
  1. Load a graph directory (``Graph.load``).
  2. Prune by influence thresholds (default), top-n edges, or an absolute
     edge threshold.
  3. Save the pruned graph (staged) plus ``scores.json`` with replacement and
     completeness for the full, pruned and merged graphs.
"""

from __future__ import annotations

import json
from pathlib import Path

from circuits.cli._common import add_common, staged
from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="prune a graph into a circuit (influence / top-n / threshold)")
    add_common(p, out_default="out/circuit", model=False)
    p.add_argument("--graph", type=Path, default=Path("out/graph"), help="graph directory")
    p.add_argument("--method", default="influence", choices=["influence", "top", "threshold"])
    p.add_argument("--node-threshold", type=float, default=0.8)
    p.add_argument("--edge-threshold", type=float, default=0.98)
    p.add_argument("--top", type=int, default=50, help="edges kept with --method top")
    p.add_argument("--abs-threshold", type=float, default=0.01, help="|weight| cut with --method threshold")


def scores_record(result) -> dict:
    """JSON-ready scores of a PruneResult."""
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

    graph = Graph.load(args.graph)
    result = prune_graph(graph, args)
    rec = {"out": str(args.out), "nodes": int(result.node_mask.sum()),
           "nodes_full": len(graph.nodes), "edges": int(result.graph.adjacency.nnz),
           "scores": scores_record(result), "method": args.method}
    with staged(args.out) as tmp:
        result.graph.save(tmp / "graph")
        (tmp / "scores.json").write_text(json.dumps(rec, indent=2, sort_keys=True))
    s = result.scores
    emit(args, rec, [
        f"circuit: {rec['nodes']}/{rec['nodes_full']} nodes, {rec['edges']} edges -> {args.out}",
        f"replacement  full {s.full.replacement:.3f}  pruned {s.pruned.replacement:.3f}",
        f"completeness full {s.full.completeness:.3f}  pruned {s.pruned.completeness:.3f}",
    ])
    return 0
