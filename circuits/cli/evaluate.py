"""``circuits evaluate``: dictionary quality on held-out text.

Algorithm:
  1. Load the model and a ``save_dictionaries`` directory.
  2. ``evaluate_dictionaries``: L0, FVU, cosine, relative bias, dead/dense
     fractions, CE recovered and KL (zero or mean baseline, recorded).
  3. Write ``dictionary_metrics.csv`` (staged) and print the table.
"""

from __future__ import annotations

from pathlib import Path

from circuits.cli._common import add_common, load, staged
from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="evaluate dictionaries: L0, FVU, dead latents, CE recovered")
    add_common(p, out_default="out")
    p.add_argument("--dicts", type=Path, default=Path("out/dictionaries/dictionaries"),
                   help="directory written by `circuits train`")
    p.add_argument("--corpus", default=None, help="text file, task:NAME, or organism")
    p.add_argument("--baseline", default="zero", choices=["zero", "mean"], help="CE-recovered baseline")


def run(args) -> int:
    from sae import load_dictionaries

    from circuits.pipeline.dictionaries import evaluate_dictionaries

    model = load(args)
    dicts = load_dictionaries(args.dicts, site_dims=None)
    df = evaluate_dictionaries(model, dicts, corpus=args.corpus, ce_baseline=args.baseline)
    with staged(args.out) as tmp:
        df.to_csv(tmp / "dictionary_metrics.csv", index=False)
    cols = [c for c in ("name", "l0", "fvu", "cosine", "dead_frac", "ce_recovered", "kl") if c in df]
    emit(args, {"out": str(args.out / "dictionary_metrics.csv"), "rows": df[cols].to_dict("records")},
         [df[cols].to_string(index=False)])
    return 0
