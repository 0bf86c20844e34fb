"""DOT text of circuits: node/edge counts, colours, widths, rows, determinism, golden file,
escaping, supernodes (hand and automatic) and component circuits.

The DOT is parsed back with regexes (it is our own deterministic format) and compared
with independent computations on the Graph (``graph.edges()``, pandas group-bys)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from viz_synthetic import make_circuit

from attribution.graph import FeatureNode, Graph
from viz import CircuitStyle, VizError, auto_supernodes, component_to_dot, to_dot
from viz.dot import edge_counts, target_label
from viz.errors import SchemaError
from viz.style import NEGATIVE, POSITIVE

GOLDEN = Path(__file__).parent / "golden"
NODE_RE = re.compile(r'^    "([^"]+)" \[shape="(\w+)"', re.MULTILINE)
POS_RE = re.compile(r'^    "([^"]+)" \[.*pos="([\d.-]+),([\d.-]+)!"', re.MULTILINE)
ROW_RE = re.compile(r"subgraph row_(\d+) \{\n(.*?)\n  \}", re.DOTALL)
EDGE_RE = re.compile(
    r'^  "([^"]+)" -> "([^"]+)" \[color="(#[0-9A-Fa-f]{6})[0-9A-Fa-f]{2}", penwidth=([\d.]+)', re.MULTILINE)


def parse(dot: str):
    nodes = {n: shape for n, shape in NODE_RE.findall(dot) if not n.startswith("_")}
    edges = {(s, t): (c, float(w)) for s, t, c, w in EDGE_RE.findall(dot)}
    return nodes, edges


def test_nodes_edges_colours_widths(circuit):
    dot = to_dot(circuit)
    nodes, edges = parse(dot)
    assert set(nodes) == set(circuit.nodes["key"])
    shapes = dict(zip(circuit.nodes["key"], circuit.nodes["type"]))
    want = {"feature": "box", "error": "diamond", "token": "house", "logit": "octagon"}
    assert all(nodes[k] == want[shapes[k]] for k in nodes)
    ref = circuit.edges()
    assert len(edges) == len(ref) == circuit.n_edges
    style = CircuitStyle()
    for s, t, w in ref.itertuples(index=False):
        colour, width = edges[(s, t)]
        assert colour == (POSITIVE if w > 0 else NEGATIVE)
        assert style.min_width <= width <= style.max_width
    # width is monotone in |weight| and the clip saturates at the 95% quantile
    absw = ref["weight"].abs().to_numpy()
    widths = np.array([edges[(s, t)][1] for s, t in zip(ref["source"], ref["target"])])
    order = np.argsort(absw)
    assert (np.diff(widths[order]) >= -0.011).all()
    assert widths.max() == pytest.approx(style.max_width)
    assert 'layout="neato"' in dot and 'outputorder="edgesfirst"' in dot
    assert "positive effect" in dot and "negative effect" in dot


def test_rows_are_layers_bottom_to_top(circuit):
    dot = to_dot(circuit)
    layer = dict(zip(circuit.nodes["key"], circuit.nodes["layer"]))
    seen = []
    for _, body in ROW_RE.findall(dot):
        layers = {layer[n] for n, _ in NODE_RE.findall(body) if not n.startswith("_")}
        assert len(layers) == 1
        seen.append(layers.pop())
    assert seen == sorted(seen) and seen[0] == -1 and seen[-1] == circuit.n_layers
    # pinned positions: every node pinned, rows strictly bottom-up, columns left to right
    pos = {n: (float(x), float(y)) for n, x, y in POS_RE.findall(dot)}
    assert set(circuit.nodes["key"]) <= set(pos)
    t = circuit.nodes.set_index("key")
    for a in t.index:
        for b in t.index:
            if t.at[a, "layer"] < t.at[b, "layer"]:
                assert pos[a][1] < pos[b][1]
            if t.at[a, "pos"] < t.at[b, "pos"]:
                assert pos[a][0] < pos[b][0]


def test_cell_order_by_feature_id():
    g = make_circuit(n_layers=2, n_pos=2, per_layer=6, n_errors=0, seed=1)
    pos = {n: (float(x), float(y)) for n, x, y in POS_RE.findall(to_dot(g, CircuitStyle(page_size=(40, 4))))}
    feats = g.nodes_of("feature")
    for a in feats:  # a wide page: cells stay one line, side by side by feature id
        for b in feats:
            if (a.layer, a.pos) == (b.layer, b.pos) and a.feature < b.feature:
                assert pos[str(a)][0] < pos[str(b)][0] and pos[str(a)][1] == pos[str(b)][1]


def test_max_edges_keeps_the_strongest(circuit):
    ref = circuit.edges()
    _, edges = parse(to_dot(circuit, CircuitStyle(max_edges=20)))
    strongest = ref.reindex(ref["weight"].abs().sort_values(ascending=False).index).head(20)
    assert set(edges) == set(zip(strongest["source"], strongest["target"]))
    assert f"showing the 20 strongest of {len(ref)} edges" in to_dot(circuit, CircuitStyle(max_edges=20))
    assert "showing" not in to_dot(circuit, CircuitStyle(max_edges=len(ref)))
    assert edge_counts(circuit, CircuitStyle(max_edges=20)) == (20, len(ref))
    assert edge_counts(circuit) == (len(ref), len(ref))


def test_edge_count_note_uses_thousands_separators():
    g = make_circuit(n_layers=6, n_pos=12, per_layer=15, seed=0, fan_in=12)
    assert g.n_edges > 1000
    dot = to_dot(g, CircuitStyle(max_edges=120))
    assert f"showing the 120 strongest of {g.n_edges:,} edges" in dot and "," in f"{g.n_edges:,}"
    assert len(parse(dot)[1]) == 120
    assert edge_counts(g, CircuitStyle(max_edges=120)) == (120, g.n_edges)


def _legend_target(dot: str) -> str | None:
    """The text of the legend's target row (HTML entities decoded), None when absent."""
    import html

    m = re.search(r"<TD[^>]*>target: <B>(.*?)</B></TD>", dot)
    return html.unescape(m.group(1)) if m else None


