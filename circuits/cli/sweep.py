"""``circuits sweep GRID.toml --out DIR``: a resumable Pareto sweep of dictionary training.

Algorithm:
  1. Parse the grid (``circuits.sweep.load_grid``): a bad grid (unknown field or arch,
     empty axis, non-positive width or k, ...) is one error line and a non-zero exit,
     before anything is written. ``--only ID`` must name a run of the grid.
  2. Check ``--out``: empty, new, or a sweep directory over the same data (a sweep over
     other data is refused; ``--overwrite`` deletes an earlier sweep there first).
  3. ``run_sweep``: finished runs are skipped, an interrupted one resumes from its
     checkpoint (resuming is the default; ``--resume`` is accepted and changes nothing);
     a line per run goes to stderr (not with ``--quiet``/``--json``). ``--plot-only``
     only rewrites the table and the figures from the finished runs.
  4. Write the run manifest ``run.json`` into ``--out`` and print where the table is.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from circuits.cli._common import CLIError
from circuits.cli._out import emit

CHECKS_OUT_ITSELF = True
"""``--out`` is reused on purpose (resume): ``main``'s empty-directory check does not apply."""
INTERRUPTED_NOTE = "finished runs and the current run's checkpoint are kept; rerun the same command to resume"
"""What Ctrl-C leaves (the CLI's interruption message)."""


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="Pareto sweep: train archs x sparsity x widths from a TOML grid, "
                                  "record L0/FVU/MCC/CE..., draw frontiers (resumable)")
    p.add_argument("grid", type=Path, help="TOML sweep grid (see circuits.sweep.grid)")
    p.add_argument("--out", type=Path, required=True,
                   help="sweep directory (reused: finished runs are skipped)")
    p.add_argument("--resume", action="store_true",
                   help="continue finished/interrupted runs in --out (the default)")
    p.add_argument("--only", default=None, metavar="ID", help="train only the run with this id")
    p.add_argument("--plot-only", action="store_true",
                   help="only rewrite the table and figures from the finished runs")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier sweep in --out and start again")


def _line(args, text: str) -> None:
    if not (getattr(args, "quiet", False) or getattr(args, "json", False)):
        print(text, file=sys.stderr, flush=True)


def _progress(args):
    def cb(p):
        head = f"sweep [{p.index + 1}/{p.total}] {p.run_id} {p.label}"
        if p.event == "skip":
            _line(args, f"{head}: finished earlier, skipped")
        elif p.event == "start":
            _line(args, f"{head}: training {p.total_steps} steps"
                        + (f" (resuming at step {p.step})" if p.step else ""))
        elif p.event == "done":
            r = p.record or {}
            shown = " ".join(f"{k}={r[k]:.4g}" for k in ("l0", "fvu", "mcc", "f1", "ce_recovered",
                                                         "tokens_per_s")
                             if isinstance(r.get(k), (int, float)))
            _line(args, f"{head}: done {shown}")
    return cb


def run(args) -> int:
    from circuits.pipeline.manifest import manifest_record, write_manifest
    from circuits.sweep import load_grid, run_sweep
    from circuits.sweep.runner import SWEEP_FILE, check_out_dir

    grid = load_grid(args.grid)
    if args.only is not None:
        grid.run(args.only)
    out = Path(args.out)
    if args.overwrite and out.is_dir() and (out / SWEEP_FILE).is_file():
        if args.plot_only:
            raise CLIError("--overwrite with --plot-only would delete the runs it plots; drop one")
        shutil.rmtree(out)
    check_out_dir(grid, out)
    if args.plot_only and not (out / SWEEP_FILE).is_file():
        raise CLIError(f"--plot-only: {out} holds no sweep ({SWEEP_FILE}); run the sweep first")
    res = run_sweep(grid, out, _progress(args), only=args.only, plot_only=args.plot_only)
    arts = {p.name: p.name + ("/" if p.is_dir() else "") for p in sorted(out.iterdir())
            if not p.name.startswith(".")}
    from circuits.cli._common import _RUN

    write_manifest(out, manifest_record("sweep", _RUN.get("argv", []), {"grid": args.grid}, arts))
    record = {"out": str(out), "table": str(out / "table.md"), "finished": len(res.rows),
              "trained": res.trained, "skipped": res.skipped, "missing": res.missing,
              "files": [str(f) for f in res.files]}
    lines = [f"sweep {grid.name}: {len(res.rows)}/{len(grid.runs)} runs finished "
             f"({len(res.trained)} trained now, {len(res.skipped)} earlier); table: "
             f"{out / 'table.md'}"]
    if res.missing:
        lines.append(f"unfinished: {', '.join(res.missing)} (rerun the same command to continue)")
    emit(args, record, lines)
    return 0
