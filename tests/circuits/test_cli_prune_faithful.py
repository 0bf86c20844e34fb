"""``circuits prune --method faithful``: a real run through files, checked by ``circuits validate``."""

import json

import pandas as pd
import pytest

from circuits.cli import main


def cli(capsys, *argv):
    code = main(["--quiet", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """train -> attribute on the ioi organism, small budgets."""
    d = tmp_path_factory.mktemp("cli_faithful")
    assert main(["--quiet", "train", "--tokens", "8192", "--batch-tokens", "1024", "--width", "64",
                 "--k", "4", "--arch", "topk", "--out", str(d / "tc")]) == 0
    assert main(["--quiet", "attribute", "--dicts", str(d / "tc" / "dictionaries"),
                 "--out", str(d / "graph")]) == 0
    return d


def test_faithful_prune_writes_selection_that_validate_confirms(run_dir, capsys):
    d = run_dir
    dicts = d / "tc" / "dictionaries"
    code, out, err = cli(capsys, "prune", "--graph", d / "graph", "--method", "faithful", "--dicts", dicts,
                         "--band", "0.8", "1.2", "--max-complement", "0.3", "--out", d / "fc")
    assert code == 0, err
    rec = json.loads((d / "fc" / "scores.json").read_text())
    sel = rec["selection"]
    assert rec["method"] == "faithful" and isinstance(sel["met"], bool)
    assert sel["band"] == [0.8, 1.2] and sel["max_complement"] == 0.3
    curve = pd.read_csv(d / "fc" / "faithful_curve.csv")
    assert len(curve) >= 2 and sel["evaluations"] == 2 + 2 * len(curve)
    row = curve[curve["n_kept"] == sel["n_kept"]].iloc[0]
    assert row["faithfulness"] == pytest.approx(sel["faithfulness"])
    if sel["met"]:
        assert 0.8 <= sel["faithfulness"] <= 1.2 and sel["completeness"] <= 0.3
        assert not curve.loc[curve["n_kept"] < sel["n_kept"], "meets"].any()
    else:
        assert not curve["meets"].any() and "no measured candidate" in sel["reason"]
    # an independent measurement of the saved circuit: circuits validate
    code, out, err = cli(capsys, "validate", "--circuit", d / "fc" / "graph", "--dicts", dicts,
                         "--out", d / "val")
    assert code == 0, err
    val = json.loads((d / "val" / "validation.json").read_text())
    assert val["faithfulness"] == pytest.approx(sel["faithfulness"], abs=1e-4)
    assert val["completeness"] == pytest.approx(sel["completeness"], abs=1e-4)
    assert val["n_features"] + val["n_errors"] == sel["n_kept"]


@pytest.mark.parametrize("extra, msg", [
    ((), "pass --dicts"),
    (("--dicts", "{dicts}", "--band", "1.2", "0.9"), "low <= high"),
    (("--dicts", "{dicts}", "--max-evaluations", "3"), "max_evaluations"),
    (("--dicts", "{dicts}", "--max-evaluations", "6"), "patched runs but max_evaluations is 6"),
    (("--dicts", "{dicts}", "--band", "0.9", "nan"), "finite"),
])
def test_bad_faithful_flags_one_line(run_dir, capsys, tmp_path, extra, msg):
    argv = [a.format(dicts=run_dir / "tc" / "dictionaries") for a in extra]
    code, out, err = cli(capsys, "prune", "--graph", run_dir / "graph", "--method", "faithful", *argv,
                         "--out", tmp_path / "out")
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and msg in lines[0], err
    assert not (tmp_path / "out").exists()


def test_graph_without_prompt_source_is_refused(run_dir, capsys, tmp_path):
    from attribution.graph import Graph

    g = Graph.load(run_dir / "graph")
    md = {k: v for k, v in g.metadata.items() if k != "prompt_source"}
    Graph(g.nodes, g.adjacency, g.logit_weights, md, g.dropped_mass).save(tmp_path / "g")
    code, out, err = cli(capsys, "prune", "--graph", tmp_path / "g", "--method", "faithful",
                         "--dicts", run_dir / "tc" / "dictionaries", "--out", tmp_path / "out")
    assert code != 0 and "records no prompt source" in err and len(err.strip().splitlines()) == 1


def test_dicts_with_another_method_is_refused(run_dir, capsys, tmp_path):
    code, out, err = cli(capsys, "prune", "--graph", run_dir / "graph", "--dicts", run_dir / "tc" / "dictionaries",
                         "--out", tmp_path / "out")
    assert code != 0 and "--method faithful" in err and len(err.strip().splitlines()) == 1
