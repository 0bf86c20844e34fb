"""Every CLI subcommand: a real chained run through files, and bad input.

Bad input (missing file, wrong model, bad sites, corrupt artifact) must give one
clear line on stderr, a non-zero exit code, and leave no partial output behind.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from circuits.cli import main


def cli(capsys, *argv):
    code = main(["--quiet", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """train -> attribute -> prune on the ioi organism, small budgets."""
    d = tmp_path_factory.mktemp("cli")
    assert main(["--quiet", "train", "--tokens", "8192", "--batch-tokens", "1024", "--width", "64",
                 "--k", "4", "--arch", "topk", "--out", str(d / "tc")]) == 0
    assert main(["--quiet", "attribute", "--dicts", str(d / "tc" / "dictionaries"),
                 "--out", str(d / "graph")]) == 0
    assert main(["--quiet", "prune", "--graph", str(d / "graph"), "--out", str(d / "circuit")]) == 0
    return d


def _no_partial(parent: Path, name: str):
    assert not (parent / name).exists(), f"partial output {parent / name} left behind"
    assert not [p for p in parent.iterdir() if ".staging-" in p.name], "staging directory left behind"


def test_patching_style_graph_with_feature_edges_prunes(run_dir, capsys):
    from attribution.graph import Graph

    code, _, err = cli(capsys, "attribute", "--dicts", run_dir / "tc" / "dictionaries", "--method",
                       "atp", "--feature-edges", "--out", run_dir / "atp")
    assert code == 0, err
    g = Graph.load(run_dir / "atp")
    feat = np.flatnonzero(np.asarray(g.nodes["type"] == "feature"))
    assert g.adjacency.tocsr()[feat].nnz > 0  # feature rows, not only the metric row
    code, _, err = cli(capsys, "prune", "--graph", run_dir / "atp", "--out", run_dir / "atp_c")
    assert code == 0, err
    code, _, err = cli(capsys, "attribute", "--dicts", run_dir / "tc" / "dictionaries",
                       "--feature-edges", "--out", run_dir / "bad")
    assert code == 1 and "--feature-edges is for --method" in err
    _no_partial(run_dir, "bad")


def test_chain_writes_documented_formats(run_dir, capsys):
    from attribution.graph import Graph, validate_neuronpedia

    g = Graph.load(run_dir / "graph")
    validate_neuronpedia(json.loads((run_dir / "graph" / "neuronpedia.json").read_text()))
    c = Graph.load(run_dir / "circuit" / "graph")
    assert len(c.nodes) <= len(g.nodes)
    scores = json.loads((run_dir / "circuit" / "scores.json").read_text())["scores"]
    assert 0 <= scores["pruned"]["replacement"] <= 1
    code, out, err = cli(capsys, "render", "--graph", run_dir / "circuit" / "graph",
                         "--out", run_dir / "c.svg", run_dir / "c.dot")
    assert code == 0 and (run_dir / "c.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    code, out, err = cli(capsys, "validate", "--circuit", run_dir / "circuit" / "graph",
                         "--dicts", run_dir / "tc" / "dictionaries", "--out", run_dir / "val")
    assert code == 0, err
    v = json.loads((run_dir / "val" / "validation.json").read_text())
    assert v["level"] == "feature" and v["ablation"] == "counterfactual"
    assert v["faithfulness"] == pytest.approx(
        (v["f_circuit"] - v["f_empty"]) / (v["f_full"] - v["f_empty"]))
    code, out, err = cli(capsys, "evaluate", "--dicts", run_dir / "tc" / "dictionaries",
                         "--out", run_dir / "eval")
    assert code == 0, err
    import pandas as pd

    df = pd.read_csv(run_dir / "eval" / "dictionary_metrics.csv")
    assert len(df) == 4 and {"l0", "fvu", "ce_recovered"} <= set(df.columns)
    code, out, err = cli(capsys, "features", "--dicts", run_dir / "tc" / "dictionaries", "--docs", "200",
                         "--max-features", "8", "--out", run_dir / "feat")
    assert code == 0, err
    assert (run_dir / "feat" / "dashboards" / "index.html").exists()
    (run_dir / "circuit.svg").write_text((run_dir / "c.svg").read_text())
    code, out, err = cli(capsys, "report", "--run", run_dir)
    assert code == 0, err and (run_dir / "report.html").exists()


def test_config_file_fills_options(run_dir, capsys, tmp_path):
    cfg = tmp_path / "prune.toml"
    cfg.write_text('method = "top"\ntop = 5\n')
    code, out, err = cli(capsys, "prune", "--graph", run_dir / "graph", "--config", cfg,
                         "--out", tmp_path / "c")
    assert code == 0, err
    rec = json.loads((tmp_path / "c" / "scores.json").read_text())
    assert rec["method"] == "top" and rec["edges"] <= 5
    bad = tmp_path / "bad.json"
    bad.write_text('{"nonsense": 1}')
    code, out, err = cli(capsys, "prune", "--graph", run_dir / "graph", "--config", bad,
                         "--out", tmp_path / "c2")
    assert code == 1 and "nonsense" in err and len(err.strip().splitlines()) == 1


BAD = {
    "missing file": [("prune", "--graph", "{t}/nope"), ("render", "--graph", "{t}/nope"),
                     ("evaluate", "--dicts", "{t}/nope"), ("attribute", "--dicts", "{t}/nope"),
                     ("validate", "--circuit", "{t}/nope"), ("report", "--run", "{t}/nope"),
                     ("features", "--dicts", "{t}/nope")],
    "wrong model": [("train", "--model", "{t}/notamodel"), ("attribute", "--model", "{t}/notamodel"),
                    ("evaluate", "--model", "{t}/notamodel")],
    "bad sites": [("train", "--sites", "L9.mlp_in"), ("train", "--sites", "L1.nonsense"),
                  ("features", "--site", "L0.bogus")],
    "unknown name": [("organism", "card", "nosuch"), ("organism", "train", "nosuch"),
                     ("bench", "--organisms", "nosuch")],
}


@pytest.mark.parametrize("case", [(k, i) for k, v in BAD.items() for i in range(len(v))],
                         ids=lambda c: f"{c[0]}-{c[1]}")
def test_bad_input_one_line_nonzero_no_partial_output(case, tmp_path, capsys):
    kind, i = case
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "readme.txt").write_text("not a model")
    argv = [a.format(t=tmp_path) for a in BAD[kind][i]]
    if argv[0] in ("features",) and "--dicts" not in argv:
        argv += ["--dicts", str(tmp_path / "nope")]
    out_dir = tmp_path / "out"
    if argv[0] not in ("organism", "report", "render"):
        argv += ["--out", str(out_dir)]
    code, out, err = cli(capsys, *argv)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"circuits {argv[0]}: error:"), err
    assert "Traceback" not in err
    _no_partial(tmp_path, "out")


def test_corrupt_artifacts(run_dir, tmp_path, capsys):
    import shutil

    g = tmp_path / "graph"
    shutil.copytree(run_dir / "graph", g)
    (g / "graph.json").write_text("{ not json")
    code, out, err = cli(capsys, "prune", "--graph", g, "--out", tmp_path / "out")
    assert code == 1 and len(err.strip().splitlines()) == 1
    d = tmp_path / "dicts"
    shutil.copytree(run_dir / "tc" / "dictionaries", d)
    st = next(d.rglob("*.safetensors"))
    st.write_bytes(st.read_bytes()[:100])
    code, out, err = cli(capsys, "attribute", "--dicts", d, "--out", tmp_path / "out")
    assert code == 1 and len(err.strip().splitlines()) == 1
    _no_partial(tmp_path, "out")


def test_jump_aware_graph_matches_library(run_dir, capsys):
    """`attribute --method jump-aware` equals build_graph(method="jump-aware") on the same row,
    and every node it corrected carries the exact-patching score."""
    from attribution import GraphConfig, build_graph, load_model, logit_diff
    from attribution.graph import Graph
    from circuits.cli.attribute import task_example
    from sae import load_dictionaries

    code, _, err = cli(capsys, "attribute", "--dicts", run_dir / "tc" / "dictionaries", "--method",
                       "jump-aware", "--out", run_dir / "ja")
    assert code == 0, err
    g = Graph.load(run_dir / "ja")
    model = load_model(g.metadata["model"]["path"])
    dicts = load_dictionaries(run_dir / "tc" / "dictionaries")
    clean, cf, ans, wrong = task_example(model, "ioi", 0)
    cfg = GraphConfig(ablation="counterfactual", batch_size=64, ig_steps=16)  # the CLI defaults
    kw = dict(targets=logit_diff(model, ans, wrong), config=cfg, counterfactual=cf)
    ref = build_graph(model, dicts, clean, method="jump-aware", **kw).edges().set_index("source")["weight"]
    patch = build_graph(model, dicts, clean, method="patching", **kw).edges().set_index("source")["weight"]
    got = g.edges().set_index("source")["weight"]
    assert set(got.index) == set(ref.index)
    np.testing.assert_allclose(got[ref.index].to_numpy(), ref.to_numpy(), rtol=1e-5, atol=1e-6)
    corrected = g.metadata["corrected"]
    assert corrected, "nothing was patched"
    ids = [str(c) for c in corrected]
    np.testing.assert_allclose(got[ids].to_numpy(), patch.reindex(ids).fillna(0).to_numpy(),
                               rtol=1e-4, atol=1e-5)
