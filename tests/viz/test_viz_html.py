"""Dashboards and report: schema checks, every feature in the index, hostile strings
escaped, histogram SVG well-formed, report self-contained (no external URLs)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from viz import (
    Links,
    SchemaError,
    Section,
    Svg,
    VizError,
    check_record,
    feature_page,
    index_page,
    token_heatmap_html,
    write_dashboards,
    write_report,
)
from viz.html import histogram_svg
from viz.report import standard_sections

EVIL = '<script>alert("x")</script>&"\'<img src=x onerror=alert(1)>'


def record(i: int, label: str = "") -> dict:
    return {
        "feature": i, "site": "L1.mlp_in", "density": 0.01 * (i + 1), "mean_activation": 1.5 + i,
        "max_activation": 4.0 + i, "label": label or f"feature {i}",
        "histogram": {"counts": [5, 9, 3, 1], "edges": [0, 1, 2, 3, 4]},
        "top_examples": [{"tokens": ["The", " cat", EVIL], "activations": [0.0, 3.5, -1.0]}],
        "quantile_examples": [{"name": "q50-75", "examples": [{"tokens": ["a", "b"], "activations": [1.0, 0.2]}]}],
        "logit_effects": {"promoted": [[" cat", 0.8], [EVIL, 0.5]], "suppressed": [[" dog", -0.4]]},
        "neighbours": [{"feature": (i + 1) % 3, "cosine": 0.71}, {"feature": 999, "cosine": 0.5}],
    }


def test_dashboards_index_and_escaping(tmp_path):
    recs = [record(0, EVIL), record(1), record(2)]
    paths = write_dashboards(recs, tmp_path)
    assert [p.name for p in paths][-1] == "index.html" and len(paths) == 4
    index = (tmp_path / "index.html").read_text()
    for r, p in zip(recs, paths):
        assert f'href="{p.name}"' in index
    for p in paths:
        text = p.read_text()
        assert "<script>alert" not in text and "<img src=x" not in text
        assert not re.search(r'(src|href)="(https?:)?//', text) and "<link" not in text  # offline
    page0 = paths[0].read_text()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page0
    assert 'href="feature_L1.mlp_in_1.html"' in page0  # neighbour with a page is linked
    assert ">999<" in page0  # neighbour without a page is plain text
    assert page0.count('class="tok"') == 5  # 3 + 2 highlighted tokens
    assert "rgba(0,114,178,0.744)" in page0  # 3.5 / 4.0 * 0.85 in Okabe-Ito blue


def test_record_schema_errors():
    with pytest.raises(SchemaError, match="lacks keys"):
        check_record({"feature": 1})
    bad = record(0)
    bad["top_examples"] = [{"tokens": ["a"], "activations": [1.0, 2.0]}]
    with pytest.raises(SchemaError, match="1 tokens and 2"):
        check_record(bad)
    bad = record(0) | {"density": 2.0}
    with pytest.raises(SchemaError, match="density"):
        feature_page(bad)
    with pytest.raises(SchemaError):
        write_dashboards([record(0), record(0)], "/nonexistent-never-written")


def test_histogram_svg_and_token_heatmap():
    svg = histogram_svg([1, 4, 2], [0.0, 0.5, 1.0, 1.5])
    root = ET.fromstring(svg)
    assert len(root.findall("{http://www.w3.org/2000/svg}rect")) == 3
    frag = token_heatmap_html(["x", EVIL], np.array([[1.0, -2.0], [0.5, 0.0]]), ["f1", "f<2>"])
    assert frag.count("<tr>") == 3 and "f&lt;2&gt;" in frag and "<script>alert" not in frag
    with pytest.raises(SchemaError):
        token_heatmap_html(["x"], np.zeros((2, 2)), ["a", "b"])
    assert "features" in index_page([record(0)])


def test_report_is_self_contained(circuit, tmp_path):
    from viz import faithfulness_curves, save_figure

    fig = faithfulness_curves(pd.DataFrame({"method": ["m"] * 3, "pct": [1, 10, 100], "faithfulness": [.2, .7, 1]}))
    png = save_figure(fig, tmp_path / "f.png")
    tables = {"Dictionary quality": pd.DataFrame({"name": [EVIL], "l0": [32], "fvu": [0.123456]})}
    sections = standard_sections(circuit=circuit, tables=tables, faithfulness=fig, scatter=png,
                                 coactivation=Svg('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg">'
                                                  '<script>alert(1)</script><rect width="1" height="1"/></svg>'),
                                 dashboards={"feature 0": "dash/feature_L1.mlp_in_0.html"}, ablation="mean")
    sections.append(Section(EVIL, [EVIL]))
    out = write_report(tmp_path / "report.html", sections, title=EVIL)
    text = out.read_text()
    assert "<script>alert" not in text and "<img src=x" not in text
    assert text.count("<svg") >= 3  # circuit (dot), faithfulness figure, co-activation
    assert "data:image/png;base64," in text and "0.1235" in text and "ablation: mean" in text
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<link" not in text
    with pytest.raises(VizError, match="refusing link"):
        write_report(tmp_path / "bad.html", [Section("x", [Links({"x": "javascript:alert(1)"})])])
    with pytest.raises(VizError):
        write_report(tmp_path / "bad.html", [Section("x", [object()])])
    assert not (tmp_path / "bad.html").exists()
