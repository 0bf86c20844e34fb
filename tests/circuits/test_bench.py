"""Benchmark: AUC and precision@k against hand-computed values, one benchmark row on a
tiny model against a ground truth built with the organisms' ``Patcher``, file output,
and (slow) the full benchmark on the shipped organisms."""

import numpy as np
import pandas as pd
import pytest

import attribution  # noqa: F401  (BLAS before mlx)
from attribution import load_model
from attribution.tiny import make_tiny_model
from circuits import tasks
from circuits.bench import (
    BenchConfig,
    BenchmarkResult,
    precision_recall_at_k,
    roc_auc,
    run_benchmark,
    score_against,
    to_markdown,
    write_benchmark,
)
from circuits.discover import MaskedModel, exact
from circuits.errors import BenchmarkError
from circuits.organisms import TaskGroundTruth
from circuits.organisms.patching import Patcher, components


def test_roc_auc_hand_values():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    # pairs (pos, neg): (0.5, 0.5) tie -> 1/2, (0.5, 0.1) -> 1, (0.7, 0.5) -> 1, (0.7, 0.1) -> 1
    assert roc_auc([0.5, 0.7, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(3.5 / 4)
    with pytest.raises(BenchmarkError):
        roc_auc([1.0, 2.0], [1, 1])


def test_precision_recall_at_k():
    assert precision_recall_at_k([5, 4, 3, 2, 1], [1, 0, 1, 0, 0]) == (0.5, 0.5)
    assert precision_recall_at_k([5, 4, 3, 2, 1], [1, 0, 1, 0, 0], k=3) == (2 / 3, 1.0)
    with pytest.raises(BenchmarkError):
        precision_recall_at_k([1, 2], [1, 0], k=5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    m = load_model(make_tiny_model("llama", tmp_path_factory.mktemp("b"), seed=5))
    d = tasks.get("induction", segment_len=4, repeat_len=2).generate(6, 0, m.tokenizer)
    return m, d


def _gt(model, data, circuit):
    p = Patcher(model, data)
    nodes = {str(c): p.node_metric(c) for c in components(model)}
    empty = p.circuit_metric([], components(model))
    return TaskGroundTruth("induction", "logit_diff", "counterfactual", p.clean_metric,
                           p.corrupted_metric, empty, nodes, {}, circuit, 1.0, "hand", 0), nodes


def test_score_against_hand_ground_truth(tiny):
    m, d = tiny
    probe, nodes = _gt(m, d, [])
    effects = {k: abs(probe.clean_metric - v) for k, v in nodes.items()}
    top3 = sorted(effects, key=effects.get, reverse=True)[:3]
    gt, _ = _gt(m, d, top3)
    mm = MaskedModel(m, d)
    ex = exact(mm, "node")
    row = score_against(mm, gt, "exact", "counterfactual", BenchConfig(), ex)
    assert row["node_auc"] == 1.0 and row["node_p_at_gt"] == 1.0
    assert row["node_r_exact"] == pytest.approx(1.0)
    assert row["gt_nodes"] == 3 and row["gt_edges"] == int(mm.graph.induced_edges(top3).sum())
    row_ig = score_against(mm, gt, "eap-ig", "counterfactual", BenchConfig(ig_steps=4), ex)
    assert 0 <= row_ig["edge_auc"] <= 1 and np.isfinite(row_ig["cpr"])


def test_write_benchmark_files(tmp_path):
    res = BenchmarkResult(pd.DataFrame({"organism": ["x"], "node_auc": [0.91234]}), ("y: none",))
    csv, md = write_benchmark(res, tmp_path / "out")
    assert pd.read_csv(csv).node_auc.iloc[0] == pytest.approx(0.91234)
    text = md.read_text()
    assert "| organism | node_auc |" in text and "0.912" in text and "skipped: y" in text
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left
    assert to_markdown(res.table).count("\n") == 3


def test_bad_benchmark_requests():
    with pytest.raises(BenchmarkError):
        run_benchmark(organisms=["nope"])
    with pytest.raises(BenchmarkError):
        run_benchmark(organisms=["induction"], methods=["magic"])
    with pytest.raises(BenchmarkError):
        BenchConfig(ig_steps=0)


@pytest.mark.slow
def test_benchmark_on_shipped_organisms(tmp_path):
    """Induction organism with every method; IOI organism/task with the gradient methods
    (exact and ACDC there take ~10 min on 2 CPU cores; see circuits/bench/results)."""
    ind = run_benchmark(organisms=["induction"], config=BenchConfig(recompute_stale=True))
    ioi = run_benchmark(organisms=["ioi"], tasks=["ioi"], methods=("eap", "eap-ig"))
    t = pd.concat([ind.table, ioi.table], ignore_index=True)
    assert len(t) == 6 and not t.gt_stale.any()
    write_benchmark(BenchmarkResult(t, ind.skipped + ioi.skipped), tmp_path)
    assert (t[t.method == "exact"].node_r_exact > 0.999).all()
    ig = t[t.method == "eap-ig"]
    assert (ig.node_auc >= 0.9).all() and (ig.node_r_exact >= 0.95).all()
    assert (t[t.method == "acdc"].node_auc >= 0.95).all()
