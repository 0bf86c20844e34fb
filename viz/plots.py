"""Matplotlib plots in one style (Agg / object API only: no pyplot state, no ``show``).

Every function:
1. Validates its input (documented DataFrame columns or arrays).
2. Builds a ``matplotlib.figure.Figure`` inside ``plot_context()`` (shared fonts, sizes,
   Okabe–Ito colour cycle, light grid), so no global pyplot figure is ever created.
3. Returns the Figure and, when ``path`` is given, saves it atomically with
   ``save_figure`` (format from the suffix: svg, png or pdf; no timestamps in SVG/PDF).

Circuit/benchmark plots live here; feature-level plots in ``viz.feature_plots``.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from viz._atomic import atomic_write_bytes
from viz.errors import SchemaError, VizError
from viz.style import NEGATIVE, NEUTRAL, OKABE_ITO, POSITIVE

EDGE_PCTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
"""MIB's edge percentages for faithfulness curves."""
_FORMATS = ("svg", "png", "pdf")


@contextlib.contextmanager
def plot_context():
    """matplotlib ``rc_context`` with the viz style (imports matplotlib lazily)."""
    import matplotlib

    rc = {
        "font.family": "sans-serif", "font.sans-serif": ["Helvetica", "Arial", "Liberation Sans", "DejaVu Sans"],
        "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
        "axes.prop_cycle": matplotlib.cycler(color=list(OKABE_ITO)), "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "path",
        "svg.hashsalt": "mlx-circuits", "figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight",
    }
    with matplotlib.rc_context(rc):
        yield


