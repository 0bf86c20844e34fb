"""Aggregation over prompts, checked against statistics worked by hand on two small graphs
and, on the shipped ioi organism, against a pandas group-by of each graph's own tables."""

import attribution  # noqa: F401  (BLAS preload before mlx)

import numpy as np
import pandas as pd
import pytest

from attribution.graph import Graph
from circuits.multi import Aggregate, AggregateConfig, MultiError, aggregate
from circuits.prune import prune
from circuits_helpers import hand_graph


mk = hand_graph


def g1():
    # feature 3 of layer 0 is active at positions 1 and 2: position-free keys sum them
    return mk(3, {"tok:0:5": 1.0, "tok:1:7": 1.0, "feat:0:1:3": 2.0, "feat:0:2:3": 1.0, "err:0:2": 0.5,
                  "feat:1:2:4": 3.0, "logit:2:logit_diff": 1.5},
              {("tok:0:5", "feat:0:1:3"): 1.0, ("tok:1:7", "feat:0:2:3"): 2.0, ("feat:0:1:3", "feat:1:2:4"): 0.5,
               ("feat:0:2:3", "feat:1:2:4"): 0.25, ("feat:1:2:4", "logit:2:logit_diff"): 4.0,
               ("err:0:2", "logit:2:logit_diff"): 1.0}, prompt="one")


def g2():
    return mk(4, {"tok:0:5": 1.0, "feat:0:3:3": 4.0, "feat:1:3:9": 1.0, "logit:3:logit_diff": 0.5},
              {("tok:0:5", "feat:0:3:3"): 3.0, ("feat:0:3:3", "logit:3:logit_diff"): 2.0,
               ("feat:1:3:9", "logit:3:logit_diff"): -1.0, ("tok:0:5", "feat:1:3:9"): 1.0}, prompt="two")


def _node(agg, key):
    t = agg.nodes
    return t[t["key"] == key].iloc[0]


def _edge(agg, s, t):
    e = agg.edges
    hit = e[(e["source"] == s) & (e["target"] == t)]
    assert len(hit) == 1, (s, t)
    return hit.iloc[0]


def test_position_free_statistics_by_hand():
    agg = aggregate([g1(), g2()])
    assert agg.n_prompts == 2
    assert set(agg.nodes["key"]) == {"tok:0:5", "tok:0:7", "feat:0:0:3", "err:0:0", "feat:1:0:4", "feat:1:0:9",
                                     "logit:0:logit_diff"}
    f3 = _node(agg, "feat:0:0:3")  # prompt 1: 2 + 1 (two positions), prompt 2: 4
    assert (f3.presence, f3.n_present, f3.activation_mean, f3.activation_std) == (1.0, 2, 3.5, 0.5)
    f4 = _node(agg, "feat:1:0:4")  # prompt 1 only: 3
    assert (f4.presence, f4.activation_mean, f4.activation_std, f4.activation_mean_present) == (0.5, 1.5, 1.5, 3.0)
    e = _edge(agg, "feat:0:0:3", "feat:1:0:4")  # 0.5 + 0.25 in prompt 1, absent in prompt 2
    assert (e.presence, e.weight_mean, e.weight_std, e.weight_mean_present) == (0.5, 0.375, 0.375, 0.75)
    e = _edge(agg, "tok:0:5", "feat:0:0:3")  # 1 and 3
    assert (e.presence, e.weight_mean, e.weight_std, e.weight_cv) == (1.0, 2.0, 1.0, 0.5)
    e = _edge(agg, "feat:0:0:3", "logit:0:logit_diff")
    assert (e.presence, e.weight_mean) == (0.5, 1.0)
    assert agg.n_edges == 8  # 6 + 4 member edges, 2 pairs merge into one (positions), 1 shared across prompts
    # influence in prompt 2 by hand: logit row |2| + |-1| = 3, so feat:0:3:3 carries 2/3
    assert agg.node_influence[agg.index("feat:0:0:3"), 1] == pytest.approx(2 / 3, abs=1e-15)
    assert agg.node_influence[agg.index("feat:1:0:9"), 1] == pytest.approx(1 / 3, abs=1e-15)
    assert agg.node_influence[agg.index("tok:0:5"), 1] == pytest.approx(1.0, abs=1e-15)
    # pooled CV: sum of stds / sum of |means|
    e = agg.edges
    assert agg.edge_cv() == pytest.approx(e["weight_std"].sum() / e["weight_mean"].abs().sum())


