"""Feature-level ``circuits validate``: a pruned feature circuit, checked by patching.

Algorithm:
  1. Load the circuit (a graph directory from ``circuits prune``) and check it
     belongs to this run: the model (path, architecture, width and, where
     recorded, the weight fingerprint), the dictionaries (the parameter digest
     recorded at attribution) and the prompt. A mismatch is an error naming
     both sides; a circuit is never silently measured on something else.
  2. The prompt, counterfactual and target come from the circuit's own
     metadata (``prompt_source``). ``--task/--example`` or ``--prompt`` may be
     given only to restate them: if they resolve to other tokens the run stops.
  3. The metric is the graph's target: logit(answer) − logit(wrong), or for a
     top-logits graph the probability-weighted sum of logit(t) − mean logit over
     its logit nodes (the same direction the exact graph attributes).
  4. ``feature_faithfulness`` in the replacement model; with ``--graph`` (the
     full graph, checked like the circuit) a faithfulness curve over the
     influence ranking. A metric that barely moves between the full and the
     empty circuit gives a warning: the ratio is then mostly noise.
"""

from __future__ import annotations

import warnings

import numpy as np

from circuits.cli._common import CLIError, load_dicts


class SmallDenominatorWarning(UserWarning):
    """|F(M) − F(∅)| is small: faithfulness ratios divide by little more than noise."""


def _describe_model(md: dict) -> str:
    m = md.get("model") or {}
    return f"{m.get('path')} ({m.get('arch')}, d_model={m.get('d_model')})"


def check_model(md: dict, model, what: str) -> None:
    """Refuse a graph recorded on another model (step 1)."""
    m = md.get("model") or {}
    same = (m.get("arch") == model.arch and m.get("d_model") == model.d_model
            and md.get("n_layers") == model.n_layers)
    why = "architecture or width"
    ident = md.get("model_identity")
    if same and ident:
        from attribution.model.integrity import identity_mismatch, model_identity

        why = identity_mismatch(ident, model_identity(model))
        same = why is None
    if not same:
        raise CLIError(f"{what} was built on model {_describe_model(md)}, not on --model {model.path} "
                       f"({model.arch}, d_model={model.d_model}; {why}); pass the model it was built on")


def check_dictionaries(md: dict, rm, what: str) -> None:
    """Refuse a graph built with other dictionaries (step 1)."""
    from attribution.attribute.build import dictionaries_digest

    want = md.get("dictionaries_digest")
    widths = [(d.get("in_sites"), d.get("width")) for d in md.get("dictionaries") or []]
    have = [(d.get("in_sites"), d.get("width")) for d in rm.describe()]
    if (want is not None and want != dictionaries_digest(rm)) or (widths and widths != have):
        raise CLIError(f"{what} was built with other dictionaries than --dicts (recorded digest {want}, "
                       f"these {dictionaries_digest(rm)}); pass the --dicts it was attributed with")


def recorded_spec(md: dict, model, args, what: str):
    """The circuit's prompt, restated flags checked against it (step 2)."""
    from circuits.cli._prompt import PromptSpec, resolve_prompt

    src = md.get("prompt_source")
    restated = any(getattr(args, k, None) is not None for k in ("prompt", "task", "example"))
    given = resolve_prompt(args, model) if restated else None
    if src is None:  # graphs from the Python API or older versions record only tokens
        if given is None:
            raise CLIError(f"{what} records no prompt source; pass the --task and --example (or --prompt "
                           "with --answer/--wrong) it was built from")
        spec = given
    else:
        spec = PromptSpec(tuple(src["clean_ids"]),
                          None if src.get("corrupted_ids") is None else tuple(src["corrupted_ids"]),
                          src.get("answer_id"), src.get("wrong_id"),
                          {k: v for k, v in src.items() if k not in ("clean_ids", "corrupted_ids",
                                                                    "answer_id", "wrong_id", "target")},
                          (src.get("target") or {}).get("label", "top logits"))
        if given is not None and (given.clean, given.corrupted, given.answer, given.wrong) != (
                spec.clean, spec.corrupted, spec.answer, spec.wrong):
            raise CLIError(f"{what} was built from {_where(spec.source)}, but the flags give "
                           f"{_where(given.source)}; drop --task/--example/--prompt to use the circuit's own "
                           "prompt, or build the circuit from that prompt")
    tokens = [int(t) for t in md.get("tokens") or []]
    if tokens and tokens != list(spec.clean):
        raise CLIError(f"{what} holds a graph of another prompt ({len(tokens)} tokens) than "
                       f"{_where(spec.source)}; pass the prompt it was built from")
    return spec


