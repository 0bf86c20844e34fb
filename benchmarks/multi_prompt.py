"""Many prompts on the shipped ioi organism: aggregate graphs, supernodes and their stability.

Run from the repo root: ``.venv/bin/python benchmarks/multi_prompt.py``. Algorithm:
  1. Train the demo's transcoders (``DemoConfig().dictionaries``: TopK, width 512, k 12,
     ``--tokens`` tokens) on the ioi organism, or load a saved set with ``--dicts DIR``.
  2. For ``--prompts`` IOI examples (seed 0): the exact graph with the logit difference
     logit(IO) − logit(S) as target, pruned at node 0.8 / edge 0.98 (the demo's circuit).
  3. ``circuits.multi.aggregate`` of the circuits ("active and kept") and of the full graphs
     ("active"), position-free keys: nodes present in >= 50 % of prompts, the pooled
     coefficient of variation of edge weights over prompts (Σ std / Σ |mean|, all edges and
     the >= 50 % edges).
  4. ``find_supernodes`` on the full graphs' >= 50 % aggregate (the circuits keep too few
     recurring features to cluster; decoder + profile + co-activation, average linkage at
     ``--threshold``, ``--bootstrap`` resamples): supernode count, the mean adjusted Rand
     index and the mean per-supernode co-assignment stability; the collapse's mass check.
  5. ``diff`` of the first prompt's circuit against its counterfactual (ABC) prompt's.
  6. Print one JSON line with the figures, timings and the environment, and append it to
     ``--out`` (``benchmarks/results/multi_prompt.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

# isort: off
import attribution  # noqa: F401  (must come first: loads the optimised BLAS before mlx)
import numpy as np
from attribution import GraphConfig, build_graph, load_model, logit_diff
from attribution.perf import environment_record
from circuits import tasks
from circuits.multi import SupernodeConfig, aggregate, collapse, diff, find_supernodes
from circuits.organisms import SHIPPED
from circuits.pipeline.demo import DemoConfig
from circuits.pipeline.dictionaries import train_dictionaries
from circuits.prune import prune
# isort: on

RESULTS = Path(_HERE) / "results" / "multi_prompt.jsonl"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=DemoConfig().dictionaries.tokens,
                    help="transcoder training tokens (the demo's budget by default)")
    ap.add_argument("--dicts", type=Path, default=None, help="load saved dictionaries instead of training")
    ap.add_argument("--threshold", type=float, default=SupernodeConfig().threshold, help="supernode distance cut")
    ap.add_argument("--bootstrap", type=int, default=50)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    env = environment_record()
    model = load_model(SHIPPED / "ioi")
    t0 = time.perf_counter()
    if args.dicts is not None:
        from sae import open_dictionaries

        dicts = open_dictionaries(args.dicts, model=model)
        dicts = list(dicts.values()) if isinstance(dicts, dict) else list(dicts)
    else:
        from dataclasses import replace

        spec = replace(DemoConfig().dictionaries, tokens=args.tokens)
        dicts = train_dictionaries(model, spec).dictionaries
    t1 = time.perf_counter()
    data = tasks.get("ioi").generate(args.prompts, 0, model.tokenizer)
    graphs, circuits, graph_s = [], [], []
    for i in range(args.prompts):
        s = time.perf_counter()
        target = logit_diff(model, int(data.answer[i]), int(data.wrong[i]))
        g = build_graph(model, dicts, [int(t) for t in data.clean[i]], targets=target,
                        config=GraphConfig(batch_size=64))
        graphs.append(g)
        circuits.append(prune(g, 0.8, 0.98))
        graph_s.append(time.perf_counter() - s)
    t2 = time.perf_counter()
    agg = aggregate(circuits)
    half = agg.filter(0.5)
    t3 = time.perf_counter()
    full = aggregate(graphs)
    full_half = full.filter(0.5)
    t3b = time.perf_counter()
    sn = find_supernodes(full_half, SupernodeConfig(threshold=args.threshold, n_bootstrap=args.bootstrap),
                         decoders=dicts)
    t4 = time.perf_counter()
    g_half = full_half.to_graph()
    col = collapse(g_half, sn)
    a_half = g_half.adjacency.astype(np.float64)
    mass_err = max((abs(float(col.adjacency[:, col.index(n)].sum())
                        - float(a_half[:, [g_half.index(m) for m in ms]].sum())) for n, ms in sn.groups.items()),
                   default=0.0)
    target = logit_diff(model, int(data.answer[0]), int(data.wrong[0]))
    cf = prune(build_graph(model, dicts, [int(t) for t in data.corrupted[0]], targets=target,
                           config=GraphConfig(batch_size=64)), 0.8, 0.98)
    d = diff(circuits[0], cf)
    t5 = time.perf_counter()
    types = half.nodes["type"].value_counts().to_dict()
    row = {
        "benchmark": "multi_prompt", "organism": "ioi", "task": "ioi", "prompts": args.prompts,
        "dictionaries": "demo transcoders (topk, width 512, k 12)" if args.dicts is None else str(args.dicts),
        "train_tokens": None if args.dicts is not None else args.tokens,
        "prompt_lengths": agg.metadata["lengths"],
        "circuit_nodes_mean": round(float(np.mean([c.graph.n_nodes for c in circuits])), 1),
        "aggregate_nodes": agg.n_nodes, "aggregate_edges": agg.n_edges,
        "nodes_present_50": half.n_nodes, "features_present_50": int(types.get("feature", 0)),
        "errors_present_50": int(types.get("error", 0)), "edges_present_50": half.n_edges,
        "nodes_present_100": agg.filter(1.0).n_nodes,
        "edge_cv_all": round(agg.edge_cv(), 4), "edge_cv_present_50": round(half.edge_cv(), 4),
        "full_aggregate_nodes": full.n_nodes, "full_aggregate_edges": full.n_edges,
        "full_nodes_present_50": full_half.n_nodes,
        "full_features_present_50": int((full_half.nodes["type"] == "feature").sum()),
        "full_edge_cv_all": round(full.edge_cv(), 4), "full_edge_cv_present_50": round(full_half.edge_cv(), 4),
        "supernode_threshold": args.threshold, "supernodes": len(sn.groups),
        "features_in_supernodes": int(sum(len(v) for v in sn.groups.values())),
        "supernode_components": list(sn.components), "bootstrap": args.bootstrap,
        "bootstrap_ari_mean": round(sn.ari_mean, 4), "bootstrap_ari_std": round(sn.ari_std, 4),
        "coassignment_mean": round(float(sn.stability["coassignment"].mean()), 4) if len(sn.stability) else None,
        "coassignment_min": round(float(sn.stability["coassignment"].min()), 4) if len(sn.stability) else None,
        "collapse_max_mass_error": mass_err,
        "clean_vs_cf_node_jaccard": round(d.summary.node_jaccard, 4),
        "clean_vs_cf_edge_jaccard": round(d.summary.edge_jaccard, 4),
        "clean_vs_cf_weight_corr": round(d.summary.weight_corr, 4),
        "train_s": round(t1 - t0, 1), "graphs_s": round(t2 - t1, 1), "graph_s_mean": round(float(np.mean(graph_s)), 2),
        "aggregate_s": round(t3 - t2, 3), "full_aggregate_s": round(t3b - t3, 2),
        "supernodes_s": round(t4 - t3b, 2), "diff_s": round(t5 - t4, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2), **env}
    line = json.dumps(row)
    print(line, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
