"""``circuits attribute``: build the attribution graph of one prompt.

Algorithm:
  1. Load the model and dictionaries; take the prompt from ``--prompt`` or
     from example ``--example`` of ``--task`` (which also supplies the
     counterfactual prompt and the logit-difference target).
  2. ``attribution.build_graph`` with the chosen method (exact, atp, ig,
     patching), target (top logits or logit difference) and ablation.
  3. Save the graph (staged) and its Neuronpedia JSON.
"""

from __future__ import annotations

from pathlib import Path

from circuits.cli._common import add_common, load, progress, staged
from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="build an attribution graph for a prompt")
    add_common(p, out_default="out/graph")
    p.add_argument("--dicts", type=Path, default=Path("out/dictionaries/dictionaries"))
    p.add_argument("--prompt", default=None, help="prompt text (default: an example of --task)")
    p.add_argument("--task", default="ioi", help="task supplying prompt, counterfactual and target")
    p.add_argument("--example", type=int, default=0, help="which task example (seeded)")
    p.add_argument("--method", default="exact", choices=["exact", "atp", "ig", "patching"])
    p.add_argument("--target", default="logit_diff", choices=["logit_diff", "top"],
                   help="logit-difference direction of the task, or the top logits")
    p.add_argument("--ablation", default="counterfactual", choices=["zero", "mean", "counterfactual"],
                   help="baseline of the patching-style methods")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--edges-per-target", type=int, default=None, help="keep the top-k inputs per target")
    p.add_argument("--feature-edges", action="store_true",
                   help="atp/ig/patching: also estimate feature-to-feature edges (not just node scores)")
    p.add_argument("--ig-steps", type=int, default=16, help="integration steps of --method ig")


def task_example(model, task: str, example: int, seed: int = 0):
    """(clean ids, corrupted ids, answer id, wrong id) of one task example."""
    from circuits import tasks

    data = tasks.get(task).generate(example + 1, seed, model.tokenizer)
    i = example
    return ([int(t) for t in data.clean[i]], [int(t) for t in data.corrupted[i]],
            int(data.answer[i]), int(data.wrong[i]))


def build(model, dicts, args, prog=None):
    """The graph for the parsed arguments."""
    from attribution import GraphConfig, build_graph, logit_diff

    clean, corrupted, good, bad = task_example(model, args.task, args.example)
    prompt = args.prompt if args.prompt is not None else clean
    targets = logit_diff(model, good, bad) if args.target == "logit_diff" else None
    ablation = args.ablation if args.method != "exact" else "zero"
    if args.feature_edges and args.method == "exact":
        raise ValueError("--feature-edges is for --method atp, ig or patching (exact always has them)")
    cfg = GraphConfig(batch_size=args.batch_size, edges_per_target=args.edges_per_target,
                      ablation=ablation, feature_edges=args.feature_edges, ig_steps=args.ig_steps)
    cf = corrupted if (args.ablation == "counterfactual" and args.prompt is None) else None
    if args.method != "exact" and args.ablation == "counterfactual" and cf is None:
        raise ValueError("counterfactual ablation needs a task prompt; drop --prompt or use --ablation zero")
    return build_graph(model, dicts, prompt, targets=targets, method=args.method, config=cfg,
                       counterfactual=cf, progress=prog)


def run(args) -> int:
    from sae import load_dictionaries

    model = load(args)
    dicts = load_dictionaries(args.dicts)
    with staged(args.out) as tmp, progress(args, "attribution") as bar:
        graph = build(model, dicts, args, prog=lambda stage, d, t: bar(d, t))
        graph.save(tmp)
        graph.write_neuronpedia(tmp / "neuronpedia.json")
    counts = graph.nodes["type"].value_counts().to_dict()
    rec = {"out": str(args.out), "nodes": {k: int(v) for k, v in counts.items()},
           "edges": int(graph.adjacency.nnz), "method": args.method,
           "prompt": graph.metadata.get("prompt")}
    emit(args, rec, [f"graph: {len(graph.nodes)} nodes ({', '.join(f'{v} {k}' for k, v in counts.items())}), "
                     f"{graph.adjacency.nnz} edges -> {args.out}"])
    return 0
