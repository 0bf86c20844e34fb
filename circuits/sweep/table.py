"""Sweep tables: one row per finished run, as markdown and CSV.

Algorithm (``sweep_table``):
  1. Columns: id, arch, width, the sparsity setting ("k=25" or "coef=5"), then every
     metric any row has, in ``COLUMNS`` order (L0, FVU, dead fraction, MCC, F1, ...,
     CE recovered, KL, tokens/s), then the training budget.
  2. Rows in grid order; a row on the L0–FVU Pareto frontier is marked "*" in ``front``.
  3. Markdown numbers use 4 significant digits; the CSV keeps full precision. Both files
     are written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

COLUMNS = ("l0", "fvu", "dead_frac", "silent_eval_frac", "mcc", "f1", "precision", "recall",
           "uniqueness", "shrinkage", "absorption", "ce_recovered", "kl_spliced", "tokens_per_s",
           "train_s")
"""Metric columns, in order (absent ones are left out)."""


def _sparsity(r: dict) -> str:
    if r.get("k") is not None:
        return f"k={r['k']}"
    c = r.get("sparsity_coef")
    return "coef=default" if c is None else f"coef={c:g}"


def sweep_table(rows: list) -> tuple[list, list]:
    """(header, rows of values) of the table (module docstring)."""
    from circuits.sweep.pareto import pareto_front

    metrics = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    header = ["id", "arch", "width", "sparsity", "front", *metrics, "total_tokens"]
    front = set()
    if rows:
        xs = [r.get("l0") if r.get("l0") is not None else math.nan for r in rows]
        ys = [r.get("fvu") if r.get("fvu") is not None else math.nan for r in rows]
        front = set(pareto_front(xs, ys).tolist())
    body = [[r["id"], r["arch"], r.get("width"), _sparsity(r), "*" if i in front else "",
             *[r.get(c) for c in metrics], r.get("total_tokens")] for i, r in enumerate(rows)]
    return header, body


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(rows: list, title: str = "") -> str:
    """The markdown table (with a heading and a legend line)."""
    header, body = sweep_table(rows)
    lines = [f"# Sweep {title}".rstrip(), "",
             "`front`: on the L0–FVU Pareto frontier. Metrics on held-out rows; "
             "`tokens_per_s` measured on a shared machine (see `loadavg` in results.jsonl).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def csv_text(rows: list) -> str:
    """The CSV table (full precision)."""
    header, body = sweep_table(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([["" if v is None else v for v in row] for row in body])
    return buf.getvalue()


def write_tables(rows: list, directory, title: str = "") -> list:
    """Write ``table.md`` and ``table.csv`` atomically; returns their paths."""
    from viz._atomic import atomic_write_text

    directory = Path(directory)
    return [atomic_write_text(directory / "table.md", markdown(rows, title)),
            atomic_write_text(directory / "table.csv", csv_text(rows))]