def _where(src: dict) -> str:
    if src.get("kind") == "task":
        return f"row {src.get('example')} of task {src.get('task_file') or src.get('task')}"
    return f"the free prompt {src.get('text')!r}"


def metric_for(graph, spec):
    """Metric of last-position logits [V] -> scalar, the graph's own target (step 3)."""
    import mlx.core as mx

    if spec.answer is not None:
        a, w = int(spec.answer), int(spec.wrong)
        return lambda last: last[a] - last[w], f"logit diff ({spec.target_label})"
    nodes = graph.nodes
    logits = nodes[nodes["type"] == "logit"]
    ids = [int(t) for t in logits["token_id"]]
    weights = np.asarray(graph.logit_weights, dtype=np.float32)
    if not ids or len(weights) != len(ids) or any(t < 0 for t in ids):
        raise CLIError("this circuit's graph has no token logit targets to measure; attribute with "
                       "--answer/--wrong (logit difference) or --target top")
    idx, wv = mx.array(ids), mx.array(weights)
    return (lambda last: mx.sum(wv * (last[idx] - mx.mean(last))),
            "weighted top logits (Σ p·(logit − mean logit))")


def run_feature(args, model, tmp) -> dict:
    """Validate ``--circuit`` (module docstring); writes the curve CSV into ``tmp``."""
    from attribution.graph import Graph
    from attribution.replacement import ReplacementModel

    from circuits.pipeline.feature_faithfulness import feature_faithfulness, feature_faithfulness_curve
    from circuits.prune import influence

    if args.ablation not in ("counterfactual", "zero"):
        raise CLIError(f"--ablation {args.ablation}: feature circuits support counterfactual or zero")
    circuit = Graph.load(args.circuit)
    md = circuit.metadata
    check_model(md, model, f"--circuit {args.circuit}")
    rm = ReplacementModel(model, load_dicts(args, model))
    check_dictionaries(md, rm, f"--circuit {args.circuit}")
    spec = recorded_spec(md, model, args, f"--circuit {args.circuit}")
    if args.ablation == "counterfactual" and spec.corrupted is None:
        raise CLIError("the circuit's prompt has no counterfactual; use --ablation zero")
    full = None
    if args.graph is not None:
        full = Graph.load(args.graph)
        check_model(full.metadata, model, f"--graph {args.graph}")
        check_dictionaries(full.metadata, rm, f"--graph {args.graph}")
        if [int(t) for t in full.metadata.get("tokens") or []] != list(spec.clean):
            raise CLIError(f"--graph {args.graph} is the graph of another prompt than --circuit "
                           f"{args.circuit}; pass the graph the circuit was pruned from")
    metric, metric_name = metric_for(circuit, spec)
    clean, corrupted = list(spec.clean), None if spec.corrupted is None else list(spec.corrupted)
    res = feature_faithfulness(rm, clean, circuit, metric, args.ablation, corrupted)
    from circuits.validate.faithfulness import denominator_warning

    rec = {"level": "feature", **res.__dict__, "metric": metric_name, "prompt_source": spec.record(),
           "circuit": str(args.circuit)}
    msg = denominator_warning(res.f_full, res.f_empty)
    if msg is not None:
        rec["warning"] = msg
        warnings.warn(SmallDenominatorWarning(msg))
    if full is not None:
        curve = feature_faithfulness_curve(rm, clean, full, influence(full), metric,
                                           (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0), args.ablation, corrupted)
        curve.to_csv(tmp / "feature_faithfulness_curve.csv", index=False)
    return rec