def _with_logits(logits, md_extra=None, method="exact"):
    """A small graph whose logit nodes are ``logits``: (key, token, prob, activation)."""
    from attribution.graph import TokenNode

    keys = [TokenNode(0, 5), FeatureNode(0, 0, 7)] + [k for k, _, _, _ in logits]
    n = len(keys)
    rows = [1] + [2 + i for i in range(len(logits))]
    cols = [0] + [1] * len(logits)
    adj = sp.csr_matrix((np.linspace(0.5, 1.5, len(rows)), (rows, cols)), shape=(n, n))
    md = {"n_layers": 1, "tokens": ["a"], "prompt": "a", "method": method, **(md_extra or {})}
    return Graph.from_keys(keys, adj, [1.0, 2.0] + [a for _, _, _, a in logits], [1.0 / len(logits)] * len(logits),
                           md, token=["a", ""] + [t for _, t, _, _ in logits],
                           logit_prob=[0.0, 0.0] + [p for _, _, p, _ in logits])


def test_target_label_from_metadata():
    from attribution.graph import LogitNode

    label = 'logit(" Kate") − logit(" Anna")'
    g = _with_logits([(LogitNode(0, -1, "logit_diff"), "logit_diff", 0.0, 2.3125)],
                     {"target": {"kind": "logit_diff", "answer": " Kate", "wrong": " Anna", "label": label}})
    assert target_label(g) == label + " = 2.31"  # one direction: its clean value is shown
    assert _legend_target(to_dot(g)) == label + " = 2.31"
    top = _with_logits([(LogitNode(0, 11), " Kate", 0.41, 3.0), (LogitNode(0, 12), " Anna", 0.2, 2.0)],
                       {"target": {"kind": "top_logits", "label": 'top logits: " Kate" (p=0.41), " Anna" (p=0.20)'}})
    assert _legend_target(to_dot(top)) == 'top logits: " Kate" (p=0.41), " Anna" (p=0.20)'
    # a blank recorded label falls back to the derived one
    blank = _with_logits([(LogitNode(0, 11), " Kate", 0.41, 3.0)], {"target": {"kind": "top_logits", "label": " "}})
    assert target_label(blank) == 'top logits: " Kate" (p=0.41)'