def test_filter_by_presence():
    agg = aggregate([g1(), g2()])
    full = agg.filter(1.0)
    assert list(full.nodes["key"]) == ["tok:0:5", "feat:0:0:3", "logit:0:logit_diff"]
    assert list(zip(full.edges["source"], full.edges["target"])) == [("tok:0:5", "feat:0:0:3")]
    assert agg.filter(0.5).n_nodes == agg.n_nodes and agg.filter(0.5).n_edges == agg.n_edges
    # the logit is present in every prompt, so keep_logits=False changes nothing here
    assert list(agg.filter(1.0, keep_logits=False).nodes["key"]) == list(full.nodes["key"])
    one = aggregate([g1(), mk(2, {"tok:0:5": 1.0, "logit:1:other": 1.0}, {("tok:0:5", "logit:1:other"): 1.0})])
    assert "logit:0:other" in set(one.filter(1.0).nodes["key"])
    assert "logit:0:other" not in set(one.filter(1.0, keep_logits=False).nodes["key"])
    with pytest.raises(MultiError, match="min_presence"):
        agg.filter(1.5)


def test_from_end_and_absolute_positions():
    agg = aggregate([g1(), g2()], AggregateConfig(positions="from_end"))
    # prompt 1 (3 tokens) shifts right by 1: its positions 1, 2 become 2, 3
    f = _node(agg, "feat:0:3:3")
    assert (f.presence, f.activation_mean) == (1.0, 2.5)  # prompt 1: 1 (pos 2 -> 3), prompt 2: 4
    assert _node(agg, "feat:0:2:3").activation_mean == 1.0  # prompt 1's pos 1 only
    assert _node(agg, "logit:3:logit_diff").presence == 1.0
    with pytest.raises(MultiError, match="one length"):
        aggregate([g1(), g2()], AggregateConfig(positions="absolute"))
    same = aggregate([g1(), g1()], AggregateConfig(positions="absolute"))
    assert same.n_nodes == g1().n_nodes and (same.nodes["activation_std"] == 0).all()


def test_rank_logits_and_bad_input():
    a = mk(2, {"tok:0:1": 1.0, "feat:0:1:0": 1.0, "logit:1:11": 1.0, "logit:1:12": 1.0},
           {("feat:0:1:0", "logit:1:11"): 1.0, ("feat:0:1:0", "logit:1:12"): 2.0, ("tok:0:1", "feat:0:1:0"): 1.0})
    b = mk(2, {"tok:0:1": 1.0, "feat:0:1:0": 1.0, "logit:1:13": 1.0},
           {("feat:0:1:0", "logit:1:13"): 3.0, ("tok:0:1", "feat:0:1:0"): 1.0})
    agg = aggregate([a, b], AggregateConfig(logits="rank"))
    assert [k for k in agg.nodes["key"] if k.startswith("logit")] == ["logit:0:top0", "logit:0:top1"]
    assert _edge(agg, "feat:0:0:0", "logit:0:top0").weight_mean == 2.0  # 1 and 3
    assert agg.to_graph().logit_weights.sum() <= 1 + 1e-12
    with pytest.raises(MultiError, match="no graphs"):
        aggregate([])
    with pytest.raises(MultiError, match="layer counts"):
        aggregate([a, mk(2, {"tok:0:1": 1.0, "logit:1:11": 1.0}, {("tok:0:1", "logit:1:11"): 1.0}, n_layers=3)])
    with pytest.raises(MultiError, match="not a Graph"):
        aggregate([a, "graph"])
    with pytest.raises(MultiError, match="positions mode"):
        AggregateConfig(positions="left")


