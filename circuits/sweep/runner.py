"""Run a sweep grid: train each run, record its metrics, write the table and the plots.

Layout of the output directory ``out``:
  ``sweep.json``            the sweep's name, data spec and fingerprint, the grid's run ids;
  ``runs/<id>/config.json`` the run's TrainConfig record and axis values;
  ``runs/<id>/checkpoint/`` ``sae.train`` checkpoints while the run is unfinished;
  ``runs/<id>/dictionary/`` the trained dictionary (``sae.save_dictionaries``; optional);
  ``runs/<id>/result.json`` the finished run's record (its presence marks it finished);
  ``results.jsonl``         one JSON line per finished run of the grid, in grid order;
  ``table.md``, ``table.csv``, ``figures/*.png|svg`` (``circuits.sweep.table`` / ``pareto``).

Algorithm (``run_sweep``):
  1. Refuse an ``out`` holding a sweep over other data: ``sweep.json``'s data fingerprint
     must equal this grid's (``SweepMismatchError``, one line, before any write). Runs of
     an earlier grid stay under ``runs/`` (an edited grid reuses the ids it still has);
     the table lists this grid's runs only. Then write ``sweep.json`` (atomically).
  2. For each run in grid order (or only ``only``): skip it when ``result.json`` exists;
     else train it with ``sae.train`` (``resume=True`` on ``runs/<id>/checkpoint``, so an
     interrupted run continues from its last checkpoint, bit-identically, and a run never
     started begins from scratch), timing the call.
  3. Score it (``circuits.sweep.metrics.run_metrics``), save the dictionary, write
     ``result.json`` atomically, delete the checkpoint, rewrite ``results.jsonl`` and the
     tables (each atomically: temporary file then rename), then report "done".
  4. At the end draw the Pareto figures. ``plot_only`` skips steps 2–3.
Progress goes to ``progress(SweepProgress)``; an exception it raises stops the sweep
(the runs finished so far are kept, the current one resumes from its checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from circuits.errors import CircuitsError
from circuits.sweep.data import SweepData, data_fingerprint
from circuits.sweep.grid import RunSpec, SweepGrid, takes_k

SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.jsonl"
SWEEP_KIND = "mlx-circuits sweep"


class SweepMismatchError(CircuitsError, ValueError):
    """The output directory holds a sweep over other data."""


class SweepRunError(CircuitsError, ValueError):
    """A run of the grid cannot be trained as configured (e.g. its loss diverged)."""


@dataclass(frozen=True)
class SweepProgress:
    """What the progress callback receives."""

    event: str
    """"skip" (already finished), "start", "step" (training progress), "done" (recorded)."""
    run_id: str
    """The run's id."""
    index: int
    """Position of the run among those this call handles (0-based)."""
    total: int
    """Number of runs this call handles."""
    label: str
    """Short human label of the run (arch and axis values)."""
    step: int = 0
    """Training steps completed ("step"; "start": the step it resumes from)."""
    total_steps: int = 0
    """Training steps of the run."""
    record: dict | None = None
    """The run's record ("done" and "skip")."""


@dataclass
class SweepResult:
    """What ``run_sweep`` did and where its outputs are."""

    out: Path
    """The output directory."""
    rows: list
    """Records of the grid's finished runs, in grid order."""
    trained: list = field(default_factory=list)
    """Ids of the runs trained (or resumed) by this call."""
    skipped: list = field(default_factory=list)
    """Ids of the runs found finished."""
    missing: list = field(default_factory=list)
    """Ids of grid runs still unfinished."""
    files: list = field(default_factory=list)
    """Tables and figures written."""


def run_label(run: RunSpec) -> str:
    """arch plus the axis values, e.g. "topk k=25 width=4096"."""
    return " ".join([str(run.axes["arch"])] + [f"{k}={'default' if v is None else v}"
                                               for k, v in run.axes.items() if k != "arch"])


