"""Plots: valid SVG/PNG files, deterministic SVG, and the numbers they show (CPR/CMD,
Pearson r and slope, Pareto frontier) against independent computations."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from viz import (
    EDGE_PCTS,
    SchemaError,
    area_scores,
    coactivation_heatmap,
    faithfulness_curves,
    l0_fvu_pareto,
    log_density_histogram,
    pareto_mask,
    predicted_vs_measured,
    save_figure,
    token_heatmap_figure,
    training_curves,
)
from viz.plots import fit_line

PNG = b"\x89PNG\r\n\x1a\n"


def _curves() -> pd.DataFrame:
    rows = [(m, p, 1 - np.exp(-k * p / 5)) for m, k in (("EAP", 1.0), ("EAP-IG", 2.0)) for p in EDGE_PCTS]
    return pd.DataFrame(rows, columns=["method", "pct", "faithfulness"])


def _text(fig) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in [ax.title, *ax.get_legend().get_texts()]
                    if ax.get_legend() is not None)


def test_all_plots_write_valid_files(tmp_path):
    rng = np.random.default_rng(0)
    figs = {
        "faith": faithfulness_curves(_curves()),
        "scatter": predicted_vs_measured(rng.normal(size=30), rng.normal(size=30)),
        "pareto": l0_fvu_pareto(pd.DataFrame({"name": list("abcd"), "arch": ["topk", "topk", "relu", "relu"],
                                              "l0": [8, 32, 16, 64], "fvu": [0.3, 0.1, 0.35, 0.2]})),
        "density": log_density_histogram({"a": np.r_[10 ** rng.uniform(-5, 0, 200), np.zeros(3)]}),
        "train": training_curves(pd.DataFrame({"step": range(20), "loss": np.linspace(2, 1, 20),
                                               "l0": np.full(20, 32.0)}), log_y=["loss"]),
        "coact": coactivation_heatmap(rng.uniform(size=(5, 5)), [f"f{i}" for i in range(5)]),
        "tokens": token_heatmap_figure(["a", " b", "c"], rng.normal(size=(2, 3)), ["f1", "f2"]),
    }
    for name, fig in figs.items():
        svg = save_figure(fig, tmp_path / f"{name}.svg")
        assert ET.parse(svg).getroot().tag.endswith("svg")
        assert save_figure(fig, tmp_path / f"{name}.png").read_bytes()[:8] == PNG
    a = save_figure(figs["faith"], tmp_path / "x.svg").read_bytes()
    assert a == save_figure(figs["faith"], tmp_path / "y.svg").read_bytes()  # no timestamps, stable ids
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{n}.{e}" for n in figs for e in ("svg", "png")] + ["x.svg", "y.svg"])
    faithfulness_curves(_curves(), path=tmp_path / "direct.pdf")
    assert (tmp_path / "direct.pdf").read_bytes()[:5] == b"%PDF-"


def test_faithfulness_legend_has_cpr_cmd():
    df = _curves()
    sub = df[df.method == "EAP"]
    x, f = sub["pct"].to_numpy() / 100, sub["faithfulness"].to_numpy()
    cpr = sum((x[i + 1] - x[i]) * (f[i + 1] + f[i]) / 2 for i in range(len(x) - 1))
    cmd = sum((x[i + 1] - x[i]) * ((1 - f[i + 1]) + (1 - f[i])) / 2 for i in range(len(x) - 1))
    assert area_scores(sub["pct"], sub["faithfulness"]) == pytest.approx((cpr, cmd))
    fig = faithfulness_curves(df, scores={"EAP-IG": {"cpr": 0.5, "cmd": 0.25}})
    text = _text(fig)
    assert f"EAP (CPR {cpr:.2f}, CMD {cmd:.2f})" in text and "EAP-IG (CPR 0.50, CMD 0.25)" in text
    assert fig.axes[0].get_xscale() == "log"
    with pytest.raises(SchemaError):
        faithfulness_curves(df.drop(columns="pct"))


def test_scatter_title_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=50)
    y = 0.7 * x + 0.3 * rng.normal(size=50)
    ref = stats.linregress(x, y)
    r, slope, _ = fit_line(x, y)
    assert (r, slope) == pytest.approx((ref.rvalue, ref.slope))
    fig = predicted_vs_measured(x, y)
    assert f"Pearson r = {ref.rvalue:.3f}, slope = {ref.slope:.3f}" in fig.axes[0].get_title()


def test_pareto_mask_brute_force():
    rng = np.random.default_rng(2)
    l0, fvu = rng.uniform(1, 100, 40), rng.uniform(0, 1, 40)
    brute = [not any((l0[j] <= l0[i] and fvu[j] <= fvu[i]) and (l0[j] < l0[i] or fvu[j] < fvu[i])
                     for j in range(40)) for i in range(40)]
    assert pareto_mask(l0, fvu).tolist() == brute
