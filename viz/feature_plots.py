"""Feature- and training-level matplotlib plots (same style and rules as ``viz.plots``).

1. ``log_density_histogram``: histogram of log10 firing density per dictionary; dead
   latents (density 0) cannot be placed on a log axis, so they are counted in the legend.
2. ``training_curves``: one panel per metric column against ``step``.
3. ``coactivation_heatmap``: a square matrix over circuit features (cividis, a
   colour-blind-safe sequential map; a blue–white–vermillion map when values go negative).
4. ``token_heatmap_figure``: per-token activations of several features over one text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from viz.errors import SchemaError, VizError
from viz.plots import _finish, _need, new_figure, plot_context
from viz.style import NEGATIVE, POSITIVE


def diverging_cmap():
    """Vermillion (negative) – white – blue (positive) colormap."""
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("viz_sign", [NEGATIVE, "#FFFFFF", POSITIVE])


def log_density_histogram(densities: Mapping[str, Sequence[float]] | Sequence[float], bins: int = 50,
                          title: str = "Feature firing density", path=None):
    """Histogram of log10(density) for one array or a mapping name -> array of per-latent
    firing densities in [0, 1]; dead latents (0) are reported in the legend."""
    series = dict(densities) if isinstance(densities, Mapping) else {"dictionary": densities}
    arrays = {k: np.asarray(v, np.float64).ravel() for k, v in series.items()}
    for k, v in arrays.items():
        if not np.isfinite(v).all() or (v < 0).any() or (v > 1).any():
            raise VizError(f"densities of {k!r} must be finite fractions in [0, 1]")
    live = np.concatenate([v[v > 0] for v in arrays.values()] + [np.zeros(0)])
    lo = np.log10(live.min()) if live.size else -6.0
    edges = np.linspace(min(lo, -1.0) - 0.1, 0.0, bins + 1)
    with plot_context():
        fig, ax = new_figure()
        for name, v in arrays.items():
            dead = int((v == 0).sum())
            ax.hist(np.log10(v[v > 0]), bins=edges, histtype="stepfilled", alpha=0.45, lw=1.2,
                    label=f"{name} (dead: {dead}/{v.size})")
        ax.axvline(-1.0, color="black", lw=0.8, ls="--", label="dense (> 10%)")
        ax.set(xlabel="log10 firing density", ylabel="latents", title=title)
        ax.legend(frameon=False)
    return _finish(fig, path)


def training_curves(metrics: pd.DataFrame, columns: Sequence[str] | None = None, step: str = "step",
                    log_y: Sequence[str] = (), title: str = "Training", path=None):
    """One panel per metric against ``step``. ``metrics`` has a ``step`` column and numeric
    metric columns (default: all other numeric columns); names in ``log_y`` get a log y axis."""
    _need(metrics, (step,), "metrics")
    cols = list(columns) if columns is not None else [
        c for c in metrics.columns if c != step and pd.api.types.is_numeric_dtype(metrics[c])]
    _need(metrics, cols, "metrics")
    if not cols:
        raise SchemaError("metrics has no numeric columns to plot besides the step")
    ncol = min(3, len(cols))
    nrow = -(-len(cols) // ncol)
    df = metrics.sort_values(step)
    with plot_context():
        fig, axes = new_figure(3.2 * ncol, 2.4 * nrow, nrows=nrow, ncols=ncol, squeeze=False)
        for ax, c in zip(axes.ravel(), cols):
            ok = df[c].notna()
            ax.plot(df.loc[ok, step], df.loc[ok, c], lw=1.3)
            if c in log_y:
                ax.set_yscale("log")
            ax.set(xlabel=step, title=c)
        for ax in axes.ravel()[len(cols):]:
            ax.set_visible(False)
        fig.suptitle(title)
    return _finish(fig, path)


def coactivation_heatmap(matrix, labels: Sequence[str], title: str = "Feature co-activation", path=None):
    """Heatmap of a square [n, n] matrix over features (e.g. Jaccard or cosine of firing),
    annotated with values when n <= 12."""
    m = np.asarray(matrix, np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(labels):
        raise VizError(f"matrix must be [n, n] with n = len(labels) = {len(labels)}, got {m.shape}")
    signed = bool((m < 0).any())
    vmax = float(np.abs(m).max()) or 1.0
    with plot_context():
        n = m.shape[0]
        fig, ax = new_figure(1.6 + 0.38 * n, 1.2 + 0.38 * n)
        im = ax.imshow(m, cmap=diverging_cmap() if signed else "cividis",
                       vmin=-vmax if signed else 0.0, vmax=vmax, interpolation="nearest")
        ax.set_xticks(range(n), [str(x) for x in labels], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n), [str(x) for x in labels], fontsize=7)
        ax.grid(False)
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    light = signed or m[i, j] < 0.6 * vmax
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if (light and not signed) else "black")
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(title)
    return _finish(fig, path)


def token_heatmap_figure(tokens: Sequence[str], activations, feature_names: Sequence[str],
                         title: str = "Per-token activations", path=None):
    """[n_features, n_tokens] activations as a heatmap; tokens on the x axis (spaces as ·)."""
    a = np.asarray(activations, np.float64)
    if a.ndim != 2 or a.shape != (len(feature_names), len(tokens)):
        raise VizError(f"activations must be [n_features={len(feature_names)}, n_tokens={len(tokens)}], "
                       f"got {a.shape}")
    vmax = float(np.abs(a).max()) or 1.0
    with plot_context():
        fig, ax = new_figure(1.8 + 0.42 * len(tokens), 1.0 + 0.35 * len(feature_names))
        im = ax.imshow(a, cmap=diverging_cmap(), vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(tokens)), [str(t).replace(" ", "·") for t in tokens], rotation=60,
                      ha="right", fontsize=7)
        ax.set_yticks(range(len(feature_names)), [str(f) for f in feature_names], fontsize=7)
        ax.grid(False)
        fig.colorbar(im, ax=ax, shrink=0.8, label="activation")
        ax.set_title(title)
    return _finish(fig, path)


__all__ = ["coactivation_heatmap", "diverging_cmap", "log_density_histogram", "token_heatmap_figure",
           "training_curves"]
