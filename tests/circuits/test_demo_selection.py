"""The demo's headline circuit is chosen by measured faithfulness, and what it reports
(validation.json, the figure's title, the report's table) is what patching measures when
the saved circuits are re-read and re-measured here."""

import json

import attribution  # noqa: F401  (BLAS preload before mlx)

import pytest

from attribution import load_model
from attribution.graph import Graph
from attribution.replacement import ReplacementModel
from circuits import tasks
from circuits.organisms import SHIPPED
from circuits.pipeline.demo import DemoConfig, run_demo
from circuits.pipeline.dictionaries import DictionarySpec
from circuits.pipeline.feature_faithfulness import feature_faithfulness
from circuits.prune import prune
from sae import load_dictionaries

pytestmark = pytest.mark.slow  # trains small transcoders and runs the whole demo (about 20 s of CPU)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(dictionaries=DictionarySpec(kind="transcoder", arch="topk", width=64, k=4, tokens=8192,
                                                 batch_tokens=1024),
                     agreement_prompts=2, dashboards=False)
    res = run_demo(out, None, cfg)
    return out, res, cfg


def _measure(out, circuit_dir):
    model = load_model(SHIPPED / "ioi")
    dicts = load_dictionaries(out / "dictionaries")
    data = tasks.get("ioi").generate(1, 0, model.tokenizer)
    clean, cf = [int(t) for t in data.clean[0]], [int(t) for t in data.corrupted[0]]
    good, bad = int(data.answer[0]), int(data.wrong[0])
    rm = ReplacementModel(model, list(dicts.values()) if isinstance(dicts, dict) else dicts)
    return feature_faithfulness(rm, clean, Graph.load(circuit_dir), lambda last: last[good] - last[bad],
                                "counterfactual", cf)


def test_headline_circuit_is_the_faithful_selection(demo):
    out, res, cfg = demo
    f = json.loads((out / "validation.json").read_text())["figures"]
    assert f["selection"] == "faithful" and isinstance(f["selection_met"], bool)
    head = _measure(out, out / "circuit")
    assert f["faithfulness"] == pytest.approx(head.faithfulness, abs=1e-4)
    assert f["completeness_patching"] == pytest.approx(head.completeness, abs=1e-4)
    if f["selection_met"]:
        assert cfg.band[0] <= head.faithfulness <= cfg.band[1] and head.completeness <= cfg.max_complement
    # the influence-pruned circuit is kept beside it, and is influence pruning of the saved graph
    infl = _measure(out, out / "circuit_influence")
    assert f["influence_faithfulness"] == pytest.approx(infl.faithfulness, abs=1e-4)
    again = prune(Graph.load(out / "graph"), cfg.node_threshold, cfg.edge_threshold)
    assert Graph.load(out / "circuit_influence").n_nodes == again.graph.n_nodes
    # the faithful curve holds the headline circuit as a measured point
    import pandas as pd

    curve = pd.read_csv(out / "faithful_curve.csv")
    assert (curve["faithfulness"] - head.faithfulness).abs().min() < 1e-4


def test_figure_and_report_state_the_measured_numbers(demo):
    out, res, _ = demo
    f = res.figures
    dot = (out / "circuit.dot").read_text()
    assert f"faithfulness {f['faithfulness']:.3f}" in dot and f"complement {f['completeness_patching']:.3f}" in dot
    html = (out / "report.html").read_text()
    assert "Circuit selection" in html and "faithful selection" in html
    assert -1 <= f["jump_aware_vs_patching_r"] <= 1


def test_bad_selection_is_named():
    from circuits.errors import ValidationError

    with pytest.raises(ValidationError, match="selection"):
        DemoConfig(selection="best")
