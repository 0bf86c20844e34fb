"""Neuronpedia export: schema, id formats (DESIGN B3 / circuit-tracer's export), parse-back, validator."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import scipy.sparse as sp

from attribution.graph import (
    ErrorNode,
    FeatureNode,
    Graph,
    LogitNode,
    NeuronpediaError,
    TokenNode,
    neuronpedia_ids,
    parse_neuronpedia_id,
    validate_neuronpedia,
)
from attribution.graph.neuronpedia import VIRTUAL_LOGIT_BASE

T0, T1 = TokenNode(0, 5), TokenNode(1, 7)
F, E, G = FeatureNode(0, 1, 3), ErrorNode(0, 0), FeatureNode(2, 1, 12)
LA, LB, LD = LogitNode(1, 9), LogitNode(1, 4), LogitNode(1, -1, "logit_diff")
KEYS = [T0, T1, E, F, G, LA, LB, LD]  # canonical order; n_layers = 3


def graph(metadata=None) -> Graph:
    i = {k: n for n, k in enumerate(KEYS)}
    a = sp.lil_matrix((8, 8))
    for s, t, w in [(T0, F, 0.5), (T1, F, -1.0), (F, G, 2.0), (E, G, 0.25), (G, LA, 1.5), (F, LB, -0.5),
                    (G, LD, 1.0), (T1, LD, 0.125)]:
        a[i[t], i[s]] = w
    md = {"n_layers": 3, "model": "tiny-llama", "prompt": "a b", "tokens": ["a", " b"]} | (metadata or {})
    return Graph.from_keys(KEYS, a.tocsr(), np.arange(8) + 0.5, [0.6, 0.3, 0.1], md,
                           token=["a", " b", "a", " b", " b", "c", "d", " b"],
                           logit_prob=[0, 0, 0, 0, 0, 0.6, 0.3, 0.0], label=["", "", "", "cats", "", "", "", ""])


def test_export_validates_and_has_the_schema():
    g = graph()
    d = g.to_neuronpedia(slug="s1")
    validate_neuronpedia(d)
    assert set(d) == {"metadata", "qParams", "nodes", "links"}
    assert d["metadata"]["slug"] == "s1" and d["metadata"]["scan"] == "tiny-llama"
    assert d["metadata"]["prompt_tokens"] == ["a", " b"] and d["metadata"]["prompt"] == "a b"
    assert set(d["qParams"]) == {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
    assert len(d["nodes"]) == 8 and len(d["links"]) == 8
    json.dumps(d, allow_nan=False)  # plain JSON types only


def test_node_ids_and_fields():
    g = graph()
    nodes = {n["node_id"]: n for n in g.to_neuronpedia()["nodes"]}
    # DESIGN B3: feature {layer}_{feature}_{pos}, error {layer}_-1_{pos}, embedding E_{token}_{pos},
    # logit {n_layers+1}_{token}_{pos}; a custom direction gets a virtual index 10**9 + j.
    assert list(nodes) == ["E_5_0", "E_7_1", "0_-1_0", "0_3_1", "2_12_1", "4_9_1", "4_4_1",
                           f"4_{VIRTUAL_LOGIT_BASE}_1"]
    f = nodes["0_3_1"]
    got = (f["layer"], f["ctx_idx"], f["feature_type"], f["activation"], f["clerp"])
    assert got == ("0", 1, "cross layer transcoder", 3.5, "cats")
    assert f["feature"] == (0 + 3) * (0 + 3 + 1) // 2 + 3  # Cantor pairing of (layer, feature)
    assert nodes["0_-1_0"]["feature_type"] == "mlp reconstruction error" and nodes["0_-1_0"]["feature"] == -1
    assert nodes["E_7_1"]["layer"] == "E" and nodes["E_7_1"]["feature_type"] == "embedding"
    la = nodes["4_9_1"]
    assert la["is_target_logit"] and la["token_prob"] == 0.6 and la["clerp"] == 'Output "c" (p=0.600)'
    assert not nodes["4_4_1"]["is_target_logit"] and "logit_diff" in nodes[f"4_{VIRTUAL_LOGIT_BASE}_1"]["clerp"]
    assert len({n["jsNodeId"] for n in nodes.values()}) == 8


def test_ids_parse_back_and_links_match_edges():
    g = graph({"vocab_size": 50})
    ids = neuronpedia_ids(g)
    assert ids[-1] == "4_50_1"  # virtual index = vocab_size + 0
    for node_id, key in zip(ids, g.keys):
        back = parse_neuronpedia_id(node_id, g.n_layers)
        assert back == (LogitNode(1, 50) if key == LD else key)
    d = g.to_neuronpedia()
    key_of = dict(zip(ids, g.keys))
    links = {(key_of[x["source"]], key_of[x["target"]]): x["weight"] for x in d["links"]}
    assert links == {(s, t): w for s, t, w in g.iter_edges()}


def test_influence_and_write(tmp_path):
    g = graph()
    infl = np.linspace(0, 1, 8)
    d = g.to_neuronpedia(influence=infl, node_threshold=0.8)
    assert [n["influence"] for n in d["nodes"]] == infl.tolist() and d["metadata"]["node_threshold"] == 0.8
    with pytest.raises(NeuronpediaError):
        g.to_neuronpedia(influence=np.ones(3))
    g.write_neuronpedia(tmp_path / "out" / "graph.json", slug="x")
    loaded = json.loads((tmp_path / "out" / "graph.json").read_text())
    validate_neuronpedia(loaded)
    assert loaded["metadata"]["slug"] == "x"


def test_circuit_tracer_style_dict_validates():
    """A hand-written graph shaped like circuit-tracer's create_graph_files output."""
    d = {
        "metadata": {"slug": "x", "scan": "gemma-2-2b", "transcoder_list": [], "prompt_tokens": ["<bos>", "Hi"],
                     "prompt": "Hi", "node_threshold": 0.8, "schema_version": 1},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": [
            {"node_id": "E_2_0", "feature": 0, "layer": "E", "ctx_idx": 0, "feature_type": "embedding",
             "jsNodeId": "E_2-0", "influence": 0.5},
            {"node_id": "3_1234_1", "feature": 99, "layer": "3", "ctx_idx": 1, "feature_type": "cross layer transcoder",
             "jsNodeId": "3_1234-0", "activation": 2.5, "influence": 0.2},
            {"node_id": "5_-1_1", "feature": -1, "layer": "5", "ctx_idx": 1, "feature_type": "mlp reconstruction error",
             "jsNodeId": "5_-1-1"},
            {"node_id": "27_818_1", "feature": 818, "layer": "27", "ctx_idx": 1, "feature_type": "logit",
             "jsNodeId": "L_818-1", "token_prob": 0.9, "is_target_logit": True, "clerp": "Output"},
        ],
        "links": [{"source": "E_2_0", "target": "3_1234_1", "weight": 1.5},
                  {"source": "3_1234_1", "target": "27_818_1", "weight": -0.5}],
    }
    validate_neuronpedia(d)