def test_target_label_derived_for_old_graphs():
    from attribution.graph import LogitNode

    toks = [(" Kate", 0.41), (" Anna", 0.2), ("\n", 0.1), (" the", 0.05), (" a", 0.01)]
    g = _with_logits([(LogitNode(0, 20 + i), t, p, 1.0) for i, (t, p) in enumerate(toks)])
    assert target_label(g) == 'top logits: " Kate" (p=0.41), " Anna" (p=0.20), "\\n" (p=0.10), … (+2 more)'
    assert _legend_target(to_dot(g)) == target_label(g)
    chosen = _with_logits([(LogitNode(0, 11), " Anna", 0.2, 1.0), (LogitNode(0, 12), " Kate", 0.41, 1.0)])
    assert target_label(chosen) == 'logits: " Anna" (p=0.20), " Kate" (p=0.41)'  # not by probability: not "top"
    diff = _with_logits([(LogitNode(0, -1, "logit_diff"), "logit_diff", 0.0, -1.5)])
    assert target_label(diff) == "logit_diff = -1.50"
    metric = _with_logits([(LogitNode(0, -1, "metric"), "metric", 0.0, 0.75)],
                          {"targets": ["logit:0:logit_diff"], "ablation": "counterfactual"}, method="atp")
    assert target_label(metric) == "atp metric: logit_diff (clean 0.75)"
    multi = _with_logits([(LogitNode(0, -1, "metric"), "metric", 0.0, 0.75)],
                         {"targets": ["logit:0:523", "logit:0:87"]}, method="patching")
    assert target_label(multi) == "patching metric: weighted token #523, token #87 (clean 0.75)"
    real_md = _with_logits([(LogitNode(0, 11), " Kate", 0.41, 3.0)],
                           {"model": {"path": "/models/shipped/ioi", "arch": "llama", "d_model": 64}})
    assert "model: ioi · method: exact" in to_dot(real_md)
    assert "target: " not in to_dot(Graph.from_keys([FeatureNode(0, 0, 1)], sp.csr_matrix((1, 1)), [1.0], [],
                                                    {"n_layers": 1}))


def test_target_label_is_escaped():
    from attribution.graph import LogitNode

    g = _with_logits([(LogitNode(0, 11), '<b>"&', 0.5, 1.0)])
    dot = to_dot(g)
    assert "&lt;b&gt;&quot;&amp;" in dot and "<b>" not in dot.split("target: ")[1].split("</TD>")[0][3:]


def test_deterministic_and_order_independent(circuit):
    a = to_dot(circuit)
    assert a == to_dot(circuit)
    # rebuild from reversed key order (logits keep theirs: it is part of the graph): same DOT
    keys = [k for k in circuit.keys if k.kind != "logit"][::-1] + circuit.nodes_of("logit")
    idx = [circuit.index(k) for k in keys]
    adj = circuit.adjacency[idx][:, idx]
    t = circuit.nodes.iloc[idx]
    logits = [k for k in keys if k.kind == "logit"]
    lw = [circuit.logit_weights[circuit.nodes_of("logit").index(k)] for k in logits]
    g2 = Graph.from_keys(keys, sp.csr_matrix(adj), t["activation"].tolist(), lw, circuit.metadata,
                         token=t["token"].tolist(), logit_prob=t["logit_prob"].tolist(), label=t["label"].tolist())
    assert to_dot(g2) == a