def _write_json(path: Path, obj) -> None:
    from viz._atomic import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def check_out_dir(grid: SweepGrid, out) -> None:
    """Step 1's check: refuse an ``out`` that holds a sweep over other data, or a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SweepMismatchError(f"--out {out} is a file; pass a directory")
    f = out / SWEEP_FILE
    if out.is_dir() and any(out.iterdir()) and not f.is_file():
        raise SweepMismatchError(f"--out {out} is not empty and holds no {SWEEP_FILE}; pass an "
                                 "empty or new directory, or a sweep's own output directory")
    if not f.is_file():
        return
    try:
        old = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SweepMismatchError(f"{f} cannot be read ({exc}); delete it or choose another "
                                 "--out") from None
    if old.get("data_fingerprint") != data_fingerprint(grid.data):
        raise SweepMismatchError(
            f"{out} holds a sweep over other data ({json.dumps(old.get('data'), sort_keys=True)});"
            " restore the grid's [data] table or choose another --out")


def _record(run: RunSpec, metrics: dict, start_step: int) -> dict:
    c = run.config
    # the arch as the grid names it ("prolu", not the resolved "composed" of a named recipe)
    rec = {"id": run.id, "label": run_label(run), "arch": run.axes["arch"], "kind": c.kind,
           "width": c.width, "sparsity_axis": run.sparsity_axis,
           "k": c.k if takes_k(c) else None,
           "sparsity_coef": None if takes_k(c) else c.sparsity_coef,
           "axes": {k: v for k, v in run.axes.items()}, "total_tokens": c.total_tokens,
           "batch_tokens": c.batch_tokens, "steps": c.steps, "lr": c.lr_for(c.width or 1),
           "resumed_from_step": start_step, **metrics,
           "loadavg": [round(v, 2) for v in os.getloadavg()]}
    return rec


def _read_result(run_dir: Path) -> dict | None:
    f = run_dir / "result.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a damaged record: the run is trained again


def _train_run(run: RunSpec, grid: SweepGrid, data: SweepData, run_dir: Path, report) -> tuple:
    from sae import train
    from sae.train.checkpoint import read_state

    ckpt = run_dir / "checkpoint"
    state = read_state(ckpt) if ckpt.is_dir() else None
    start = int(state["step"]) if state is not None else 0
    cfg = run.config
    every = grid.checkpoint_every or max(1, cfg.steps // 8)
    source = data.source  # built before the clock starts: generation is not training
    report("start", step=start, total_steps=cfg.steps)

    def on_step(p):
        report("step", step=p.step, total_steps=p.total_steps)

    from sae.errors import NonFiniteError

    t0 = time.perf_counter()
    try:
        res = train(source, cfg, callback=on_step, checkpoint_dir=ckpt, checkpoint_every=every,
                    resume=True, distributed=False,
                    run_info={"sweep_data": data_fingerprint(grid.data)})
    except NonFiniteError as exc:  # a property of this run's settings: say which run and how to fix
        msg = str(exc).splitlines()[0]
        raise SweepRunError(f"run {run.id} ({run_label(run)}): {msg}; lower its lr in the grid "
                            "and rerun (finished runs are kept)") from exc
    secs = time.perf_counter() - t0
    return res.by_name(), (cfg.steps - start) * cfg.batch_tokens, secs, start


def _finished_rows(grid: SweepGrid, out: Path) -> list:
    rows = []
    for r in grid.runs:
        rec = _read_result(out / "runs" / r.id)
        if rec is not None:
            rows.append(rec)
    return rows


def write_outputs(grid: SweepGrid, out, rows: list, plots: bool = True) -> list:
    """``results.jsonl``, the tables and (with ``plots``) the figures; returns their paths."""
    from circuits.sweep.pareto import plot_sweep
    from circuits.sweep.table import write_tables
    from viz._atomic import atomic_write_text

    out = Path(out)
    files = [atomic_write_text(out / RESULTS_FILE,
                               "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))]
    files += write_tables(rows, out, title=grid.name)
    if plots and rows:
        files += plot_sweep(rows, out / "figures", title=grid.name,
                            synthetic=grid.data.source == "synthetic")
    return files


def run_sweep(grid: SweepGrid, out, progress: Callable | None = None, *, only: str | None = None,
              plot_only: bool = False) -> SweepResult:
    """Train and score every unfinished run of ``grid`` into ``out`` (module docstring)."""
    out = Path(out)
    todo = [grid.run(only)] if only is not None else list(grid.runs)
    check_out_dir(grid, out)
    if plot_only:
        rows = _finished_rows(grid, out)
        files = write_outputs(grid, out, rows) if (out / SWEEP_FILE).is_file() else []
        done = {r["id"] for r in rows}
        return SweepResult(out, rows, [], [], [r.id for r in grid.runs if r.id not in done], files)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / SWEEP_FILE, {"kind": SWEEP_KIND, "name": grid.name, "grid": grid.source_path,
                                   "data": grid.data.record(),
                                   "data_fingerprint": data_fingerprint(grid.data),
                                   "runs": [r.id for r in grid.runs]})
    data = SweepData(grid.data)
    result = SweepResult(out, [])
    for i, run in enumerate(todo):
        run_dir = out / "runs" / run.id

        def report(event, _i=i, _run=run, **kw):
            if progress is not None:
                progress(SweepProgress(event, _run.id, _i, len(todo), run_label(_run), **kw))

        rec = _read_result(run_dir)
        if rec is not None:
            result.skipped.append(run.id)
            report("skip", record=rec)
            continue
        from sae.train.checkpoint import config_record

        _write_json(run_dir / "config.json", {"id": run.id, "axes": run.axes,
                                              "config": config_record(run.config)})
        dicts, tokens, secs, start = _train_run(run, grid, data, run_dir, report)
        from circuits.sweep.metrics import run_metrics

        rec = _record(run, run_metrics(dicts, data, tokens, secs), start)
        if grid.save_dictionaries:
            from sae import save_dictionaries

            save_dictionaries(dicts, run_dir / "dictionary", {"sweep_run": run.id},
                              model=data.model if grid.data.source == "model" else None)
        _write_json(run_dir / "result.json", rec)
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
        result.trained.append(run.id)
        write_outputs(grid, out, _finished_rows(grid, out), plots=False)
        report("done", step=run.config.steps, total_steps=run.config.steps, record=rec)
    result.rows = _finished_rows(grid, out)
    result.files = write_outputs(grid, out, result.rows)
    done = {r["id"] for r in result.rows}
    result.missing = [r.id for r in grid.runs if r.id not in done]
    return result