def _broken(mutate):
    d = graph().to_neuronpedia()
    d = copy.deepcopy(d)
    mutate(d)
    return d


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("links"),
    lambda d: d["metadata"].pop("scan"),
    lambda d: d["qParams"].pop("pinnedIds"),
    lambda d: d["nodes"][3].update(node_id="0_3"),             # malformed feature id
    lambda d: d["nodes"][3].update(ctx_idx=0),                 # id says pos 1
    lambda d: d["nodes"][3].update(layer="1"),                 # id says layer 0
    lambda d: d["nodes"][2].update(node_id="0_4_0"),           # error node must carry -1
    lambda d: d["nodes"][0].update(node_id="E5_0"),            # malformed embedding id
    lambda d: d["nodes"][1].update(node_id="E_5_0", ctx_idx=0),  # duplicate id
    lambda d: d["nodes"][5].update(node_id="1_9_1", layer="1"),  # logit layer not above features
    lambda d: d["nodes"][4].pop("feature_type"),
    lambda d: d["nodes"][4].update(feature="12"),
    lambda d: d["links"].append({"source": "E_5_0", "target": "nope", "weight": 1.0}),
    lambda d: d["links"][0].update(weight=float("inf")),
    lambda d: d["links"][0].pop("weight"),
])
def test_validator_rejects(mutate):
    with pytest.raises(NeuronpediaError):
        validate_neuronpedia(_broken(mutate))


def test_parse_rejects_bad_ids():
    for bad in ["x", "E_1", "9_1_0", "1_2_3_4"]:
        with pytest.raises(NeuronpediaError):
            parse_neuronpedia_id(bad, n_layers=3)
    assert issubclass(NeuronpediaError, ValueError)
