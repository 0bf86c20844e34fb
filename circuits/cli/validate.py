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

from circuits.cli import validate_component, validate_feature
from circuits.cli._common import CLIError, add_common, add_force, load, staged
from circuits.cli._prompt import add_prompt_args
from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="validate a feature or component circuit by activation patching")
    add_common(p, out_default="out/validation")
    add_force(p)
    p.add_argument("--circuit", type=Path, default=None, help="pruned feature circuit directory")
    p.add_argument("--graph", type=Path, default=None, help="full graph (for the feature curve)")
    p.add_argument("--dicts", type=Path, default=Path("out/dictionaries/dictionaries"))
    add_prompt_args(p, example_help="feature level: restate the circuit's task row (checked against it)")
    p.add_argument("--ablation", default="counterfactual",
                   choices=["counterfactual", "zero", "mean", "resample"])
    validate_component.add_arguments(p)


def run(args) -> int:
    from circuits.cli._prompt import organism_tasks

    model = load(args)
    if args.circuit is None:
        for flag in ("prompt", "answer", "wrong", "counterfactual", "graph"):
            if getattr(args, flag, None) is not None:
                raise CLIError(f"--{flag} is for feature circuits (--circuit DIR); component validation "
                               "discovers a circuit on --task")
        if args.task is None:
            own = organism_tasks(model)
            if not own:
                raise CLIError(f"component validation needs a task for model {model.path}: pass "
                               "--task FILE.jsonl (or a built-in task the model can do)")
            args.task = own[0]
    with staged(args.out) as tmp:
        rec = (validate_feature.run_feature(args, model, tmp) if args.circuit is not None
               else validate_component.run_component(args, model, tmp))
        (tmp / "validation.json").write_text(json.dumps(rec, indent=2, sort_keys=True, default=float))
    lines = [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in rec.items()
             if not isinstance(v, (dict, list))]
    emit(args, {"out": str(args.out), **rec}, lines + [f"-> {args.out / 'validation.json'}"])
    return 0