def test_golden_file():
    g = make_circuit(n_layers=2, n_pos=3, per_layer=2, n_errors=1, seed=3)
    feats = g.nodes_of("feature")
    dot = to_dot(g, descriptions={feats[0]: "top: ' Paris', ' France'", str(feats[1]): "logit: +Mary"})
    path = GOLDEN / "small_circuit.dot"
    if os.environ.get("VIZ_UPDATE_GOLDEN"):
        path.write_text(dot, encoding="utf-8")
    assert dot == path.read_text(encoding="utf-8"), "DOT changed; rerun with VIZ_UPDATE_GOLDEN=1 if intended"


def test_labels_descriptions_and_escaping(circuit):
    f = next(k for k in circuit.nodes_of("feature") if circuit.nodes["label"].iat[circuit.index(k)] == "")
    hostile = '<script>"]; evil -> x {&\\'
    dot = to_dot(circuit, descriptions={f: hostile})
    assert "&lt;script&gt;&quot;]; evil -&gt; x {&amp;" in dot  # escaped inside the HTML label
    nodes, edges = parse(dot)
    assert set(nodes) == set(circuit.nodes["key"]) and len(edges) == circuit.n_edges  # nothing injected
    assert f"L{f.layer} · #{f.feature}" in dot
    assert to_dot(SimpleNamespace(graph=circuit)) == to_dot(circuit)
    with pytest.raises(VizError):
        to_dot(object())


def _expected_aggregate(graph: Graph, groups: dict[str, list[str]]) -> dict[tuple[str, str], float]:
    member = {m: f"super:{g}" for g, ms in groups.items() for m in ms}
    df = graph.edges()
    df["s"] = df["source"].map(lambda k: member.get(k, k))
    df["t"] = df["target"].map(lambda k: member.get(k, k))
    df = df[df["s"] != df["t"]]
    sums = df.groupby(["s", "t"])["weight"].sum()
    return {k: v for k, v in sums.items() if v != 0}


def test_hand_supernodes_aggregate_edges(circuit):
    feats = [str(k) for k in circuit.nodes_of("feature")]
    groups = {"say Mary": feats[2:5], "names": feats[8:10]}
    dot = to_dot(circuit, CircuitStyle(supernodes=groups))
    nodes, edges = parse(dot)
    assert {"super:say Mary", "super:names"} <= set(nodes)
    assert not set(feats[2:5] + feats[8:10]) & set(nodes)
    want = _expected_aggregate(circuit, groups)
    assert set(edges) == set(want)
    for k, w in want.items():
        assert edges[k][0] == (POSITIVE if w > 0 else NEGATIVE)
    assert "grouped by hand" in dot
    with pytest.raises(VizError):
        to_dot(circuit, CircuitStyle(supernodes={"a": feats[:2], "b": feats[1:3]}))


def test_auto_supernodes_by_vectors_and_coactivation(circuit):
    feats = circuit.nodes_of("feature")
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 32))
    cluster = {0: 0, 1: 0, 2: 0, 5: 1, 6: 1}  # feature index -> cluster; the others near-orthogonal
    vecs = np.array([base[cluster[i]] + 0.01 * rng.normal(size=32) if i in cluster
                     else 100 * np.eye(32)[i] + rng.normal(size=32) for i in range(len(feats))])
    auto = auto_supernodes(circuit, vectors=vecs, threshold=0.9)
    got = sorted(sorted(v) for v in auto.groups.values())
    assert got == sorted([sorted(str(feats[i]) for i in (0, 1, 2)), sorted(str(feats[i]) for i in (5, 6))])
    dot = to_dot(circuit, auto.apply())
    assert "automatic: decoder cosine &gt;= 0.90" in dot and "dashed" in dot and "· auto" in dot
    by_map = auto_supernodes(circuit, vectors={str(f): v for f, v in zip(feats, vecs)}, threshold=0.9)
    assert dict(by_map.groups) == dict(auto.groups)
    pattern = np.zeros((len(feats), 40))
    pattern[[3, 4], :10] = 1.0
    pattern[[7], 20:] = 1.0
    co = auto_supernodes(circuit, coactivation=pattern, threshold=0.5)
    assert [sorted(v) for v in co.groups.values()] == [sorted([str(feats[3]), str(feats[4])])]
    with pytest.raises(VizError):
        auto_supernodes(circuit)
    with pytest.raises(VizError):
        auto_supernodes(circuit, vectors=vecs[:3])


