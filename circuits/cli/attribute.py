"""``circuits attribute``: build the attribution graph of one prompt.

Algorithm:
  1. Load the model and dictionaries (refusing dictionaries recorded as trained
     on another model unless ``--force``).
  2. Resolve the prompt (``circuits.cli._prompt``): a free ``--prompt`` with the
     top logits or ``--answer``/``--wrong`` as target, or row ``--example`` of
     ``--task``; a shipped organism defaults to its first task, any other model
     must say which prompt.
  3. ``attribution.build_graph`` with the chosen method (exact, atp, ig,
     patching), target and ablation. Counterfactual ablation needs a corrupted
     prompt (the task row's, or ``--counterfactual``).
  4. Record the prompt's source, example index, clean and corrupted ids and the
     target in the graph metadata (``prompt_source``, ``target``); save the
     graph (staged) and its Neuronpedia JSON.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from circuits.cli._common import CLIError, add_common, add_force, load, load_dicts, positive_int, progress, staged
from circuits.cli._out import emit
from circuits.cli._prompt import add_prompt_args, resolve_prompt


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="build an attribution graph for a prompt")
    add_common(p, out_default="out/graph")
    add_force(p)
    p.add_argument("--dicts", type=Path, default=Path("out/dictionaries/dictionaries"))
    add_prompt_args(p)
    p.add_argument("--method", default="exact", choices=["exact", "atp", "ig", "patching", "jump-aware"],
                   help="jump-aware: IG node scores with the largest exactly patched (TopK, BatchTopK "
                        "and JumpReLU jumps; see --correct-tolerance)")
    p.add_argument("--target", default=None, choices=["logit_diff", "top"],
                   help="logit difference (default when the prompt has answer and wrong tokens) "
                        "or the top logits (default for a free prompt without --answer)")
    p.add_argument("--ablation", default=None, choices=["zero", "mean", "counterfactual"],
                   help="baseline of the patching-style methods (default: counterfactual when the "
                        "prompt has one, else zero)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--edges-per-target", type=positive_int, default=None,
                   help="keep the top-k inputs per target")
    p.add_argument("--large-model", action="store_true",
                   help="exact graphs of real models: circuit-tracer's budget (7,500 features by "
                        "influence, 1,024 edges per target, at most 10M edges; "
                        "GraphConfig.large_model()); the flags below override its fields")
    p.add_argument("--max-feature-nodes", type=positive_int, default=None,
                   help="exact graphs: the logits plus this many features, most influential first")
    p.add_argument("--feature-edges", action="store_true",
                   help="atp/ig/patching: also estimate feature-to-feature edges (not just node scores)")
    p.add_argument("--ig-steps", type=positive_int, default=16, help="integration steps of --method ig")
    p.add_argument("--correct-tolerance", type=float, default=0.05,
                   help="--method jump-aware: stop patching once the remaining corrections are "
                        "estimated below this share of the scores' total square")
    p.add_argument("--convention", default="ours", choices=["ours", "circuit-tracer"],
                   help="exact graphs: circuit-tracer's conventions (BOS prepended, position 0 zeroed, "
                        "token nodes without the positional embedding) to reproduce its graphs")


def task_example(model, task: str, example: int, seed: int = 0):
    """(clean ids, corrupted ids, answer id, wrong id) of row ``example`` of ``task``."""
    from circuits.cli._prompt import task_row

    if seed != 0:
        raise CLIError("task rows are defined on the seed-0 stream")
    spec = task_row(model, task, example)
    return list(spec.clean), list(spec.corrupted), spec.answer, spec.wrong


def _ablation(args, spec) -> str:
    if args.method == "exact":
        if args.ablation not in (None, "zero"):
            raise CLIError(f"--ablation {args.ablation} is for --method atp, ig or patching; the exact "
                           "graph has no baseline")
        return "zero"
    ablation = args.ablation or ("counterfactual" if spec.corrupted is not None else "zero")
    if ablation == "counterfactual" and spec.corrupted is None:
        raise CLIError("counterfactual ablation needs a corrupted prompt: pass --counterfactual TEXT "
                       "with --prompt, use a --task row, or choose --ablation zero")
    return ablation


def build(model, dicts, args, prog=None, spec=None):
    """The graph for the parsed arguments (its metadata records the prompt and target)."""
    from attribution import GraphConfig, build_graph, logit_diff

    spec = resolve_prompt(args, model) if spec is None else spec
    target = args.target or ("logit_diff" if spec.answer is not None else "top")
    if target == "logit_diff" and spec.answer is None:
        raise CLIError("--target logit_diff needs answer and wrong tokens: pass --answer and --wrong "
                       "with --prompt, or use --target top")
    if target == "top":
        spec = replace(spec, answer=None, wrong=None, target_label="top logits")
    if args.feature_edges and args.method == "exact":
        raise CLIError("--feature-edges is for --method atp, ig or patching (exact always has them)")
    ablation = _ablation(args, spec)
    if args.convention != "ours" and args.method != "exact":
        raise CLIError("--convention circuit-tracer applies to --method exact")
    if (args.large_model or args.max_feature_nodes is not None) and args.method != "exact":
        raise CLIError("--large-model and --max-feature-nodes apply to --method exact")
    kw = dict(batch_size=args.batch_size, ablation=ablation, feature_edges=args.feature_edges,
              ig_steps=args.ig_steps, convention=args.convention,
              correct_tolerance=args.correct_tolerance)
    for name in ("edges_per_target", "max_feature_nodes"):  # given flags override the preset
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    cfg = GraphConfig.large_model(**kw) if args.large_model else GraphConfig(**kw)
    targets = logit_diff(model, spec.answer, spec.wrong) if spec.answer is not None else None
    cf = list(spec.corrupted) if ablation == "counterfactual" else None
    graph = build_graph(model, dicts, list(spec.clean), targets=targets, method=args.method, config=cfg,
                        counterfactual=cf, progress=prog)
    if spec.answer is None:
        spec = replace(spec, target_label=_top_label(graph))
    md = {**graph.metadata, "prompt_source": spec.record(),
          "prompt": graph.metadata.get("prompt") or model.tokenizer.decode(list(spec.clean)),
          "target": {"kind": spec.target_kind, "label": spec.target_label,
                     "answer": None if spec.answer is None else model.to_str_tokens([spec.answer])[0],
                     "wrong": None if spec.wrong is None else model.to_str_tokens([spec.wrong])[0]}}
    return replace(graph, metadata=md)


def _top_label(graph) -> str:
    """``top logits: " Kate" (p=0.41), ...`` from the graph's logit nodes."""
    nodes = graph.nodes
    logits = nodes[nodes["type"] == "logit"]
    parts = []
    for _, r in logits.head(3).iterrows():
        p = r.get("logit_prob", None)
        parts.append(f"{str(r.get('token', ''))!r}" + (f" (p={p:.2f})" if p is not None and p == p and p > 0 else ""))
    more = "" if len(logits) <= 3 else f", +{len(logits) - 3} more"
    return ("top logits: " + ", ".join(parts) + more) if parts else "top logits"


