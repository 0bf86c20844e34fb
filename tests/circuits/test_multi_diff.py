"""Diffs of graphs and aggregates, against sets and deltas worked by hand."""

import attribution  # noqa: F401  (BLAS preload before mlx)

import numpy as np
import pytest

from circuits.multi import AggregateConfig, DiffConfig, MultiError, aggregate, diff
from circuits_helpers import hand_graph


mk = hand_graph


A_ACTS = {"tok:0:5": 1.0, "feat:0:1:3": 2.0, "feat:0:1:4": 1.0, "feat:1:1:7": 3.0, "logit:1:d": 1.0}
A_EDGES = {("tok:0:5", "feat:0:1:3"): 1.0, ("tok:0:5", "feat:0:1:4"): 2.0, ("feat:0:1:3", "feat:1:1:7"): 0.5,
           ("feat:1:1:7", "logit:1:d"): 4.0, ("feat:0:1:4", "logit:1:d"): 1.0}


def graph_a():
    return mk(2, A_ACTS, A_EDGES)


def graph_b():
    # feat:0:1:4 gone (its two edges with it), feat:0:1:9 new, one shared edge changed, one shared same
    acts = {"tok:0:5": 1.0, "feat:0:1:3": 2.5, "feat:0:1:9": 1.0, "feat:1:1:7": 3.0, "logit:1:d": 1.0}
    edges = {("tok:0:5", "feat:0:1:3"): 1.0, ("feat:0:1:3", "feat:1:1:7"): 1.5, ("feat:1:1:7", "logit:1:d"): 4.0,
             ("feat:0:1:9", "logit:1:d"): -2.0}
    return mk(2, acts, edges)


def test_diff_with_itself_is_empty():
    d = diff(graph_a(), graph_a())
    assert d.is_empty
    assert d.nodes_only_a.empty and d.nodes_only_b.empty and d.edges_only_a.empty and d.edges_only_b.empty
    s = d.summary
    assert (s.node_jaccard, s.edge_jaccard, s.max_abs_weight_delta) == (1.0, 1.0, 0.0)
    assert s.weight_corr == pytest.approx(1.0)
    agg = aggregate([graph_a(), graph_b()])
    assert diff(agg, agg).is_empty


def test_diff_by_hand():
    d = diff(graph_a(), graph_b())
    assert not d.is_empty
    assert list(d.nodes_only_a["key"]) == ["feat:0:1:4"]
    assert list(d.nodes_only_b["key"]) == ["feat:0:1:9"]
    assert set(zip(d.edges_only_a["source"], d.edges_only_a["target"])) == {
        ("tok:0:5", "feat:0:1:4"), ("feat:0:1:4", "logit:1:d")}
    assert set(zip(d.edges_only_b["source"], d.edges_only_b["target"])) == {("feat:0:1:9", "logit:1:d")}
    s = d.summary
    assert (s.n_nodes_a, s.n_nodes_b, s.n_nodes_shared) == (5, 5, 4)
    assert s.node_jaccard == 4 / 6
    assert (s.n_edges_a, s.n_edges_b, s.n_edges_shared) == (5, 4, 3)
    assert s.edge_jaccard == 3 / 6
    assert s.max_abs_weight_delta == 1.0
    # shared edge weights: A (1, 0.5, 4), B (1, 1.5, 4)
    assert s.weight_corr == pytest.approx(np.corrcoef([1, 0.5, 4], [1, 1.5, 4])[0, 1])
    ch = d.changed()
    assert list(zip(ch["source"], ch["target"], ch["weight_delta"])) == [("feat:0:1:3", "feat:1:1:7", 1.0)]
    n = d.nodes.set_index("key")
    assert n.loc["feat:0:1:3", "activation_delta"] == 0.5
    assert np.isnan(n.loc["feat:0:1:4", "activation_b"])
    assert diff(graph_a(), graph_b(), DiffConfig(atol=1.0)).changed().empty


def test_graph_against_aggregate_and_errors():
    agg = aggregate([graph_a(), graph_a()])
    d = diff(graph_a(), agg)  # the graph is aggregated alone with the aggregate's config
    assert d.is_empty
    with pytest.raises(MultiError, match="position modes"):
        diff(agg, aggregate([graph_a()], AggregateConfig(positions="from_end")))
    with pytest.raises(MultiError, match="side B"):
        diff(graph_a(), {"nodes": []})
    with pytest.raises(MultiError, match="atol"):
        DiffConfig(atol=-1)


def test_clean_vs_counterfactual_on_ioi():
    from attribution import GraphConfig, build_graph, load_model, logit_diff
    from attribution.testing_dicts import random_transcoders
    from circuits import organisms, tasks

    model = load_model(organisms.path("ioi"))
    dicts = random_transcoders(model, width=32, seed=0, bias=-0.4)
    data = tasks.get("ioi").generate(1, seed=0, tokenizer=model.tokenizer)
    t = logit_diff(model, int(data.answer[0]), int(data.wrong[0]))
    clean = build_graph(model, dicts, [int(x) for x in data.clean[0]], targets=t, config=GraphConfig(batch_size=64))
    cf = build_graph(model, dicts, [int(x) for x in data.corrupted[0]], targets=t, config=GraphConfig(batch_size=64))
    d = diff(clean, cf)
    s = d.summary
    # by sets: the Jaccard index from the graphs' own key sets
    ka, kb = set(clean.nodes["key"]), set(cf.nodes["key"])
    assert s.node_jaccard == pytest.approx(len(ka & kb) / len(ka | kb))
    assert 0 < s.node_jaccard < 1 and not d.is_empty
    ea = set(zip(*[clean.edges()[c] for c in ("source", "target")]))
    eb = set(zip(*[cf.edges()[c] for c in ("source", "target")]))
    assert s.edge_jaccard == pytest.approx(len(ea & eb) / len(ea | eb))
    assert -1 <= s.weight_corr <= 1