def new_figure(width: float = 5.0, height: float = 3.6, **subplots):
    """(Figure, axes) with constrained layout; ``subplots`` go to ``Figure.subplots``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(**subplots)


def save_figure(fig, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` atomically; format from the suffix (svg, png, pdf). Returns the path."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in _FORMATS:
        raise VizError(f"cannot save a figure as {path.name!r}: use a suffix in {_FORMATS}")
    meta = {"svg": {"Date": None}, "pdf": {"CreationDate": None}, "png": {}}[fmt]
    buf = io.BytesIO()
    with plot_context():
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
    return atomic_write_bytes(path, buf.getvalue())


def _finish(fig, path):
    if path is not None:
        save_figure(fig, path)
    return fig


def _need(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise SchemaError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SchemaError(f"{what} lacks columns {missing}; has {list(df.columns)}")


def area_scores(pct: Sequence[float], faithfulness: Sequence[float]) -> tuple[float, float]:
    """(CPR, CMD) of one curve: trapezoids on a linear axis of the edge fraction (pct/100);
    CPR = ∫ f, CMD = ∫ |1 − f|."""
    x = np.asarray(pct, dtype=np.float64) / 100.0
    f = np.asarray(faithfulness, dtype=np.float64)
    order = np.argsort(x)
    x, f = x[order], f[order]
    return float(np.trapezoid(f, x)), float(np.trapezoid(np.abs(1.0 - f), x))


def faithfulness_curves(curves: pd.DataFrame, scores: Mapping[str, Mapping[str, float]] | None = None,
                        title: str = "Faithfulness vs. edges kept", path=None,
                        xlabel: str = "edges kept (%)"):
    """Faithfulness against % edges kept (log x) for several methods.

    ``curves`` columns: ``method``, ``pct`` (edges kept, %), ``faithfulness``. ``scores``
    maps method -> {"cpr": .., "cmd": ..} for the legend; methods missing there get both
    from their own curve (``area_scores``; MIB computes CPR and CMD from the signed and
    the absolute ranking, so pass them when you have both curves)."""
    _need(curves, ("method", "pct", "faithfulness"), "curves")
    with plot_context():
        fig, ax = new_figure()
        for method, df in curves.groupby("method", sort=True):
            df = df.sort_values("pct")
            s = (scores or {}).get(method) or dict(zip(("cpr", "cmd"), area_scores(df["pct"], df["faithfulness"])))
            ax.plot(df["pct"], df["faithfulness"], marker="o", ms=3.5, lw=1.6,
                    label=f"{method} (CPR {s['cpr']:.2f}, CMD {s['cmd']:.2f})")
        ax.axhline(1.0, color=NEUTRAL, lw=0.8, ls="--", label="full model")
        ax.axhline(0.0, color=NEUTRAL, lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xticks(list(EDGE_PCTS), [f"{p:g}" for p in EDGE_PCTS])
        ax.set_xlim(0.08, 125)
        ax.set(xlabel=xlabel, ylabel="faithfulness", title=title)
        ax.legend(loc="lower right", frameon=False)
    return _finish(fig, path)


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(Pearson r, slope, intercept) of y on x by least squares; NaNs when undefined."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        return float("nan"), float("nan"), float("nan")
    slope, icpt = np.polyfit(x, y, 1)
    r = float(np.corrcoef(x, y)[0, 1]) if np.ptp(y) > 0 else float("nan")
    return r, float(slope), float(icpt)


def predicted_vs_measured(predicted, measured, labels: Sequence[str] | None = None, title: str = "",
                          xlabel: str = "predicted effect (attribution)", ylabel: str = "measured effect (patching)",
                          path=None):
    """Scatter of predicted against measured effects with the y = x line; the title gives
    Pearson r and the least-squares slope of measured on predicted. ``labels`` (optional)
    annotate up to 15 points with the largest |measured|."""
    p, m = np.asarray(predicted, np.float64).ravel(), np.asarray(measured, np.float64).ravel()
    if p.shape != m.shape or not (np.isfinite(p).all() and np.isfinite(m).all()):
        raise VizError(f"predicted and measured must be finite and the same length, got {p.shape} and {m.shape}")
    r, slope, icpt = fit_line(p, m)
    with plot_context():
        fig, ax = new_figure(4.2, 4.0)
        lo, hi = (float(min(p.min(), m.min())), float(max(p.max(), m.max()))) if p.size else (0.0, 1.0)
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color=NEUTRAL, lw=0.9, ls="--", label="y = x")
        ax.scatter(p, m, s=14, color=POSITIVE, alpha=0.75, edgecolors="none", label=f"n = {p.size}")
        if np.isfinite(slope):
            xs = np.array([lo - pad, hi + pad])
            ax.plot(xs, slope * xs + icpt, color=NEGATIVE, lw=1.2, label="least-squares fit")
        if labels is not None:
            for i in np.argsort(-np.abs(m), kind="stable")[:15]:
                ax.annotate(str(labels[i]), (p[i], m[i]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_aspect("equal", adjustable="datalim")
        head = f"{title} — " if title else ""
        ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{head}Pearson r = {r:.3f}, slope = {slope:.3f}")
        ax.legend(loc="upper left", frameon=False)
    return _finish(fig, path)


def pareto_mask(l0: Sequence[float], fvu: Sequence[float]) -> np.ndarray:
    """[n] bool: points no other point beats on both L0 and FVU (lower is better)."""
    a, b = np.asarray(l0, np.float64), np.asarray(fvu, np.float64)
    better_eq = (a[None, :] <= a[:, None]) & (b[None, :] <= b[:, None])
    strictly = (a[None, :] < a[:, None]) | (b[None, :] < b[:, None])
    return ~(better_eq & strictly).any(axis=1)


def l0_fvu_pareto(table: pd.DataFrame, title: str = "Sparsity vs. reconstruction", log_x: bool = True,
                  path=None):
    """L0 (x) against FVU (y) of several dictionaries, one colour per ``arch``, the Pareto
    frontier drawn as a step line and its points outlined. ``table`` columns: ``name``,
    ``arch``, ``l0``, ``fvu``."""
    _need(table, ("name", "arch", "l0", "fvu"), "table")
    t = table.reset_index(drop=True)
    front = pareto_mask(t["l0"], t["fvu"])
    with plot_context():
        fig, ax = new_figure(5.0, 3.8)
        for arch, df in t.groupby("arch", sort=True):
            ax.scatter(df["l0"], df["fvu"], s=28, label=str(arch), zorder=3)
        f = t[front].sort_values("l0")
        ax.step(f["l0"], f["fvu"], where="post", color="black", lw=1.2, zorder=2, label="Pareto frontier")
        ax.scatter(f["l0"], f["fvu"], s=70, facecolors="none", edgecolors="black", lw=1.2, zorder=4)
        for _, row in t.iterrows():
            ax.annotate(str(row["name"]), (row["l0"], row["fvu"]), fontsize=6, xytext=(4, 2),
                        textcoords="offset points", color=NEUTRAL)
        if log_x and (t["l0"] > 0).all():
            from matplotlib.ticker import FuncFormatter

            ax.set_xscale("log")  # plain numbers, not 2×10^1
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(int(v))[0] in "25" else ""))
        ax.set(xlabel="L0 (active latents per token)", ylabel="FVU (lower is better)", title=title)
        ax.legend(frameon=False)
    return _finish(fig, path)


__all__ = [
    "EDGE_PCTS", "area_scores", "faithfulness_curves", "fit_line", "l0_fvu_pareto", "new_figure",
    "pareto_mask", "plot_context", "predicted_vs_measured", "save_figure",
]
