"""``circuits train``: train per-layer dictionaries on a model and save them.

Algorithm:
  1. Build a ``DictionarySpec`` from flags (or ``--config``).
  2. Train with a progress bar (``circuits.pipeline.dictionaries``).
  3. Save with ``sae.save_dictionaries`` into the staged output directory,
     plus ``train_log.jsonl``; print final metrics.
"""

from __future__ import annotations

import json

from circuits.cli._common import add_common, load, progress, staged
from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="train SAEs / transcoders / CLTs on a model's activations")
    add_common(p, out_default="out/dictionaries")
    p.add_argument("--sites", default="L*.mlp_in", help="input sites, e.g. 'L*.mlp_in' or 'L1.resid_post,L2.resid_post'")
    p.add_argument("--kind", default="transcoder", choices=["sae", "transcoder", "skip_transcoder", "clt"])
    p.add_argument("--arch", default="batchtopk",
                   choices=["relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka"])
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--tokens", type=int, default=2 ** 18, help="training token budget")
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default=None, help="text file (.txt/.jsonl/.parquet), task:NAME, or organism")


def spec_from_args(args):
    from circuits.pipeline.dictionaries import DictionarySpec

    return DictionarySpec(sites=args.sites, kind=args.kind, arch=args.arch, width=args.width,
                          k=args.k, tokens=args.tokens, batch_tokens=args.batch_tokens,
                          seed=args.seed, corpus=args.corpus)


def run(args) -> int:
    from sae import save_dictionaries

    from circuits.pipeline.dictionaries import train_config, train_dictionaries

    model = load(args)
    spec = spec_from_args(args)
    train_config(spec, model.n_layers)  # validate sites/arch before any work or output
    with staged(args.out) as tmp, progress(args, "train dictionaries") as bar:
        def cb(p):
            fvu = [m.get("fvu") for m in p.metrics.values() if m.get("fvu") is not None]
            bar(p.step, p.total_steps, fvu=max(fvu) if fvu else float("nan"))

        result = train_dictionaries(model, spec, callback=cb)
        save_dictionaries(dict(zip(result.names, result.dictionaries)), tmp / "dictionaries",
                          metadata={"model": str(model.path), "spec": vars(spec)})
        with open(tmp / "train_log.jsonl", "w") as f:
            for row in result.history:
                f.write(json.dumps(row, sort_keys=True, default=float) + "\n")
    last = {}
    for row in result.history:
        last[row.get("name")] = row
    rec = {"out": str(args.out / "dictionaries"), "steps": result.steps, "final": last}
    lines = [f"trained {len(result.dictionaries)} dictionaries in {result.steps} steps -> {args.out / 'dictionaries'}"]
    lines += [f"  {n}: " + ", ".join(f"{k}={v:.4g}" for k, v in r.items()
                                    if isinstance(v, float)) for n, r in last.items()]
    emit(args, rec, lines)
    return 0
