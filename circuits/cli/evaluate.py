"""``circuits evaluate``: dictionary quality on held-out text.

Algorithm:
  1. Check ``--dicts`` (an existing ``save_dictionaries`` directory, with a hint when it
     is the ``train --out`` directory above it), ``--baseline`` and ``--corpus`` before
     loading anything; load the model and the dictionaries (refusing dictionaries recorded
     for another model unless ``--force``).
  2. ``evaluate_dictionaries``: L0, FVU, cosine, relative bias, dead/dense fractions,
     CE recovered and KL of the spliced model (zero or mean baseline, recorded). Any NaN or
     infinite metric is an error naming the dictionary and the metric: no table is written.
  3. Write ``dictionary_metrics.csv`` (staged; with a ``ce_note`` column) and print the
     table (KL included, and a ``note`` column when a CE recovered needs one) with
     footnotes: how CE recovered is defined against its baseline, why a value is above 1
     when one is (the spliced model's loss is below the clean model's on this corpus, or
     the baseline's is, which makes the ratio meaningless), and what ``dead_frac`` counts
     (the training log's definition).
"""

from __future__ import annotations

from pathlib import Path

from circuits.cli._common import CLIError, add_common, add_force, load, load_dicts, staged
from circuits.cli._out import emit

COLUMNS = ("name", "l0", "fvu", "cosine", "dead_frac", "ce_recovered", "kl_spliced")
"""Columns of the printed table (the CSV has every metric)."""


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="evaluate dictionaries: L0, FVU, dead latents, CE recovered, KL")
    add_common(p, out_default="out")
    add_force(p)
    p.add_argument("--dicts", type=Path, default=Path("out/dictionaries/dictionaries"),
                   help="dictionaries directory written by `circuits train` (OUT/dictionaries)")
    p.add_argument("--corpus", default=None,
                   help="organism (default), task:NAME, or a file path (.jsonl/.parquet tables, "
                        "any other file as text, one document per line)")
    p.add_argument("--baseline", default="zero", choices=["zero", "mean"],
                   help="CE-recovered baseline: zero- or mean-ablate each dictionary's output site")


def check_dicts_dir(path) -> Path:
    """``--dicts`` must be a directory with ``index.json`` (step 1)."""
    path = Path(path)
    if not path.exists():
        raise CLIError(f"--dicts {path} does not exist; pass the dictionaries directory written by "
                       "`circuits train` (OUT/dictionaries)")
    if not path.is_dir():
        raise CLIError(f"--dicts {path} is a file; pass the dictionaries directory written by "
                       "`circuits train` (OUT/dictionaries)")
    if not (path / "index.json").is_file():
        if (path / "dictionaries" / "index.json").is_file():
            raise CLIError(f"--dicts {path} is a `circuits train` output directory; pass "
                           f"{path / 'dictionaries'}")
        raise CLIError(f"--dicts {path} is not a dictionaries directory (it has no index.json); "
                       "pass the directory written by `circuits train` (OUT/dictionaries)")
    return path


def footnotes(df, baseline: str) -> list[str]:
    """The lines printed under the table (step 3)."""
    from circuits.pipeline.dictionaries import CE_ABOVE_ONE, CE_BASELINE_BELOW

    ablate = "zeros" if baseline == "zero" else "its mean over the batch"
    lines = [f"ce_recovered = (CE_baseline - CE_spliced) / (CE_baseline - CE_clean); baseline: each "
             f"dictionary's output site replaced by {ablate} (--baseline {baseline}); 1 = as good "
             "as the clean model, 0 = as bad as the baseline",
             "dead_frac: latents that fired on none of the evaluated tokens (dead_window in the "
             "CSV; the training log counts the same over min(dead_tokens, tokens seen))"]
    notes = list(df["ce_note"]) if "ce_note" in df else []
    above = [str(n) for n, note in zip(df["name"], notes) if note == CE_ABOVE_ONE]
    below = [str(n) for n, note in zip(df["name"], notes) if note == CE_BASELINE_BELOW]
    if above:
        lines.append(f"note '{CE_ABOVE_ONE}' ({', '.join(above)}): ce_recovered > 1 because the "
                     "spliced model's loss is below the clean model's on this corpus "
                     "(CE_spliced < CE_clean; ce_clean and ce_spliced are in the CSV)")
    if below:
        lines.append(f"note '{CE_BASELINE_BELOW}' ({', '.join(below)}): the {baseline}-ablated "
                     "model's loss is below the clean model's on this corpus, so the denominator is "
                     "negative and ce_recovered means nothing there (it can exceed 1); try "
                     f"--baseline {'mean' if baseline == 'zero' else 'zero'} or another --corpus")
    return lines


def run(args) -> int:
    from circuits.pipeline.corpus import check_corpus
    from circuits.pipeline.dictionaries import evaluate_dictionaries

    if args.baseline not in ("zero", "mean"):
        raise CLIError(f"--baseline must be zero or mean, got {args.baseline!r}")
    check_dicts_dir(args.dicts)
    check_corpus(args.corpus)
    model = load(args)
    dicts = load_dicts(args, model)
    df = evaluate_dictionaries(model, dicts, corpus=args.corpus, ce_baseline=args.baseline)
    with staged(args.out) as tmp:
        df.to_csv(tmp / "dictionary_metrics.csv", index=False)
    cols = [c for c in COLUMNS if c in df]
    shown = df[cols].copy()
    if "ce_note" in df and (df["ce_note"] != "").any():
        shown["note"] = df["ce_note"]
    notes = footnotes(df, args.baseline)
    rows = df[[*cols, *(["ce_note"] if "ce_note" in df else [])]].to_dict("records")
    emit(args, {"out": str(args.out / "dictionary_metrics.csv"), "rows": rows, "notes": notes},
         [shown.to_string(index=False), *notes])
    return 0