def test_to_graph_save_load_and_dot(tmp_path):
    agg = aggregate([g1(), g2()])
    g = agg.to_graph()
    assert g.weight("tok:0:5", "feat:0:0:3") == 2.0
    assert g.weight("feat:0:0:3", "feat:1:0:4") == 0.375
    assert g.nodes.set_index("key").loc["feat:0:0:3", "activation"] == 3.5
    assert g.nodes.set_index("key").loc["feat:1:0:4", "label"] == "in 1/2 prompts"
    assert g.metadata["aggregate"]["n_prompts"] == 2
    g.save(tmp_path / "g")
    assert Graph.load(tmp_path / "g").equals(g)
    agg.save(tmp_path / "agg")
    back = Aggregate.load(tmp_path / "agg")
    assert back.keys == agg.keys and back.config == agg.config
    for name in ("edge_index", "node_present", "node_activation", "node_influence", "edge_present", "edge_weight"):
        np.testing.assert_array_equal(getattr(back, name), getattr(agg, name))
    pd.testing.assert_frame_equal(back.edges, agg.edges)
    blob = (tmp_path / "agg" / "aggregate.safetensors").read_bytes()
    (tmp_path / "agg" / "aggregate.safetensors").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(MultiError, match="digest"):
        Aggregate.load(tmp_path / "agg")
    with pytest.raises(MultiError, match="cannot read"):
        Aggregate.load(tmp_path / "missing")
    dot = agg.to_dot(descriptions={"feat:1:0:4": "says Mary"})
    assert dot.startswith("digraph") and "aggregate of 2 prompts (position-free keys)" in dot
    assert "says Mary · in 1/2 prompts" in dot
    dot = agg.to_dot(supernodes={"grp": ("feat:1:0:4", "feat:1:0:9")})
    assert "super:grp" in dot


@pytest.fixture(scope="module")
def ioi_graphs():
    from attribution import GraphConfig, build_graph, load_model, logit_diff
    from attribution.testing_dicts import random_transcoders
    from circuits import organisms, tasks

    model = load_model(organisms.path("ioi"))
    dicts = random_transcoders(model, width=32, seed=0, bias=-0.4)
    data = tasks.get("ioi").generate(4, seed=0, tokenizer=model.tokenizer)
    graphs = []
    for i in range(3):
        io, s = int(data.answer[i]), int(data.wrong[i])
        graphs.append(build_graph(model, dicts, [int(t) for t in data.clean[i]], targets=logit_diff(model, io, s),
                                  config=GraphConfig(batch_size=64)))
    return model, dicts, data, graphs


def test_ioi_aggregate_matches_group_by(ioi_graphs):
    _, _, _, graphs = ioi_graphs
    circuits = [prune(g, 0.8, 0.98) for g in graphs]
    agg = aggregate(circuits)
    for p, c in enumerate(circuits):
        t = c.graph.nodes
        # independent position-free grouping with pandas
        feat = "feat:" + t["layer"].astype(str) + ":0:" + t["feature"].astype(str)
        grp = t.assign(k=np.where(t["type"] == "feature", feat,
                       np.where(t["type"] == "error", "err:" + t["layer"].astype(str) + ":0",
                                np.where(t["type"] == "token", "tok:0:" + t["token_id"].astype(str),
                                         "logit:0:logit_diff")))).groupby("k")["activation"].sum()
        present = {agg.nodes["key"].iat[i] for i in np.flatnonzero(agg.node_present[:, p])}
        assert present == set(grp.index)
        for k, v in grp.items():
            assert agg.node_activation[agg.index(k), p] == pytest.approx(v, rel=1e-12, abs=1e-12)
        # summed edge mass per prompt is preserved
        assert agg.edge_weight[:, p].sum() == pytest.approx(float(c.graph.adjacency.astype(np.float64).sum()), rel=1e-9)
        assert agg.edge_present[:, p].sum() <= c.graph.n_edges
    assert 0 < agg.filter(0.5).n_nodes <= agg.n_nodes
    assert agg.nodes["presence"].between(1 / 3 - 1e-12, 1).all()
