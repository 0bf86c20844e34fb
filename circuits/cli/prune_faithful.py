"""``circuits prune --method faithful``: select a circuit by measured faithfulness.

Algorithm:
  1. Load ``--model`` and ``--dicts`` and check that the graph was built on them
     (``validate_feature.check_model`` / ``check_dictionaries``: a mismatch is an error).
  2. Prompt, counterfactual and metric come from the graph's own metadata
     (``recorded_spec``, ``metric_for``), exactly as ``circuits validate --circuit``.
  3. ``select_faithful`` with ``--band``, ``--max-complement``, ``--abs-complement``,
     ``--ablation``, ``--max-evaluations``; the circuit, its measured curve (``faithful_curve.csv``) and a
     ``selection`` record (met, reason, sizes, CPR/CMD, runs used) are returned to ``prune``.
     A target that no measured candidate meets is reported as such (``met: false``).
"""

from __future__ import annotations

import math

from circuits.cli._common import CLIError, add_force, load, load_dicts


def add_arguments(p) -> None:
    """Flags of ``--method faithful``."""
    p.add_argument("--model", default=None,
                   help="with --method faithful: the model the graph was built on (default: the ioi organism)")
    p.add_argument("--dicts", default=None,
                   help="with --method faithful (required): the dictionaries the graph was attributed with")
    add_force(p)
    p.add_argument("--band", type=float, nargs=2, default=(0.9, 1.1), metavar=("LOW", "HIGH"),
                   help="with --method faithful: faithfulness range the circuit must reach")
    p.add_argument("--max-complement", type=float, default=0.2,
                   help="with --method faithful: largest faithfulness of the complement")
    p.add_argument("--abs-complement", action="store_true",
                   help="with --method faithful: bound |complement| (a strongly negative complement fails too)")
    p.add_argument("--ablation", default="counterfactual", choices=["counterfactual", "zero"],
                   help="with --method faithful: how nodes outside a candidate are ablated")
    p.add_argument("--max-evaluations", type=int, default=128,
                   help="with --method faithful: most patched runs (2 per candidate, 2 for the baselines)")


def select(graph, args, bar=None):
    """(PruneResult, selection record, curve DataFrame) for ``graph`` (module docstring)."""
    from attribution.replacement import ReplacementModel

    from circuits.cli.validate_feature import check_dictionaries, check_model, metric_for, recorded_spec
    from circuits.pipeline.faithful_selection import (
        FaithfulSelectionConfig, FaithfulSelectionError, select_faithful,
    )

    if args.dicts is None:
        raise CLIError("--method faithful measures candidates in the replacement model: pass --dicts, "
                       "the dictionaries the graph was attributed with")
    if not all(math.isfinite(x) for x in (*args.band, args.max_complement)):
        raise CLIError(f"--band and --max-complement must be finite numbers, got {args.band} {args.max_complement}")
    try:
        cfg = FaithfulSelectionConfig(band=tuple(args.band), max_complement=args.max_complement,
                                      abs_complement=args.abs_complement, ablation=args.ablation,
                                      max_evaluations=args.max_evaluations)
    except FaithfulSelectionError as e:
        raise CLIError(f"--method faithful: {e}") from None
    what = f"--graph {args.graph}"
    if graph.metadata.get("prompt_source") is None:
        raise CLIError(f"{what} records no prompt source (built through the Python API?); --method faithful "
                       "needs a graph from `circuits attribute`, which records the prompt, counterfactual and target")
    model = load(args)
    check_model(graph.metadata, model, what)
    rm = ReplacementModel(model, load_dicts(args, model))
    check_dictionaries(graph.metadata, rm, what)
    spec = recorded_spec(graph.metadata, model, args, what)
    if args.ablation == "counterfactual" and spec.corrupted is None:
        raise CLIError("the graph's prompt has no counterfactual; use --ablation zero")
    metric, metric_name = metric_for(graph, spec)
    cf = None if spec.corrupted is None else list(spec.corrupted)
    try:
        sel = select_faithful(rm, list(spec.clean), graph, metric, cfg, counterfactual=cf,
                              progress=(lambda s, d, t: bar(d, t)) if bar is not None else (lambda s, d, t: None))
    except FaithfulSelectionError as e:
        raise CLIError(f"--method faithful: {e}") from None
    rec = {"met": sel.met, "reason": sel.reason, "n_kept": sel.n_kept, "n_candidates": sel.n_candidates,
           "faithfulness": sel.faithfulness, "completeness": sel.completeness, "cpr": sel.cpr, "cmd": sel.cmd,
           "f_full": sel.f_full, "f_empty": sel.f_empty, "evaluations": sel.evaluations,
           "forwards": sel.forwards, "budget_exhausted": sel.budget_exhausted, "band": list(cfg.band),
           "max_complement": cfg.max_complement, "abs_complement": cfg.abs_complement,
           "ablation": cfg.ablation, "metric": metric_name}
    return sel.circuit, rec, sel.curve


__all__ = ["add_arguments", "select"]
