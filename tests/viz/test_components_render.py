"""``viz.components``: component-circuit records drawn as DOT/SVG.

Checked by parsing the DOT text: every node appears once with its kind's shape, names
are normalised (``L0H1`` -> ``L0.H1``), rows go embed < layer-0 heads < layer-0 MLP <
layer-1 heads < ... < logits, edge colour follows the score's sign and pen width grows
with |score| (hand-worked ordering), q/k/v edges of one pair are summed, and the legend
names the task metric. Bad records and paths raise one-line ``SchemaError``s.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

import attribution  # noqa: F401  (BLAS before mlx)
from viz.components import (
    component_circuit_dot,
    load_component_circuit,
    normalise_name,
    render_component_circuit,
    render_component_file,
)
from viz.errors import SchemaError
from viz.style import NEGATIVE, POSITIVE

NODE_RE = re.compile(r'^    "([^"]+)" \[shape="(\w+)"', re.MULTILINE)
ROW_RE = re.compile(r"subgraph row_(\d+) \{\n(.*?)\n  \}", re.DOTALL)
EDGE_RE = re.compile(
    r'^  "([^"]+)" -> "([^"]+)" \[color="(#[0-9A-Fa-f]{6})[0-9A-Fa-f]{2}", penwidth=([\d.]+)', re.MULTILINE)

RECORD = {
    "schema": "mlx-circuits/component-circuit", "version": 1, "model": "m", "task": "ioi",
    "metric": "logit_diff", "method": "eap-ig", "ablation": "counterfactual", "level": "edge",
    "faithfulness": 0.8123,
    "nodes": [{"name": "embed", "score": None}, {"name": "L0H1", "score": None},
              {"name": "L0.mlp", "score": None}, {"name": "L1.H3", "score": None},
              {"name": "logits", "score": None}],
    "edges": [{"source": "embed", "target": "L0H1", "port": None, "score": 0.5},
              {"source": "L0H1", "target": "L1.H3", "port": "q", "score": 1.0},
              {"source": "L0H1", "target": "L1.H3", "port": "k", "score": 1.0},
              {"source": "L0.mlp", "target": "logits", "port": None, "score": -1.5},
              {"source": "L1.H3", "target": "logits", "port": None, "score": 4.0}],
}


def parse(dot: str):
    nodes = {n: shape for n, shape in NODE_RE.findall(dot) if not n.startswith("_")}  # _row_*: labels
    edges = {(s, t): (c, float(w)) for s, t, c, w in EDGE_RE.findall(dot)}
    rows = {n: int(r) for r, body in ROW_RE.findall(dot) for n, _ in NODE_RE.findall(body)
            if not n.startswith("_")}
    return nodes, edges, rows


def test_dot_nodes_rows_colours_widths_legend():
    dot = component_circuit_dot(RECORD)
    nodes, edges, rows = parse(dot)
    assert nodes == {"embed": "house", "L0.H1": "ellipse", "L0.MLP": "box", "L1.H3": "ellipse",
                     "logits": "octagon"}
    order = ["embed", "L0.H1", "L0.MLP", "L1.H3", "logits"]
    assert [rows[n] for n in order] == sorted(rows[n] for n in order) and len({rows[n] for n in order}) == 5
    assert set(edges) == {("embed", "L0.H1"), ("L0.H1", "L1.H3"), ("L0.MLP", "logits"), ("L1.H3", "logits")}
    assert edges[("L0.MLP", "logits")][0] == NEGATIVE and edges[("L1.H3", "logits")][0] == POSITIVE
    # |score| 0.5 < 1.5 < 2.0 (q + k summed) < 4.0: widths in the same order
    w = [edges[k][1] for k in (("embed", "L0.H1"), ("L0.MLP", "logits"), ("L0.H1", "L1.H3"), ("L1.H3", "logits"))]
    assert w == sorted(w) and w[0] < w[-1]
    for text in ("task: ioi", "metric: logit_diff", "method: eap-ig", "faithfulness 0.812",
                 "edge width = |score| (logit_diff units)"):
        assert text in dot
    assert dot == component_circuit_dot(json.loads(json.dumps(RECORD)))  # deterministic


def test_unscored_node_circuit_and_unlisted_endpoints():
    rec = {"task": "induction", "metric": "logit_diff", "level": "node",
           "nodes": [{"name": "EMB", "score": 3.0}, {"name": "L1.H0", "score": 2.0}],
           "edges": [{"source": "EMB", "target": "L1.H0"}, {"source": "L1.H0", "target": "logits"}]}
    dot = component_circuit_dot(rec)
    nodes, edges, _ = parse(dot)
    assert set(nodes) == {"embed", "L1.H0", "logits"}  # logits added from the edges
    assert len({w for _, w in edges.values()}) == 1  # unscored: one width
    assert "edges unscored" in dot and "score 3" in dot


def test_render_files_and_directory(tmp_path):
    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` is not installed")
    run = tmp_path / "run"
    run.mkdir()
    (run / "component_circuit.json").write_text(json.dumps(RECORD))
    svg = render_component_file(run, tmp_path / "c.svg")
    text = svg.read_text()
    assert text.lstrip().startswith(("<?xml", "<svg")) and "L1.H3" in text and "metric: logit_diff" in text
    assert render_component_file(run / "component_circuit.json", tmp_path / "c.dot").read_text() == \
        component_circuit_dot(RECORD)
    assert render_component_circuit(RECORD, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic writes left nothing


@pytest.mark.parametrize("rec,match", [
    ({"edges": []}, "lacks a 'nodes' list"),
    ({"nodes": [{"name": "L0.X"}], "edges": []}, "'L0.X' is not"),
    ({"nodes": [{"name": "L0.H1", "score": float("nan")}], "edges": []}, "finite number"),
    ({"nodes": [], "edges": [{"source": "embed"}]}, "'source' and 'target'"),
    ({"nodes": [{"score": 1}], "edges": []}, "with a 'name'"),
    ([1, 2], "is a dict"),
])
def test_bad_records(rec, match):
    with pytest.raises(SchemaError, match=match) as e:
        component_circuit_dot(rec)
    assert "\n" not in str(e.value)


def test_bad_paths(tmp_path):
    with pytest.raises(SchemaError, match="holds no component_circuit.json"):
        load_component_circuit(tmp_path)
    with pytest.raises(SchemaError, match="does not exist"):
        load_component_circuit(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{ nope")
    with pytest.raises(SchemaError, match="not valid JSON"):
        load_component_circuit(tmp_path / "bad.json")
    with pytest.raises(SchemaError, match="use .svg, .pdf, .png or .dot"):
        render_component_circuit(RECORD, tmp_path / "c.txt")
    assert normalise_name("l2h10") == "L2.H10" and normalise_name("Embedding") == "embed"


def test_viz_components_imports_no_circuits():
    code = ("import viz.components, sys; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('circuits', 'sae')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
