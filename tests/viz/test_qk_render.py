"""QK attribution figures render (SVG/PNG, HTML) and show the numbers of the result.

No pixels are compared: the bar values and labels are read back from the figure."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

import attribution  # noqa: F401  (BLAS preload before mlx)
from attribution import load_model
from attribution.attribute.qk import qk_attribution
from attribution.replacement import ReplacementModel
from attribution.testing_dicts import random_transcoders
from attribution.tiny import make_tiny_model
from viz.errors import SchemaError
from viz.qk import qk_figure, qk_table_html, side_rows

TOKENS = [2, 5, 9, 14, 7, 22, 31, 11]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    model = load_model(make_tiny_model("gemma2", tmp_path_factory.mktemp("qk") / "m", seed=4))
    rm = ReplacementModel(model, random_transcoders(model, 64, seed=1))
    return qk_attribution(rm, TOKENS, 1, 3, 6, 2), model.to_str_tokens(TOKENS)


def test_rows_sum_to_score(result):
    res, _ = result
    for side in ("query", "key"):
        rows = side_rows(res, side, top=3)
        assert len(rows) == 4 and rows[-1][0].startswith("other ")
        assert sum(v for _, v in rows) == pytest.approx(res.score, abs=1e-9)


def test_figure_svg_png(result, tmp_path):
    res, toks = result
    fig = qk_figure(res, top=5, tokens=toks, path=tmp_path / "qk.svg")
    ET.parse(tmp_path / "qk.svg")  # well-formed SVG
    bars = [p.get_width() for p in fig.axes[0].patches]
    expected = [v for _, v in side_rows(res, "query", 5)][::-1]
    np.testing.assert_allclose(bars, expected)
    assert "capped" in fig._suptitle.get_text()  # gemma-2 softcap shown
    qk_figure(res, top=2, path=tmp_path / "qk.png")
    assert (tmp_path / "qk.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_and_errors(result, tmp_path):
    res, toks = result
    feat = next(n for n, _ in res.top_query(len(res.query_nodes)) if n.kind == "feature")
    page = qk_table_html(res, top=len(res.query_nodes), tokens=toks,
                         descriptions={str(feat): "<x>"}, path=tmp_path / "qk.html")
    assert (tmp_path / "qk.html").read_text() == page
    assert page.count("<tr>") == 2 + len(res.query_nodes) + len(res.key_nodes)
    assert "&lt;x&gt;" in page and "<x>" not in page
    with pytest.raises(SchemaError, match="QKAttribution"):
        qk_figure({"score": 1.0})
    with pytest.raises(SchemaError, match="top"):
        side_rows(res, "query", top=0)
