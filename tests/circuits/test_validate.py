"""Validation: CPR/CMD on hand-computed curves, faithfulness against hand arithmetic and
against the organisms' ``Patcher.circuit_metric``, agreement and stability outputs,
and the bad-input errors."""

import numpy as np
import pytest

import attribution  # noqa: F401  (BLAS before mlx)
from circuits_helpers import small_induction, tiny_llama
from circuits.discover import MaskedModel, exact
from circuits.errors import ValidationError
from circuits.organisms.patching import Component, Patcher, components
from circuits.tasks.base import TaskData
from circuits.validate import (
    MIB_FRACTIONS,
    cmd,
    cpr,
    faithfulness,
    faithfulness_curve,
    jaccard,
    normalised,
    predicted_vs_measured,
    smallest_faithful,
    stability,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_llama(tmp_path_factory, seed=4)


@pytest.fixture(scope="module")
def data(model):
    return small_induction(model, 6)


@pytest.fixture(scope="module")
def mm(model, data):
    return MaskedModel(model, data, "counterfactual")


def test_cpr_cmd_hand_curves():
    x = MIB_FRACTIONS
    assert cpr(x, [1.0] * 10) == pytest.approx(0.999)
    assert cmd(x, [1.0] * 10) == pytest.approx(0.0)
    step = [0.0] * 9 + [1.0]  # nothing until every edge is kept
    assert cpr(x, step) == pytest.approx(0.5 * 0.5)
    assert cmd(x, step) == pytest.approx((0.5 - 0.001) + 0.5 * 0.5)
    over = [2.0] * 10  # |1 - f| counts overshoot too
    assert cmd(x, over) == pytest.approx(0.999)
    assert cpr([0.0, 0.5, 1.0], [0.0, 1.0, 0.0]) == pytest.approx(0.5)


def test_normalised_hand_example_and_zero_metric():
    assert normalised(3.0, 1.0, 5.0) == pytest.approx(0.5)
    assert normalised(1.0, 1.0, 5.0) == 0.0
    with pytest.raises(ValidationError, match="same"):
        normalised(2.0, 2.0, 2.0)


def test_faithfulness_endpoints_and_hand_formula(mm):
    full = faithfulness(mm, mm.ones())
    assert full.faithfulness == pytest.approx(1.0) and full.completeness == pytest.approx(0.0)
    empty = faithfulness(mm, mm.zeros())
    assert empty.faithfulness == pytest.approx(0.0) and empty.completeness == pytest.approx(1.0)
    edges = ["L1H0->logits", "L0H1->L1H0", "embed->L0H1"]
    f = faithfulness(mm, edges)
    mask = mm.graph.edges_to_mask(edges)
    fc, fm, fe = mm.metric(mask), mm.metric(mm.ones()), mm.metric(mm.zeros())
    assert f.faithfulness == pytest.approx((fc - fe) / (fm - fe))
    assert f.completeness == pytest.approx((mm.metric(1 - mask) - fe) / (fm - fe))
    assert f.n_edges == 3 and f.ablation == "counterfactual"
    assert f.to_frame().faithfulness.iloc[0] == f.faithfulness


def test_node_circuit_faithfulness_matches_patcher(model, data, mm):
    keep = [Component.parse(c) for c in ("L1H0", "L1H2", "L0H1")]
    p = Patcher(model, data)
    comps = components(model)
    want = (p.circuit_metric(keep, comps) - p.circuit_metric([], comps)) / (
        p.clean_metric - p.circuit_metric([], comps))
    node_mask = np.array([u == "embed" or u in keep for u in mm.graph.upstream], np.float32)
    assert faithfulness(mm, node_mask).faithfulness == pytest.approx(want, abs=1e-4)


def test_identical_metric_raises(model, data):
    same = TaskData(task="same", clean=data.clean, corrupted=data.clean, answer=data.answer,
                    wrong=data.wrong, reference=data.reference)
    with pytest.raises(ValidationError, match="undefined"):
        faithfulness(MaskedModel(model, same), [])


def test_curve_uses_both_rankings(mm):
    scores = exact(mm, "edge")
    c = faithfulness_curve(mm, scores)
    signed = c.table[c.table.ranking == "signed"]
    absolute = c.table[c.table.ranking == "absolute"]
    assert len(signed) == len(absolute) == 10
    assert signed.faithfulness.iloc[-1] == pytest.approx(1.0)
    assert c.cpr == pytest.approx(cpr(MIB_FRACTIONS, signed.faithfulness))
    assert c.cmd == pytest.approx(cmd(MIB_FRACTIONS, absolute.faithfulness))
    k = round(0.2 * len(scores))
    top = np.zeros(len(scores), np.float32)
    top[np.argsort(-scores, kind="stable")[:k]] = 1
    assert signed[signed.fraction == 0.2].f.iloc[0] == pytest.approx(mm.metric(top))
    assert (c.table.ablation == "counterfactual").all()


def test_threshold_and_fraction_errors(mm):
    scores = exact(mm, "edge")
    for t in (0.0, -0.1, 1.5):
        with pytest.raises(ValidationError, match="threshold"):
            smallest_faithful(mm, scores, t)
    with pytest.raises(ValidationError):
        faithfulness_curve(mm, scores, fractions=(0.5, 0.2))
    with pytest.raises(ValidationError):
        faithfulness_curve(mm, scores, fractions=(0.0, 1.0))
    with pytest.raises(ValidationError):
        faithfulness_curve(mm, scores[:-1])
    k, f = smallest_faithful(mm, scores, 0.8)
    assert f >= 0.8 and 1 <= k <= len(scores)


def test_agreement_measured_is_exact_patching(model, data, mm):
    a = predicted_vs_measured(model, data, method="eap-ig", steps=4)
    means = a.table.groupby("node", sort=False)["measured"].mean().to_numpy()
    assert np.allclose(means, exact(mm, "node"), atol=1e-4)
    assert len(a.per_prompt_r) == len(data) and -1 <= a.pearson <= 1
    assert (a.table.ablation == "counterfactual").all()


def test_stability_and_jaccard(model, data):
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard(set(), set()) == 1.0
    s = stability(model, data, n_boot=2, method="eap", level="node", top_n=3)
    assert len(s.jaccards) == 2 and all(0 <= j <= 1 for j in s.jaccards)
    assert len(s.reference) == 3 and s.ablation == "counterfactual"
    assert list(s.to_frame().jaccard) == list(s.jaccards)
    with pytest.raises(ValidationError):
        stability(model, data, n_boot=0)


def test_greedy_order_is_connected_to_logits(mm):
    from circuits.validate.faithfulness import greedy_order

    scores = np.abs(exact(mm, "edge"))
    order = greedy_order(mm.graph, scores)
    assert sorted(order.tolist()) == list(range(mm.graph.n_edges))
    reached = {"logits"}
    for e in order:
        edge = mm.graph.edges[e]
        assert edge.downstream in reached  # every prefix hangs off the logits
        reached.add(edge.upstream)
    first = mm.graph.edges[order[0]]
    assert first.downstream == "logits"
    assert scores[order[0]] == scores[mm.graph.logit_index].max()


def test_denominator_warning_thresholds():
    """Hand-worked: the spread is compared to 5% of the metric's size and to 1e-3."""
    from circuits.validate.faithfulness import denominator_warning

    assert denominator_warning(4.0, 1.0) is None            # spread 3 of 4
    assert denominator_warning(4.0, 3.9) is not None        # 0.1 < 0.05 * 4 = 0.2
    assert denominator_warning(4.0, 3.7) is None            # 0.3 >= 0.2
    assert denominator_warning(1e-4, 0.0) is not None       # below the 1e-3 floor
    assert "noise" in denominator_warning(2.0, 2.0)
