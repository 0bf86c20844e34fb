"""The explorer's JSON API (``circuits.explore.api``) on a seeded layered graph, without
HTTP: the pruned view is ``circuits.prune.prune``'s circuit, pages are disjoint and
cover it, node details match the adjacency, saved subgraphs reload with exactly the
pinned nodes, and bad parameters are 4xx ``ExploreError``s."""

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
    d = api.save_subgraph(graph, {"nodes": pinned, "name": "pinned"}, tmp_path / "explore")
    np_json = json.loads((tmp_path / "explore" / "pinned.json").read_text())
    from attribution.graph.neuronpedia import neuronpedia_id, validate_neuronpedia

    validate_neuronpedia(np_json)
    want = {neuronpedia_id(graph.keys[graph.index(k)], graph.n_layers) for k in pinned}
    assert {n["node_id"] for n in np_json["nodes"]} == want and d["n_nodes"] == 4
    sub = graph.subgraph(pinned)
    assert len(np_json["links"]) == sub.n_edges
    if d["note"] is None:  # Graphviz present: the SVG is there too
        assert (tmp_path / "explore" / "pinned.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert sorted(p.name for p in (tmp_path / "explore").iterdir()) == sorted(d["files"].values())


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
