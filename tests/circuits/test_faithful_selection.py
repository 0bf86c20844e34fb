"""Faithfulness-selected feature circuits, checked against independent ``feature_faithfulness`` calls."""

import attribution  # noqa: F401  (BLAS preload before mlx)

import numpy as np
import pytest

from attribution import GraphConfig, build_graph, load_model, logit_diff
from attribution.replacement import ReplacementModel
from attribution.testing_dicts import random_transcoders
from attribution.tiny import make_tiny_model
from circuits.pipeline.faithful_selection import (
    FaithfulSelectionConfig, FaithfulSelectionError, default_sizes, select_faithful,
)
from circuits.pipeline.feature_faithfulness import feature_faithfulness
from circuits.prune import influence, prune
from circuits.validate.faithfulness import area_under

A, B = 5, 9


def metric(last):
    return last[A] - last[B]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny llama + random transcoders; prompt seed 0, dictionary seed 1: influence pruning
    overshoots there (faithfulness about 5), the hand-built case of the issue."""
    model = load_model(make_tiny_model("llama", tmp_path_factory.mktemp("fs") / "m", seed=3))
    dicts = random_transcoders(model, width=48, seed=1, bias=-0.3)
    rm = ReplacementModel(model, dicts)
    rng = np.random.default_rng(0)
    toks = [2] + [int(t) for t in rng.integers(4, model.vocab_size, size=7)]
    cf = [2] + [int(t) for t in rng.integers(4, model.vocab_size, size=7)]
    g = build_graph(model, dicts, toks, targets=logit_diff(model, A, B), config=GraphConfig())
    return rm, toks, cf, g


def _by_hand(g, k):
    """Top-k feature/error nodes by influence (stable), plus tokens and logits: the induced subgraph."""
    infl = influence(g)
    fe = np.flatnonzero(((g.nodes["type"] == "feature") | (g.nodes["type"] == "error")).to_numpy())
    top = fe[np.argsort(-infl[fe], kind="stable")[:k]]
    mask = ((g.nodes["type"] == "token") | (g.nodes["type"] == "logit")).to_numpy().copy()
    mask[top] = True
    return g.subgraph(mask), mask


def _meets(f, c, cfg):
    return cfg.band[0] <= f <= cfg.band[1] and (abs(c) if cfg.abs_complement else c) <= cfg.max_complement


def test_each_curve_point_is_feature_faithfulness_of_that_node_set(setup):
    rm, toks, cf, g = setup
    cfg = FaithfulSelectionConfig(sizes=(0, 3, 17, 60), refine=False, batch_size=3)
    sel = select_faithful(rm, toks, g, metric, cfg, counterfactual=cf)
    assert list(sel.curve["n_kept"]) == [0, 3, 17, 60]
    for row in sel.curve.itertuples():
        sub, _ = _by_hand(g, row.n_kept)
        ref = feature_faithfulness(rm, toks, sub, metric, "counterfactual", cf)
        assert row.faithfulness == pytest.approx(ref.faithfulness, abs=1e-4)
        assert row.completeness == pytest.approx(ref.completeness, abs=1e-4)
        assert row.n_tokens == ref.n_tokens
        assert ref.n_features + ref.n_errors == row.n_kept
    assert sel.f_full == pytest.approx(ref.f_full, abs=1e-4)
    assert sel.f_empty == pytest.approx(ref.f_empty, abs=1e-4)
    n = sel.n_candidates
    assert list(sel.curve["fraction"]) == pytest.approx([0, 3 / n, 17 / n, 60 / n])
    assert sel.cpr == pytest.approx(area_under(sel.curve["fraction"], sel.curve["faithfulness"]))
    assert sel.cmd == pytest.approx(area_under(sel.curve["fraction"], (1 - sel.curve["faithfulness"]).abs()))
    assert sel.evaluations == 2 + 2 * 4 and sel.forwards == 1 + 3  # 2 rows, then 8 rows in batches of 3


def test_zero_ablation_points_match_too(setup):
    rm, toks, cf, g = setup
    sel = select_faithful(rm, toks, g, metric, FaithfulSelectionConfig(sizes=(5, 40), refine=False,
                                                                      ablation="zero"))
    for row in sel.curve.itertuples():
        ref = feature_faithfulness(rm, toks, _by_hand(g, row.n_kept)[0], metric, "zero")
        assert row.faithfulness == pytest.approx(ref.faithfulness, abs=1e-4)
        assert row.completeness == pytest.approx(ref.completeness, abs=1e-4)


@pytest.mark.parametrize("cfg", [FaithfulSelectionConfig(),
                                 FaithfulSelectionConfig(band=(0.95, 1.05), max_complement=0.05, abs_complement=True)],
                         ids=["default", "tight-abs"])
def test_selection_meets_target_and_is_smallest_measured(setup, cfg):
    rm, toks, cf, g = setup
    sel = select_faithful(rm, toks, g, metric, cfg, counterfactual=cf)
    assert sel.met and "smallest measured candidate" in sel.reason
    # the circuit itself, measured independently, meets the target
    ref = feature_faithfulness(rm, toks, sel.circuit.graph, metric, "counterfactual", cf)
    assert ref.faithfulness == pytest.approx(sel.faithfulness, abs=1e-4)
    assert _meets(ref.faithfulness, ref.completeness, cfg)
    assert ref.n_features + ref.n_errors == sel.n_kept
    # no smaller measured candidate meets it; the meets column is right
    c = sel.curve
    assert list(c["meets"]) == [_meets(f, x, cfg) for f, x in zip(c["faithfulness"], c["completeness"])]
    assert not c.loc[c["n_kept"] < sel.n_kept, "meets"].any()
    # bisection went down to the neighbour: k - 1 was measured and fails
    if sel.n_kept > c["n_kept"].min() and not sel.budget_exhausted:
        assert not c.loc[c["n_kept"] == sel.n_kept - 1, "meets"].iloc[0]
    assert sel.evaluations <= cfg.max_evaluations
    # the circuit graph is the induced subgraph on the selected nodes, as a PruneResult
    sub, mask = _by_hand(g, sel.n_kept)
    assert np.array_equal(sel.circuit.node_mask, mask)
    assert sel.circuit.graph.adjacency.nnz == sub.adjacency.nnz
    assert sel.circuit.method == "faithful" and sel.circuit.params["met"] is True
    assert len(sel.circuit.edge_scores) == sub.adjacency.nnz


def test_overshooting_influence_circuit_is_replaced_by_one_in_band(setup):
    rm, toks, cf, g = setup
    pruned = feature_faithfulness(rm, toks, prune(g, 0.8, 0.98).graph, metric, "counterfactual", cf)
    assert pruned.faithfulness > 1.1  # the case: influence alone overshoots
    sel = select_faithful(rm, toks, g, metric, counterfactual=cf)
    assert sel.met
    assert 0.9 <= sel.faithfulness <= 1.1 and sel.completeness <= 0.2


def test_unreachable_band_reports_met_false_and_the_closest(setup):
    rm, toks, cf, g = setup
    cfg = FaithfulSelectionConfig(band=(50.0, 60.0), sizes=(1, 10, 100), refine=False)
    sel = select_faithful(rm, toks, g, metric, cfg, counterfactual=cf)
    assert not sel.met and sel.circuit.params["met"] is False
    assert "no measured candidate" in sel.reason
    c = sel.curve
    viol = (50.0 - c["faithfulness"]).clip(lower=0) + (c["completeness"] - 0.2).clip(lower=0)
    assert sel.n_kept == int(c["n_kept"][viol.idxmin()])


def test_batching_does_not_change_values(setup):
    rm, toks, cf, g = setup
    one = select_faithful(rm, toks, g, metric, FaithfulSelectionConfig(batch_size=1), counterfactual=cf)
    many = select_faithful(rm, toks, g, metric, FaithfulSelectionConfig(batch_size=16), counterfactual=cf)
    assert np.allclose(one.curve["faithfulness"], many.curve["faithfulness"], atol=1e-4)
    assert one.n_kept == many.n_kept and many.forwards < one.forwards


def test_default_grid():
    assert default_sizes(100, 5) == (1, 3, 10, 32, 100)
    assert default_sizes(1, 5) == (1,) and default_sizes(0, 5) == (0,)


@pytest.mark.parametrize("kwargs, msg", [
    ({"band": (1.1, 0.9)}, "low <= high"),
    ({"band": ("a", 1)}, "two numbers"),
    ({"band": (0.9, float("inf"))}, "finite"),
    ({"max_complement": float("nan")}, "max_complement"),
    ({"sizes": ()}, "sizes"),
    ({"sizes": (3, -1)}, "sizes"),
    ({"sizes": (2.5,)}, "sizes"),
    ({"grid_points": 1}, "grid_points"),
    ({"ablation": "mean"}, "ablation"),
    ({"inactive": "dead"}, "inactive"),
    ({"abs_complement": "yes"}, "abs_complement"),
    ({"max_evaluations": 3}, "max_evaluations"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_config_values_raise_one_line(kwargs, msg):
    with pytest.raises(FaithfulSelectionError, match=msg) as e:
        FaithfulSelectionConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_bad_runtime_arguments_raise_one_line(setup):
    rm, toks, cf, g = setup
    need = 2 + 2 * len(default_sizes(int(g.type_mask("feature").sum() + g.type_mask("error").sum()), 24))
    with pytest.raises(FaithfulSelectionError, match=f"need {need} patched runs but max_evaluations is 10"):
        select_faithful(rm, toks, g, metric, FaithfulSelectionConfig(max_evaluations=10), counterfactual=cf)
    with pytest.raises(FaithfulSelectionError, match="needs the corrupted prompt"):
        select_faithful(rm, toks, g, metric, FaithfulSelectionConfig())
    with pytest.raises(FaithfulSelectionError, match="FaithfulSelectionConfig"):
        select_faithful(rm, toks, g, metric, {"band": (0.9, 1.1)}, counterfactual=cf)


@pytest.mark.slow
def test_demo_ioi_circuit_selected_inside_the_band():
    """The demo's setting: shipped ioi organism, demo transcoders, task example 0."""
    from circuits import tasks
    from circuits.organisms import SHIPPED
    from circuits.pipeline.demo import DemoConfig
    from circuits.pipeline.dictionaries import train_dictionaries

    model = load_model(SHIPPED / "ioi")
    dicts = train_dictionaries(model, DemoConfig().dictionaries).dictionaries
    data = tasks.get("ioi").generate(1, 0, model.tokenizer)
    clean, cf = [int(t) for t in data.clean[0]], [int(t) for t in data.corrupted[0]]
    good, bad = int(data.answer[0]), int(data.wrong[0])
    g = build_graph(model, dicts, clean, targets=logit_diff(model, good, bad), config=GraphConfig(batch_size=64))
    rm = ReplacementModel(model, dicts)

    def m(last):
        return last[good] - last[bad]

    pruned = feature_faithfulness(rm, clean, prune(g, 0.8, 0.98).graph, m, "counterfactual", cf)
    assert pruned.faithfulness > 1.1
    sel = select_faithful(rm, clean, g, m, counterfactual=cf)
    ref = feature_faithfulness(rm, clean, sel.circuit.graph, m, "counterfactual", cf)
    assert ref.faithfulness == pytest.approx(sel.faithfulness, abs=1e-4)
    if sel.met:
        assert 0.9 <= ref.faithfulness <= 1.1 and ref.completeness <= 0.2
    else:
        assert not sel.curve["meets"].any() and "no measured candidate" in sel.reason
