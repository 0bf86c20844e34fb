"""The explorer's JSON API (``circuits.explore.api``) on a seeded layered graph, without
HTTP: the pruned view is ``circuits.prune.prune``'s circuit, pages are disjoint and
cover it, node details match the adjacency, saved subgraphs reload with exactly the
pinned nodes and their supernodes (Neuronpedia ``qParams`` shape), component circuits
give the same shapes checked against a hand-worked record, and bad parameters are 4xx
``ExploreError``s."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp

from attribution.graph import ErrorNode, FeatureNode, Graph, LogitNode, TokenNode
from circuits.explore import api
from circuits.explore.api import ExploreError
from circuits.prune import prune

TOKENS = ["<bos>", "When", " Mary", " and", " John", " went", "<script>"]


def make_graph(n_layers: int = 3, per_layer: int = 12, seed: int = 0, fan_in: int = 6) -> Graph:
    """A seeded layered graph: tokens, ``per_layer`` features per layer, an error node per
    layer at the last position, two logits; edges only upward, ``fan_in`` into each node."""
    rng = np.random.default_rng(seed)
    n_pos = len(TOKENS)
    keys: list = [TokenNode(p, 100 + p) for p in range(n_pos)]
    for layer in range(n_layers):
        used = set()
        for _ in range(per_layer):
            p, f = int(rng.integers(0, n_pos)), int(rng.integers(0, 500))
            while (p, f) in used:
                f += 1
            used.add((p, f))
            keys.append(FeatureNode(layer, p, f))
        keys.append(ErrorNode(layer, n_pos - 1))
    keys += [LogitNode(n_pos - 1, 2001), LogitNode(n_pos - 1, -1, "logit_diff")]
    layer_of = np.array([-1 if isinstance(k, TokenNode) else n_layers if isinstance(k, LogitNode) else k.layer
                         for k in keys])
    n = len(keys)
    a = sp.lil_matrix((n, n))
    for t in range(n):
        below = np.flatnonzero(layer_of < layer_of[t])
        for s in (rng.choice(below, size=min(fan_in, below.size), replace=False) if below.size else []):
            a[t, s] = float(rng.normal() * rng.choice([0.1, 1.0, 3.0]))
    token = [TOKENS[k.pos] if isinstance(k, TokenNode) else (" Mary" if isinstance(k, LogitNode) else "")
             for k in keys]
    md = {"n_layers": n_layers, "tokens": TOKENS, "prompt": "".join(TOKENS), "model": "synthetic"}
    return Graph.from_keys(keys, a.tocsr(), np.abs(rng.normal(size=n)) * 3, [0.6, 0.4], md, token=token,
                           label=["<b>x</b>" if i % 5 == 0 else "" for i in range(n)])


@pytest.fixture(scope="module")
def graph():
    return make_graph()


def test_summary(graph):
    s = api.summary(graph, "graph")
    assert s["n_nodes"] == graph.n_nodes and s["n_edges"] == graph.n_edges and s["n_layers"] == 3
    assert s["tokens"] == TOKENS and s["layers"] == [-1, 0, 1, 2, 3]
    assert sum(s["types"].values()) == graph.n_nodes
    json.dumps(s, allow_nan=False)


@pytest.mark.parametrize("nt,et", [(0.8, 0.98), (0.5, 0.7), (1.0, 1.0)])
def test_pruned_view_is_the_library_pruning(graph, nt, et):
    ref = prune(graph, nt, et)
    v = api.pruned_view(graph, nt, et, limit=10 ** 6)
    keys = graph.nodes["key"].to_numpy(dtype=object)
    assert {n["id"] for n in v["nodes"]} == set(keys[ref.node_mask])
    assert v["total_nodes"] == int(ref.node_mask.sum()) and v["total_edges"] == ref.graph.n_edges
    want = {(s, t): w for s, t, w in zip(*[ref.graph.edges()[c].tolist() for c in ("source", "target", "weight")])}
    got = {(e["source"], e["target"]): e["weight"] for e in v["edges"]}
    assert got == want
    infl = [n["influence"] for n in v["nodes"]]
    assert infl == sorted(infl, reverse=True)  # most influential first
    assert v["next_offset"] is None


def test_pages_are_disjoint_and_cover(graph):
    ref = prune(graph, 0.9, 0.95)
    kept = set(graph.nodes["key"].to_numpy(dtype=object)[ref.node_mask])
    seen, offset, pages = [], 0, 0
    while offset is not None:
        v = api.pruned_view(graph, 0.9, 0.95, limit=7, offset=offset)
        ids = [n["id"] for n in v["nodes"]]
        assert len(ids) <= 7
        page = set(ids)
        # Only edges among this page's nodes travel with it.
        assert all(e["source"] in page and e["target"] in page for e in v["edges"])
        seen += ids
        offset, pages = v["next_offset"], pages + 1
    assert len(seen) == len(set(seen)) and set(seen) == kept and pages == math.ceil(len(kept) / 7)
    assert api.pruned_view(graph, 0.9, 0.95, limit=7, offset=10 ** 6)["nodes"] == []


def test_node_detail_top_edges(graph):
    a = graph.adjacency.toarray()
    keys = graph.nodes["key"].tolist()
    i = int(np.argmax((a != 0).sum(0) + (a != 0).sum(1)))  # a node with edges both ways
    d = api.node_detail(graph, keys[i], k=3)
    assert d["node"]["id"] == keys[i] and d["node"]["activation"] == pytest.approx(graph.nodes["activation"].iat[i])
    inc = sorted(np.flatnonzero(a[i]), key=lambda s: (-abs(a[i, s]), s))[:3]
    out = sorted(np.flatnonzero(a[:, i]), key=lambda t: (-abs(a[t, i]), t))[:3]
    assert [(e["source"], e["weight"]) for e in d["incoming"]] == [(keys[s], a[i, s]) for s in inc]
    assert [(e["target"], e["weight"]) for e in d["outgoing"]] == [(keys[t], a[t, i]) for t in out]
    assert d["n_incoming"] == int((a[i] != 0).sum()) and d["n_outgoing"] == int((a[:, i] != 0).sum())
    assert d["dashboard"] is None


def test_dashboard_link(graph, tmp_path):
    i = graph.nodes["type"].tolist().index("feature")
    layer, feat = int(graph.nodes["layer"].iat[i]), int(graph.nodes["feature"].iat[i])
    (tmp_path / "dashboards").mkdir()
    (tmp_path / "dashboards" / f"feature_L{layer}.mlp_in_{feat}.html").write_text("<html></html>")
    d = api.node_detail(graph, graph.nodes["key"].iat[i], run_root=tmp_path)
    assert d["dashboard"] == f"dashboards/feature_L{layer}.mlp_in_{feat}.html"


def test_save_subgraph_reloads(graph, tmp_path):
    keys = graph.nodes["key"].tolist()
    pinned = [keys[0], keys[10], keys[20], "logit:6:2001"]
    d = api.save_subgraph(graph, {"nodes": pinned, "name": "pinned"}, tmp_path / "explore", source="graph")
    np_json = json.loads((tmp_path / "explore" / "pinned.json").read_text())
    from attribution.graph.neuronpedia import neuronpedia_id, validate_neuronpedia

    validate_neuronpedia(np_json)
    want = {neuronpedia_id(graph.keys[graph.index(k)], graph.n_layers) for k in pinned}
    assert {n["node_id"] for n in np_json["nodes"]} == want and d["n_nodes"] == 4
    assert set(np_json["qParams"]["pinnedIds"]) == want and np_json["qParams"]["supernodes"] == []
    sub = graph.subgraph(pinned)
    assert len(np_json["links"]) == sub.n_edges
    if d["note"] is None:  # Graphviz present: the SVG and the PDF are there too
        assert (tmp_path / "explore" / "pinned.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
        assert (tmp_path / "explore" / "pinned.pdf").read_bytes().startswith(b"%PDF")
        assert set(d["files"]) == {"neuronpedia", "svg", "pdf"}
    assert sorted(p.name for p in (tmp_path / "explore").iterdir()) == sorted([*d["files"].values(), "pinned"])
    # The saved subgraph is itself a graph: same nodes, same edges among them.
    back = Graph.load(tmp_path / "explore" / "pinned")
    assert set(back.nodes["key"]) == set(pinned) and back.n_edges == sub.n_edges
    assert back.metadata["explore"]["source"] == "graph"
    assert not list((tmp_path / "explore").rglob(".*"))  # no temporary file left behind


def test_supernodes_saved_as_neuronpedia_does(graph, tmp_path):
    feats = graph.nodes.loc[graph.nodes["type"] == "feature", "key"].tolist()
    pinned = feats[:5] + ["logit:6:2001"]
    groups = [["name mover", feats[0], feats[1]], ["inhibition", feats[2]]]
    d = api.save_subgraph(graph, {"nodes": pinned, "name": "grouped", "supernodes": groups}, tmp_path)
    assert d["supernodes"] == groups
    np_json = json.loads((tmp_path / "grouped.json").read_text())
    # Neuronpedia's qParams.supernodes: [label, node_id, ...] in Neuronpedia node ids
    # (``{layer}_{feature}_{pos}`` for features), spelled out here by hand.
    def np_id(key):
        _, layer, pos, feat = key.split(":")
        return f"{layer}_{feat}_{pos}"

    assert np_json["qParams"]["supernodes"] == [["name mover", np_id(feats[0]), np_id(feats[1])],
                                                 ["inhibition", np_id(feats[2])]]
    back = Graph.load(tmp_path / "grouped")
    assert api.summary(back, "explore/grouped")["supernodes"] == groups
    if d["note"] is None:  # each supernode is one drawn node of the figure
        svg = (tmp_path / "grouped.svg").read_text()
        assert "name mover" in svg and "inhibition" in svg


@pytest.mark.parametrize("groups", [
    [["a", "feat:9:9:9"]],                   # not a pinned node
    [["a"]],                                 # no member
    [["a", "X"], ["a", "Y"]],                # duplicate label (X/Y replaced below)
    [["a", "X"], ["b", "X"]],                # a node in two supernodes
    [["", "X"]], "nope", [[1, "X"]],
])
def test_bad_supernodes(graph, tmp_path, groups):
    feats = graph.nodes.loc[graph.nodes["type"] == "feature", "key"].tolist()
    if isinstance(groups, list):
        groups = [[x.replace("X", feats[0]).replace("Y", feats[1]) if isinstance(x, str) and x in "XY" and x
                   else x for x in g] if isinstance(g, list) else g for g in groups]
    with pytest.raises(ExploreError) as e:
        api.save_subgraph(graph, {"nodes": feats[:3], "name": "s", "supernodes": groups}, tmp_path / "explore")
    assert e.value.status == 400
    assert not (tmp_path / "explore").exists()


@pytest.mark.parametrize("nt,et", [(0.8, 0.98), (0.5, 0.7), (1.0, 1.0), (0.3, 0.99)])
def test_prune_masks_equal_library_prune(nt, et):
    """The explorer's cached-influence pruning keeps exactly ``prune``'s nodes and edges."""
    g = make_graph(n_layers=4, per_layer=40, seed=3, fan_in=10)
    ref = prune(g, nt, et)
    m = api.prune_masks(g, nt, et, influence=api.node_influence(g))
    assert np.array_equal(m.node_mask, ref.node_mask) and np.allclose(m.node_influence, ref.node_influence)
    kept = np.flatnonzero(ref.node_mask)
    ps, pt, pw = ref.graph.edge_arrays()
    # Same edges, same weights, same (CSR) order.
    assert np.array_equal(m.edge_src, kept[ps]) and np.array_equal(m.edge_tgt, kept[pt])
    assert np.array_equal(m.edge_weight, pw) and m.n_edges == ref.graph.n_edges


def test_page_edge_cap_keeps_the_heaviest(graph):
    full = api.pruned_view(graph, 1.0, 1.0, limit=10 ** 6)
    capped = api.pruned_view(graph, 1.0, 1.0, limit=10 ** 6, max_edges=5)
    assert full["page_edges"] == len(full["edges"]) == capped["page_edges"] > 5 and not full["edges_truncated"]
    assert capped["edges_truncated"] and len(capped["edges"]) == 5
    heaviest = sorted((abs(e["weight"]) for e in full["edges"]), reverse=True)[:5]
    assert sorted((abs(e["weight"]) for e in capped["edges"]), reverse=True) == heaviest


COMPONENT = {
    "schema": "mlx-circuits/component-circuit", "version": 1, "model": "tiny", "task": "ioi",
    "metric": "logit_diff", "method": "eap", "ablation": "mean", "level": "edge",
    "nodes": [{"name": "embed", "score": None}, {"name": "L0.H1", "score": None},
              {"name": "L0H3", "score": None}, {"name": "L1.mlp", "score": None}, {"name": "logits", "score": None}],
    "edges": [{"source": "embed", "target": "L0.H1", "port": "q", "score": 0.5},
              {"source": "L0.H1", "target": "L1.MLP", "port": None, "score": -2.0},
              {"source": "L0.H3", "target": "L1.MLP", "port": None, "score": 0.25},
              {"source": "L1.MLP", "target": "logits", "port": None, "score": 1.5}],
}


def test_component_circuit_shapes(tmp_path):
    c = api.ComponentCircuit(COMPONENT)
    s = c.summary("val/component_circuit.json")
    assert s["level"] == "component" and s["n_nodes"] == 5 and s["n_edges"] == 4 and s["n_layers"] == 2
    assert s["tokens"] == ["H0", "H1", "H2", "H3", "MLP"] and s["types"] == {"embed": 1, "head": 2, "mlp": 1, "logits": 1}
    v = c.view(limit=3)
    # Unscored nodes rank by the summed |score| of their edges (worked by hand):
    # L1.MLP 2+0.25+1.5=3.75, L0.H1 0.5+2=2.5, logits 1.5, embed 0.5, L0.H3 0.25.
    assert [n["id"] for n in v["nodes"]] == ["L1.MLP", "L0.H1", "logits"] and v["next_offset"] == 3
    assert {(e["source"], e["target"], e["weight"]) for e in v["edges"]} == {("L0.H1", "L1.MLP", -2.0),
                                                                             ("L1.MLP", "logits", 1.5)}
    rows = {n["id"]: (n["row"], n["pos"], n["type"]) for n in api.ComponentCircuit(COMPONENT).view()["nodes"]}
    assert rows == {"embed": (0, 0, "embed"), "L0.H1": (1, 1, "head"), "L0.H3": (1, 3, "head"),
                    "L1.MLP": (4, 4, "mlp"), "logits": (5, 0, "logits")}
    d = c.detail("L1.MLP", k=1)
    assert d["n_incoming"] == 2 and d["incoming"] == [{"source": "L0.H1", "weight": -2.0, "port": None}]
    assert d["outgoing"] == [{"target": "logits", "weight": 1.5, "port": None}]
    with pytest.raises(ExploreError) as e:
        c.detail("L9.H9")
    assert e.value.status == 404
    out = api.save_subgraph(c, {"nodes": ["L0.H1", "L1.MLP", "logits"], "name": "sub",
                                "supernodes": [["mover", "L0.H1"]]}, tmp_path, source="val/component_circuit.json")
    from viz.components import load_component_circuit

    back = api.ComponentCircuit(load_component_circuit(tmp_path / "sub"))
    assert back.names == ["L0.H1", "L1.MLP", "logits"] and len(back.edges) == 2
    assert back.summary()["supernodes"] == [["mover", "L0.H1"]] and out["n_edges"] == 2
    if out["note"] is None:
        assert (tmp_path / "sub.pdf").read_bytes().startswith(b"%PDF")


def test_component_circuit_bad_record():
    for bad in ({}, {"nodes": [{"name": "L0.Q7"}], "edges": []}, {"nodes": [], "edges": [{"source": "x"}]}):
        with pytest.raises(ExploreError) as e:
            api.ComponentCircuit(bad)
        assert e.value.status == 422


@pytest.mark.parametrize("text", ["abc", "nan", "NaN", "inf", "-0.1", "0", "1.5", "1e9", "0x1"])
def test_bad_thresholds(text):
    with pytest.raises(ExploreError) as e:
        api.parse_threshold("node_threshold", text, 0.8)
    assert e.value.status == 400 and "node_threshold" in str(e.value)


def test_good_thresholds_and_ints():
    assert api.parse_threshold("x", None, 0.8) == 0.8 and api.parse_threshold("x", "1", 0.8) == 1.0
    assert api.parse_int("limit", "12", 5, 1, 100) == 12
    for bad in ("-1", "1.5", "x", "1000"):
        with pytest.raises(ExploreError):
            api.parse_int("limit", bad, 5, 0, 100)


@pytest.mark.parametrize("node", ["feat:9:9:9", "nonsense", "", "feat:1", "x" * 1000])
def test_unknown_nodes(graph, node):
    with pytest.raises(ExploreError) as e:
        api.node_detail(graph, node)
    assert e.value.status in (400, 404)


@pytest.mark.parametrize("body", [None, [], {"nodes": []}, {"nodes": [1, 2]}, {"nodes": ["feat:9:9:9"]},
                                  {"nodes": ["tok:0:100"], "name": "../x"}, {"nodes": ["tok:0:100"], "name": ".x"},
                                  {"nodes": ["tok:0:100"], "name": "a/b"}])
def test_bad_save_requests(graph, body, tmp_path):
    with pytest.raises(ExploreError) as e:
        api.save_subgraph(graph, body, tmp_path / "explore")
    assert 400 <= e.value.status < 500
    assert not (tmp_path / "explore").exists()


def test_prune_masks_equal_library_prune_synthetic_scale():
    """The same equality on the scale benchmark's kind of graph (heavy-tailed, 100k edges)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from explorer_scale import synthetic_graph

    g = synthetic_graph(3000, 100_000, n_layers=6, n_pos=10, seed=1)
    infl = api.node_influence(g)
    for nt, et in ((0.8, 0.98), (0.6, 0.9), (0.95, 0.995)):
        ref = prune(g, nt, et)
        m = api.prune_masks(g, nt, et, influence=infl)
        kept = np.flatnonzero(ref.node_mask)
        ps, pt, _ = ref.graph.edge_arrays()
        assert np.array_equal(m.node_mask, ref.node_mask)
        assert np.array_equal(m.edge_src, kept[ps]) and np.array_equal(m.edge_tgt, kept[pt])
