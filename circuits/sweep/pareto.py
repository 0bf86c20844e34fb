"""Pareto frontiers of a sweep and their plots.

Frontier (``pareto_front``), for points (x_i, y_i) where lower x is better (L0) and lower
y is better (FVU; pass ``maximize=True`` for MCC, F1, CE recovered):
  1. Drop points with a non-finite coordinate.
  2. Point i is dominated when some j has x_j <= x_i and y_j <= y_i with one of the two
     strict; the frontier is every point not dominated (exact duplicates of a frontier
     point are all on it).
  3. Sort by (x, y); sweep left to right keeping the best y so far: a point is on the
     frontier iff its y beats the best so far, or equals the point that set it exactly.
     O(n log n); the result is ordered by increasing x.
Plots (``plot_sweep``): x = L0 (log scale), one line per architecture (and width when the
sweep has several) through its points in L0 order, the frontier over all runs drawn as a
dashed step line with its points ringed; PNG and SVG written atomically
(``viz.plots.save_figure``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

PLOTS = (("fvu", "FVU", False), ("mcc", "MCC", True), ("f1", "F1", True),
         ("ce_recovered", "CE recovered", True), ("kl_spliced", "KL (spliced)", False))
"""(record key, axis label, higher is better) of each plot against L0 (drawn when present)."""


def pareto_front(x, y, maximize: bool = False) -> np.ndarray:
    """Indices of the non-dominated points, by increasing x (module docstring)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    yy = -y if maximize else y
    ok = np.nonzero(np.isfinite(x) & np.isfinite(yy))[0]
    order = ok[np.lexsort((yy[ok], x[ok]))]
    keep, best_y, best_x = [], math.inf, math.nan
    for i in order:
        if yy[i] < best_y:
            keep.append(i)
            best_y, best_x = yy[i], x[i]
        elif yy[i] == best_y and x[i] == best_x:
            keep.append(i)
    return np.asarray(keep, np.int64)


def _series(rows: list) -> dict:
    widths = {r.get("width") for r in rows}
    groups: dict = {}
    for r in rows:
        key = r["arch"] if len(widths) <= 1 else f"{r['arch']} m={r.get('width')}"
        groups.setdefault(key, []).append(r)
    return groups


def plot_metric(rows: list, key: str, label: str, maximize: bool, title: str = ""):
    """The figure of ``key`` against L0 (None when no run has both)."""
    from viz.plots import new_figure, plot_context

    pts = [r for r in rows if _finite(r.get("l0")) and _finite(r.get(key)) and r["l0"] > 0]
    if not pts:
        return None
    with plot_context():
        fig, ax = new_figure(5.6, 3.8)
        for name, grp in _series(pts).items():
            grp = sorted(grp, key=lambda r: r["l0"])
            ax.plot([r["l0"] for r in grp], [r[key] for r in grp], marker="o", ms=4, lw=1.2,
                    label=name)
        xs = np.array([r["l0"] for r in pts])
        ys = np.array([r[key] for r in pts])
        front = pareto_front(xs, ys, maximize=maximize)
        ax.step(xs[front], ys[front], where="post", color="black", ls="--", lw=0.9,
                label="Pareto frontier")
        ax.scatter(xs[front], ys[front], s=70, facecolors="none", edgecolors="black", lw=1.0,
                   zorder=3)
        ax.set_xscale("log")
        from matplotlib.ticker import FormatStrFormatter

        # plain numbers (12, 25, 50), not 1.2 x 10^1: L0 values are read off the axis
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        if xs.max() <= 20 * xs.min():  # within about a decade: label the minor ticks too
            ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        else:
            from matplotlib.ticker import NullFormatter

            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("L0 (active latents per row, held out)")
        ax.set_ylabel(label + (" (higher is better)" if maximize else " (lower is better)"))
        ax.set_title(f"{title}: {label} vs L0" if title else f"{label} vs L0")
        ax.legend(loc="best", frameon=False)
    return fig


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plot_sweep(rows: list, directory, title: str = "", synthetic: bool = True) -> list:
    """Write ``l0_<metric>.png`` and ``.svg`` for every metric of ``PLOTS`` the rows have."""
    from viz.plots import save_figure

    directory = Path(directory)
    files = []
    for key, label, maximize in PLOTS:
        if not synthetic and key in ("mcc", "f1"):
            continue
        fig = plot_metric(rows, key, label, maximize, title)
        if fig is None:
            continue
        for ext in ("png", "svg"):
            files.append(save_figure(fig, directory / f"l0_{key}.{ext}"))
    return files
