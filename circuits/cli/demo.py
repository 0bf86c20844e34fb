"""``circuits demo``: the end-to-end mission on the shipped organism.

It grows with the pipeline; today it runs what exists, honestly.

Algorithm:
  1. Report the machine (doctor record).
  2. Run each available stage in order, timing it, and print where the
     artifacts are.
"""

from __future__ import annotations

import time
from pathlib import Path

from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="run the end-to-end pipeline on the shipped ioi organism")
    p.add_argument("--out", type=Path, default=Path("out"), help="output directory")


def run(args) -> int:
    from circuits.cli.doctor import collect

    t0 = time.perf_counter()
    rec = {"doctor": collect()}
    lines = [f"machine: {rec['doctor']['blas_library']} at {rec['doctor']['matmul_gflops']} GFLOP/s"]
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    emit(args, rec, lines)
    return 0
