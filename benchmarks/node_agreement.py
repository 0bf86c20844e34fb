"""IG, attribution patching and jump-aware scores against exact patching, per organism and arch.

Run from the repo root: ``.venv/bin/python benchmarks/node_agreement.py``. Algorithm:
  1. For each (organism, task) pair (``--pairs``; the ioi organism also does greater-than)
     and architecture (``--archs``): train per-layer transcoders (mlp_in -> mlp_out, width
     ``--width``, ``--tokens`` tokens; the demo's budget) on the organism's own corpus
     (once per organism and architecture).
  2. ``circuits.validate.node_scores.node_score_agreement`` on the task, ``--prompts``
     examples, counterfactual ablation, IG with ``--steps`` steps: exact patching of
     every feature and error node against IG, AtP and jump-aware (IG with the nodes of
     largest |IG| exactly patched until ``--correct-tolerance`` says stop, at most
     ``--correct-fraction`` of the moved nodes).
  3. Print one JSON line per (organism, architecture) with pooled Pearson/Spearman and the
     per-kind (feature / error) Pearson r, the mean cost per prompt in single-prompt
     forwards / backwards of each method (``node_score_agreement``'s ``cost``), and the
     timings; then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

# isort: off
import attribution  # noqa: F401  (must come first: loads the optimised BLAS before mlx)
from attribution import GraphConfig, load_model
from attribution.perf import environment_record
from circuits import tasks
from circuits.organisms import SHIPPED
from circuits.pipeline.dictionaries import DictionarySpec, train_dictionaries
from circuits.validate.node_scores import node_score_agreement
# isort: on

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", default="ioi:ioi,ioi:greater_than,induction:induction",
                   help="organism:task pairs")
    p.add_argument("--archs", default="relu,jumprelu,batchtopk,topk")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--k", type=int, default=12)
    p.add_argument("--tokens", type=int, default=3 * 2 ** 17)
    p.add_argument("--prompts", type=int, default=6)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--correct-fraction", type=float, default=GraphConfig.correct_fraction,
                   help="jump-aware: most share of moved nodes patched exactly")
    p.add_argument("--correct-tolerance", type=float, default=GraphConfig.correct_tolerance,
                   help="jump-aware: stopping tolerance (0 = patch the whole fraction)")
    args = p.parse_args()
    env = environment_record()
    rows = []
    trained = {}
    for pair in args.pairs.split(","):
        org, task = pair.split(":")
        model = load_model(SHIPPED / org)
        data = tasks.get(task).generate(args.prompts, 11, model.tokenizer)
        for arch in args.archs.split(","):
            t0 = time.perf_counter()
            if (org, arch) not in trained:
                spec = DictionarySpec(kind="transcoder", arch=arch, width=args.width, k=args.k,
                                      tokens=args.tokens, batch_tokens=1024)
                trained[org, arch] = train_dictionaries(model, spec).dictionaries
            dicts = trained[org, arch]
            t1 = time.perf_counter()
            res = node_score_agreement(model, dicts, data, n_prompts=args.prompts,
                                       ig_steps=args.steps, methods=("ig", "atp", "jump-aware"),
                                       jump_aware={"correct_fraction": args.correct_fraction,
                                                   "correct_tolerance": args.correct_tolerance})
            t2 = time.perf_counter()
            by = res.by_kind.set_index(["method", "kind"])["pearson"]
            n_feat = int((res.table["kind"] == "feature").sum())
            row = {"benchmark": "node_agreement", "organism": org, "task": task, "arch": arch,
                   "ablation": res.ablation, "ig_steps": args.steps, "prompts": args.prompts,
                   "nodes": len(res.table), "feature_nodes": n_feat,
                   "ig_pearson": round(res.pearson["ig"], 4),
                   "atp_pearson": round(res.pearson["atp"], 4),
                   "ig_spearman": round(res.spearman["ig"], 4),
                   "atp_spearman": round(res.spearman["atp"], 4),
                   "ig_feature_r": round(float(by[("ig", "feature")]), 4),
                   "ig_error_r": round(float(by[("ig", "error")]), 4),
                   "atp_feature_r": round(float(by[("atp", "feature")]), 4),
                   "atp_error_r": round(float(by[("atp", "error")]), 4),
                   "correct_fraction": args.correct_fraction,
                   "correct_tolerance": args.correct_tolerance,
                   "ja_pearson": round(res.pearson["jump-aware"], 4),
                   "ja_spearman": round(res.spearman["jump-aware"], 4),
                   "ja_feature_r": round(float(by[("jump-aware", "feature")]), 4),
                   "ja_error_r": round(float(by[("jump-aware", "error")]), 4),
                   **{f"{short}_{k}": round(res.cost[m][k], 1) for m, short in
                      (("ig", "ig"), ("atp", "atp"), ("jump-aware", "ja"), ("patching", "patch"))
                      for k in ("forwards", "backwards")},
                   "train_s": round(t1 - t0, 1), "score_s": round(t2 - t1, 1), **env}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(table(rows))


def _cost(r: dict, short: str) -> str:
    return f"{r[short + '_forwards']:.0f} / {r[short + '_backwards']:.0f}"


def table(rows: list[dict]) -> str:
    """Markdown table of benchmark rows (r with exact patching; cost per prompt)."""
    out = ["| organism | task | transcoders | nodes | IG r | AtP r | jump-aware r | IG r (features) "
           "| AtP r (features) | jump-aware r (features) | cost F / B per prompt: IG | AtP "
           "| jump-aware | patching |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['organism']} | {r['task']} | {r['arch']} | {r['nodes']} | "
                   f"{r['ig_pearson']:.3f} | {r['atp_pearson']:.3f} | {r['ja_pearson']:.3f} | "
                   f"{r['ig_feature_r']:.3f} | {r['atp_feature_r']:.3f} | {r['ja_feature_r']:.3f} | "
                   f"{_cost(r, 'ig')} | {_cost(r, 'atp')} | {_cost(r, 'ja')} | {_cost(r, 'patch')} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
