"""Pareto sweeps of dictionary training: architectures × sparsity × widths (× any field).

  1. ``load_grid(path)`` / ``parse_grid(dict)`` → ``SweepGrid`` (``circuits.sweep.grid``).
  2. ``run_sweep(grid, out, progress=None)`` → ``SweepResult``: resumable training and
     scoring, one record per run (``circuits.sweep.runner``, ``circuits.sweep.metrics``).
  3. ``pareto_front`` and the plots (``circuits.sweep.pareto``), the tables
     (``circuits.sweep.table``).
"""

from circuits.sweep.grid import DataSpec, GridError, RunSpec, SweepGrid, load_grid, parse_grid
from circuits.sweep.pareto import pareto_front, plot_sweep
from circuits.sweep.runner import (
    SweepMismatchError, SweepProgress, SweepResult, run_sweep, write_outputs,
)
from circuits.sweep.table import markdown, sweep_table, write_tables

__all__ = ["DataSpec", "GridError", "RunSpec", "SweepGrid", "SweepMismatchError", "SweepProgress",
           "SweepResult", "load_grid", "markdown", "pareto_front", "parse_grid", "plot_sweep",
           "run_sweep", "sweep_table", "write_outputs", "write_tables"]