COMP_NODES = pd.DataFrame({"name": ["embed", "L0.H1", "L0.H3", "L0.MLP", "L1.H0", "L1.MLP", "logits"],
                           "score": [1.0, 0.4, 0.8, 0.3, 0.9, 0.5, 1.0],
                           "label": ["", "prev token", "", "", "induction", "", ""]})
COMP_EDGES = pd.DataFrame({"source": ["embed", "L0.H3", "L0.H3", "L1.H0", "L0.MLP", "L1.MLP", "embed"],
                           "target": ["L0.H3", "L1.H0", "L0.MLP", "logits", "L1.MLP", "logits", "L1.MLP"],
                           "weight": [1.0, 2.0, 0.4, 3.0, 0.2, -0.5, -0.4]})


def test_component_circuit():
    dot = component_to_dot(COMP_NODES, COMP_EDGES, title="induction")
    nodes, edges = parse(dot)
    assert set(nodes) == set(COMP_NODES["name"])
    assert nodes["L0.H1"] == "ellipse" and nodes["L0.MLP"] == "box" and nodes["embed"] == "house"
    assert len(edges) == len(COMP_EDGES)
    for s, t, w in COMP_EDGES.itertuples(index=False):
        assert edges[(s, t)][0] == (POSITIVE if w > 0 else NEGATIVE)
    rows = {n: int(r) for r, body in ROW_RE.findall(dot) for n, _ in NODE_RE.findall(body)}
    order = ["embed", "L0.H1", "L0.MLP", "L1.H0", "L1.MLP", "logits"]
    assert [rows[n] for n in order] == sorted(rows[n] for n in order) and rows["L0.H1"] == rows["L0.H3"]
    assert len({rows[n] for n in order}) == len(order)
    assert dot == component_to_dot(COMP_NODES.iloc[::-1], COMP_EDGES.iloc[::-1], title="induction")
    with pytest.raises(SchemaError):
        component_to_dot(pd.DataFrame({"name": ["L0.X"]}), COMP_EDGES.iloc[:0])
    with pytest.raises(SchemaError):
        component_to_dot(COMP_NODES.iloc[:2], COMP_EDGES)


def test_style_validation():
    with pytest.raises(VizError):
        CircuitStyle(min_width=5, max_width=1)
    with pytest.raises(VizError):
        CircuitStyle(edge_alpha="zz")
    with pytest.raises(VizError):
        CircuitStyle(max_edges=-1)
    with pytest.raises(VizError):
        CircuitStyle(page_size=(9, 0))
    s = CircuitStyle(supernodes={"a": [FeatureNode(0, 0, 1)]})
    assert dict(s.supernodes) == {"a": ("feat:0:0:1",)}


def test_column_labels_from_nodes_when_metadata_holds_ids():
    """``build_graph`` stores token ids in metadata['tokens']: a column whose token node was
    pruned is labelled with the text its feature nodes carry, never with the id."""
    from attribution.graph import LogitNode, TokenNode

    keys = [TokenNode(0, 31), FeatureNode(0, 1, 4), FeatureNode(1, 2, 5), LogitNode(2, 41)]
    adj = sp.csr_matrix(([1.0, 2.0, 0.5], ([1, 2, 3], [0, 1, 2])), shape=(4, 4))
    g = Graph.from_keys(keys, adj, [1.0, 2.0, 3.0, 4.0], [1.0], {"n_layers": 2, "tokens": [2, 41, 6]},
                        token=["<bos>", " Mary", "and", " John"], logit_prob=[0, 0, 0, 0.9])
    dot = to_dot(g)
    labels = dict(re.findall(r'^    "_col_(\d+)" \[shape="plaintext", label=<<I>(.*?)</I>>', dot, re.MULTILINE))
    assert labels == {"1": "␣Mary", "2": "and"}  # not "41" / "6", and not the logit's " John"
