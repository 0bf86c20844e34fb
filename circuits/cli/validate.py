"""``circuits validate``: check circuits against activation patching.

Two levels:
  * feature (``--circuit DIR``): a pruned feature circuit from ``circuits prune``,
    measured in the replacement model with the task's counterfactual prompt:
    faithfulness, completeness and a curve over the graph's influence ranking.
  * component (default without ``--circuit``): discover a head/MLP circuit with
    ``--method`` on the task, then faithfulness/completeness, MIB curves (CPR,
    CMD), and predicted-vs-measured node effects.
Results: ``validation.json`` and CSV tables (staged into ``--out``).
"""

from __future__ import annotations

import json
from pathlib import Path

from circuits.cli._common import add_common, load, progress, staged
from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="validate a feature or component circuit by activation patching")
    add_common(p, out_default="out/validation")
    p.add_argument("--task", default="ioi")
    p.add_argument("--circuit", type=Path, default=None, help="pruned feature circuit directory")
    p.add_argument("--graph", type=Path, default=None, help="full graph (for the feature curve)")
    p.add_argument("--dicts", type=Path, default=Path("out/dictionaries/dictionaries"))
    p.add_argument("--example", type=int, default=0, help="task example of the feature circuit")
    p.add_argument("--method", default="eap-ig", choices=["eap", "eap-ig", "exact", "acdc"])
    p.add_argument("--ablation", default="counterfactual",
                   choices=["counterfactual", "zero", "mean", "resample"])
    p.add_argument("--n", type=int, default=50, help="task examples for component validation")


def _feature(args, model, tmp: Path) -> dict:
    from attribution.graph import Graph
    from attribution.replacement import ReplacementModel
    from sae import load_dictionaries

    from circuits.cli.attribute import task_example
    from circuits.pipeline.feature_faithfulness import feature_faithfulness, feature_faithfulness_curve
    from circuits.prune import influence

    if args.ablation not in ("counterfactual", "zero"):
        raise ValueError("feature circuits support --ablation counterfactual or zero")
    circuit = Graph.load(args.circuit)
    clean, corrupted, good, bad = task_example(model, args.task, args.example)
    rm = ReplacementModel(model, list(load_dictionaries(args.dicts).values()))

    def metric(last):
        return last[good] - last[bad]

    res = feature_faithfulness(rm, clean, circuit, metric, args.ablation, corrupted)
    rec = {"level": "feature", **res.__dict__}
    if args.graph is not None:
        g = Graph.load(args.graph)
        curve = feature_faithfulness_curve(rm, clean, g, influence(g), metric,
                                           (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0), args.ablation, corrupted)
        curve.to_csv(tmp / "feature_faithfulness_curve.csv", index=False)
    return rec


def _component(args, model, tmp: Path) -> dict:
    from circuits import tasks
    from circuits.discover import DiscoverConfig, discover_masked
    from circuits.discover.masking import MaskedModel
    from circuits.validate import faithfulness, faithfulness_curve, predicted_vs_measured

    data = tasks.get(args.task).generate(args.n, 0, model.tokenizer)
    cfg = DiscoverConfig(method=args.method, ablation=args.ablation)
    mm = MaskedModel(model, data, cfg.ablation, cfg.qkv, cfg.batch_size, cfg.seed, cfg.metric)
    with progress(args, f"discover ({args.method})") as bar:
        res = discover_masked(mm, cfg, on_progress=lambda s, d, t: bar(d, t))
    f = faithfulness(mm, res)
    curve = faithfulness_curve(mm, res.values, "edge")
    curve.table.to_csv(tmp / "faithfulness_curve.csv", index=False)
    res.scores.to_csv(tmp / "component_scores.csv", index=False)
    agree = None
    if args.method in ("eap", "eap-ig"):
        agree = predicted_vs_measured(model, data, args.method, ablation=args.ablation, max_prompts=20)
        agree.table.to_csv(tmp / "predicted_vs_measured.csv", index=False)
    return {"level": "component", "method": args.method, "ablation": args.ablation,
            "faithfulness": f.faithfulness, "completeness": f.completeness, "cpr": curve.cpr,
            "cmd": curve.cmd, "n_selected": int(res.mask().sum()),
            "ig_vs_patching_r": None if agree is None else agree.pearson}


def run(args) -> int:
    model = load(args)
    with staged(args.out) as tmp:
        rec = _feature(args, model, tmp) if args.circuit is not None else _component(args, model, tmp)
        (tmp / "validation.json").write_text(json.dumps(rec, indent=2, sort_keys=True, default=float))
    lines = [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in rec.items()]
    emit(args, {"out": str(args.out), **rec}, lines + [f"-> {args.out / 'validation.json'}"])
    return 0