def run(args) -> int:
    model = load(args)
    dicts = load_dicts(args, model)
    spec = resolve_prompt(args, model)  # before staging: a bad prompt leaves nothing behind
    with staged(args.out) as tmp, progress(args, "attribution") as bar:
        graph = build(model, dicts, args, prog=lambda stage, d, t: bar(d, t), spec=spec)
        graph.save(tmp)
        graph.write_neuronpedia(tmp / "neuronpedia.json")
    counts = graph.nodes["type"].value_counts().to_dict()
    src = graph.metadata["prompt_source"]
    rec = {"out": str(args.out), "nodes": {k: int(v) for k, v in counts.items()},
           "edges": int(graph.adjacency.nnz), "method": args.method,
           "prompt": graph.metadata.get("prompt"), "source": {k: src.get(k) for k in
                                                              ("kind", "task", "task_file", "example", "line")},
           "target": graph.metadata["target"]["label"]}
    where = (f"{src.get('task_file') or src.get('task')} row {src.get('example')}" if src["kind"] == "task"
             else "free prompt")
    emit(args, rec, [f"prompt ({where}): {graph.metadata.get('prompt')!r}",
                     f"target: {rec['target']}",
                     f"graph: {len(graph.nodes)} nodes ({', '.join(f'{v} {k}' for k, v in counts.items())}), "
                     f"{graph.adjacency.nnz} edges -> {args.out}"])
    return 0
