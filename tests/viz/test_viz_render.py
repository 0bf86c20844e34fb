"""Rendering with Graphviz: SVG/PDF/PNG files, every node present in the SVG, no two
node boxes overlapping and columns/rows in order on a ~30-node circuit (positions from
``-Tjson``), a demo-size circuit (~56 nodes, ~250 edges) that fits a landscape page with
edges inside the grid, the engine choice, a clear error when ``dot`` is missing, atomic
writes."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import xml.etree.ElementTree as ET

import pytest
from viz_synthetic import make_circuit

from viz import CircuitStyle, GraphvizNotFoundError, RenderError, render, run_dot, to_dot

pytestmark = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")
SVG = "{http://www.w3.org/2000/svg}"
render_mod = importlib.import_module("viz.render")  # viz.render the attribute is the function


def test_svg_has_every_node_and_edge(circuit, tmp_path):
    path = render(circuit, tmp_path / "c.svg")
    root = ET.parse(path).getroot()
    titles = {g.get("class"): [] for g in root.iter(f"{SVG}g")}
    for g in root.iter(f"{SVG}g"):
        t = g.find(f"{SVG}title")
        if t is not None and g.get("class") in ("node", "edge"):
            titles[g.get("class")].append(t.text)
    assert set(circuit.nodes["key"]) <= set(titles["node"])
    real = {f"{s}->{t}" for s, t in zip(circuit.edges()["source"], circuit.edges()["target"])}
    assert real <= set(titles["edge"])
    assert "viewBox" in root.attrib  # vector output
    assert [p.name for p in tmp_path.iterdir()] == ["c.svg"]  # no temporary file left


def test_pdf_and_png(circuit, tmp_path):
    pdf = render(to_dot(circuit), tmp_path / "c.pdf")
    png = render(circuit, tmp_path / "c.png", dpi=72)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _boxes(dot_text: str, doc: dict | None = None) -> list[dict]:
    """Visible nodes with their box in points, from ``-Tjson``."""
    doc = doc or json.loads(run_dot(dot_text, "json"))
    out = []
    for o in doc["objects"]:
        if "pos" not in o or o.get("style") == "invis" or "nodes" in o:
            continue
        x, y = map(float, o["pos"].split(","))
        w, h = float(o["width"]) * 72, float(o["height"]) * 72
        out.append({"name": o["name"], "x0": x - w / 2, "x1": x + w / 2, "y0": y - h / 2, "y1": y + h / 2,
                    "x": x, "y": y})
    return out


def _assert_no_overlap(boxes: list[dict]) -> None:
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap_x = min(a["x1"], b["x1"]) - max(a["x0"], b["x0"])
            overlap_y = min(a["y1"], b["y1"]) - max(a["y0"], b["y0"])
            assert overlap_x <= 0.5 or overlap_y <= 0.5, f"{a['name']} overlaps {b['name']}"


@pytest.mark.parametrize("groups", [False, True])
def test_no_overlaps_and_grid_order(circuit, groups):
    feats = [str(k) for k in circuit.nodes_of("feature")]
    style = CircuitStyle(supernodes={"group": feats[3:6]} if groups else {})
    boxes = _boxes(to_dot(circuit, style))
    drawn = {b["name"] for b in boxes}
    assert {k for k in circuit.nodes["key"] if not (groups and k in feats[3:6])} <= drawn
    _assert_no_overlap(boxes)
    t = circuit.nodes.set_index("key")
    real = [b for b in boxes if b["name"] in t.index]
    across, pairs = 0, 0
    for a in real:  # rows: higher layer is drawn higher (embeddings at the bottom); columns keep position order
        for b in real:
            la, lb = t.at[a["name"], "layer"], t.at[b["name"], "layer"]
            pa, pb = t.at[a["name"], "pos"], t.at[b["name"], "pos"]
            if la < lb:
                assert a["y"] < b["y"]
            if la == lb and pa < pb:
                assert a["x"] < b["x"]  # strict within a row
            if la != lb and pa < pb:  # across rows: columns are (almost always) disjoint
                pairs += 1
                across += a["x"] >= b["x"]
    assert across <= 0.01 * pairs, f"{across} of {pairs} cross-row pairs out of column order"


def test_demo_size_circuit_fits_a_page():
    """~56 nodes, ~250 edges, features crowded into the last positions (like the demo)."""
    g = make_circuit(n_layers=4, n_pos=15, per_layer=9, n_errors=3, seed=7, fan_in=6, focus=4)
    assert g.n_edges > 200 and len(g.nodes) > 50
    dot = to_dot(g)
    doc = json.loads(run_dot(dot, "json"))
    x0, y0, x1, y1 = map(float, doc["bb"].split(","))
    assert (x1 - x0) / (y1 - y0) <= 3.0 and (x1 - x0) / 72 <= 24  # landscape, ~0.4x or larger on a page
    boxes = _boxes(dot, doc)
    assert set(g.nodes["key"]) <= {b["name"] for b in boxes}
    _assert_no_overlap(boxes)
    # edges stay near the grid: no control point beyond the node extent + 1 inch (the old
    # layout looped edges tens of inches out)
    gx0, gx1 = min(b["x0"] for b in boxes) - 72, max(b["x1"] for b in boxes) + 72
    gy0, gy1 = min(b["y0"] for b in boxes) - 72, max(b["y1"] for b in boxes) + 72
    n_edges = 0
    for e in doc.get("edges", []):
        if e.get("style") == "invis":
            continue
        n_edges += 1
        for op in e.get("_draw_", []):
            for px, py in op.get("points", []):
                assert gx0 <= px <= gx1 and gy0 <= py <= gy1, f"edge {e['tail']}->{e['head']} leaves the grid"
    assert n_edges == g.n_edges
    few = to_dot(g, CircuitStyle(max_edges=120))
    assert len(re.findall(r'^  "[^"]+" -> ', few, re.MULTILINE)) == 120
    assert f"showing the 120 strongest of {g.n_edges} edges" in few


def test_engine_choice(monkeypatch):
    seen = []

    def fake_run(cmd, **kw):
        seen.append(cmd)
        return render_mod.subprocess.CompletedProcess(cmd, 0, b"ok", b"")

    monkeypatch.setattr(render_mod.subprocess, "run", fake_run)
    run_dot('digraph { graph [layout="neato"]; a [pos="0,0!"] }', "svg")
    run_dot("digraph { a -> b }", "svg")
    assert seen[0][1:3] == ["-Kneato", "-n2"] and "-Kneato" not in seen[1]


def test_missing_dot_is_a_clear_error(circuit, tmp_path, monkeypatch):
    monkeypatch.setattr(render_mod.shutil, "which", lambda name: None)
    with pytest.raises(GraphvizNotFoundError, match="apt-get install -y graphviz") as exc:
        render(circuit, tmp_path / "c.svg")
    assert "brew install graphviz" in str(exc.value)
    assert not list(tmp_path.iterdir())


def test_bad_input_errors(circuit, tmp_path):
    with pytest.raises(RenderError, match="suffix"):
        render(circuit, tmp_path / "c.gif")
    with pytest.raises(RenderError, match="failed"):
        run_dot("digraph { a -> ", "svg")
    assert not list(tmp_path.iterdir())


def test_tiny_and_degenerate_graphs_render():
    """No edges, one-member supernode, hostile token text, legend and row labels off."""
    import scipy.sparse as sp

    from attribution.graph import FeatureNode, Graph, LogitNode, TokenNode
    from viz import render_svg

    bare = Graph.from_keys([TokenNode(0, 1), LogitNode(0, 2)], sp.csr_matrix((2, 2)), [1.0, 2.0], [0.5],
                           {"n_layers": 2})
    assert ET.fromstring(render_svg(bare).encode()).tag.endswith("svg")
    adj = sp.csr_matrix(([1.0, -2.0], ([1, 2], [0, 1])), shape=(3, 3))
    g = Graph.from_keys([TokenNode(0, 1), FeatureNode(1, 0, 3), LogitNode(0, 2)], adj, [1.0, 2.0, 3.0], [0.5],
                        {"n_layers": 2, "tokens": ['a"b<c']}, token=['a"b<c', "", "x"])
    for style in (CircuitStyle(supernodes={"s": ["feat:1:0:3", "feat:1:0:99"]}),
                  CircuitStyle(show_legend=False, show_layer_labels=False)):
        svg = render_svg(g, style)
        assert ET.fromstring(svg.encode()).tag.endswith("svg") and "a&quot;b&lt;c" in svg
