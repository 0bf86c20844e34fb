"""``circuits report --run DIR``: finds artifacts wherever the quick-start commands and the
demo wrote them, fills every section with the right numbers, and says what is missing.

Run directories are built by hand (real graphs saved with ``Graph.save``, the real
``circuits prune``, manifests written with ``manifest_record``), plus one chained run of
the real commands at tiny budgets.
"""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from circuits.cli import main
from circuits.pipeline.manifest import manifest_record, write_manifest

HAS_DOT = shutil.which("dot") is not None


def cli(capsys, *argv):
    code = main(["--quiet", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def report_text(capsys, *argv):
    """(exit code, stdout, stderr) of ``circuits report ARGV`` without --quiet (stdout is the summary)."""
    code = main(["report", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def report_json(capsys, *argv) -> dict:
    code = main(["--json", "report", *map(str, argv)])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def statuses(rec: dict) -> dict:
    return {s["title"]: s["status"] for s in rec["sections"]}


def text_of(html: str) -> str:
    """The page's visible text (figures and markup removed), whitespace collapsed."""
    t = re.sub(r"<svg.*?</svg>", " ", html, flags=re.S)
    t = re.sub(r"<(style|script)>.*?</\1>", " ", t, flags=re.S)
    t = re.sub(r"<[^>]+>", " ", t)
    return " ".join(t.replace("&gt;", ">").replace("&lt;", "<").replace("&#x27;", "'").split())


def toy_graph(n_layers: int = 2):
    """Tokens -> features -> error/logit, a few edges: a real Graph that prunes."""
    from attribution.graph import ErrorNode, FeatureNode, Graph, LogitNode, TokenNode

    keys = [TokenNode(0, 11), TokenNode(1, 12), TokenNode(2, 13), FeatureNode(0, 1, 5), FeatureNode(0, 2, 9),
            FeatureNode(1, 2, 3), ErrorNode(0, 2), ErrorNode(1, 2), LogitNode(2, -1, "logit_diff")]
    idx = {k: i for i, k in enumerate(keys)}
    a = sp.lil_matrix((len(keys), len(keys)))
    for s, t, w in [(keys[0], keys[3], 1.0), (keys[1], keys[3], 0.5), (keys[2], keys[4], 2.0),
                    (keys[3], keys[5], 1.5), (keys[4], keys[5], -0.7), (keys[6], keys[5], 0.2),
                    (keys[5], keys[8], 2.5), (keys[7], keys[8], 0.3), (keys[2], keys[8], 0.1)]:
        a[idx[t], idx[s]] = w
    md = {"n_layers": n_layers, "prompt": "When Mary and", "tokens": ["When", " Mary", " and"],
          "model": "toy", "method": "exact", "ablation": "zero"}
    return Graph.from_keys(keys, a.tocsr(), np.ones(len(keys)), [1.0], md,
                           token=["When", " Mary", " and"] + [""] * 5 + [" John"])


def manifest(directory: Path, command: str, argv: list, inputs: dict | None = None) -> None:
    """A manifest like the one ``staged`` writes: every file of the directory is an artifact."""
    arts = {p.name: p.name + ("/" if p.is_dir() else "") for p in sorted(directory.iterdir())
            if p.name != "run.json"}
    write_manifest(directory, manifest_record(command, ["--quiet", command, *map(str, argv)],
                                              inputs or {}, arts))


def write_csv(path: Path, df: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def write_json(path: Path, rec: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=2, sort_keys=True))
    return path


SVG = ('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="20" height="20">'
       '<rect id="{id}" width="10" height="10"/></svg>')

FEATURE_FAITH = 0.612345
COMPONENT_FAITH = 0.876543
BENCH_AUC = 0.931234


def eval_dir(d: Path) -> Path:
    write_csv(d / "dictionary_metrics.csv", pd.DataFrame({
        "name": ["L0.mlp_in", "L1.mlp_in"], "arch": ["topk", "topk"], "l0": [11.5, 12.25],
        "fvu": [0.123456, 0.2345], "ce_recovered": [0.9471, 0.88],
        "log10_density_hist": ["[0, 1, 2]", "[3, 4, 5]"]}))
    manifest(d, "evaluate", ["--dicts", "out/tc/dictionaries", "--out", str(d)])
    return d


def feature_val_dir(d: Path, circuit: Path, graph: Path) -> Path:
    write_json(d / "validation.json", {"level": "feature", "faithfulness": FEATURE_FAITH, "completeness": 0.25,
                                       "f_full": 2.0, "f_circuit": 1.5, "f_empty": 0.3, "f_complement": 0.7,
                                       "n_features": 3, "n_errors": 2, "n_tokens": 3, "ablation": "counterfactual"})
    write_csv(d / "feature_faithfulness_curve.csv", pd.DataFrame({
        "fraction": [0.01, 0.1, 0.5, 1.0], "n_kept": [1, 3, 5, 9], "faithfulness": [0.1, 0.4, 0.8, 1.0]}))
    manifest(d, "validate", ["--circuit", circuit, "--graph", graph, "--out", d],
             {"circuit": circuit, "graph": graph})
    return d


def component_val_dir(d: Path) -> Path:
    write_json(d / "validation.json", {"level": "component", "method": "eap-ig", "ablation": "counterfactual",
                                       "faithfulness": COMPONENT_FAITH, "completeness": 0.05, "cpr": 0.71,
                                       "cmd": 0.22, "n_selected": 4, "ig_vs_patching_r": 0.9})
    write_csv(d / "faithfulness_curve.csv", pd.DataFrame({
        "fraction": [0.01, 0.1, 1.0], "n_units": [1, 5, 50], "f": [0.1, 1.0, 2.0],
        "faithfulness": [0.05, 0.5, 1.0], "ranking": ["signed"] * 3}))
    write_csv(d / "component_scores.csv", pd.DataFrame({
        "unit": ["embed->L0H1", "L0H1->L1.mlp", "L1.mlp->logits", "embed->logits"],
        "upstream": ["embed", "L0H1", "L1.mlp", "embed"], "downstream": ["L0H1", "L1.mlp", "logits", "logits"],
        "port": ["", "", "", ""], "score": [0.8, 0.6, 1.2, -0.01], "abs_score": [0.8, 0.6, 1.2, 0.01],
        "rank": [2, 3, 1, 4], "in_circuit": [True, True, True, False]}))
    write_csv(d / "predicted_vs_measured.csv", pd.DataFrame({
        "prompt": [0, 0, 1, 1], "node": ["embed", "L0H1", "embed", "L0H1"], "predicted": [1.0, 0.5, 0.9, 0.4],
        "measured": [1.1, 0.45, 0.8, 0.5], "method": ["eap-ig"] * 4, "ablation": ["counterfactual"] * 4}))
    manifest(d, "validate", ["--task", "ioi", "--method", "eap-ig", "--out", d])
    return d


def bench_dir(d: Path) -> Path:
    write_csv(d / "benchmark.csv", pd.DataFrame({
        "organism": ["ioi"], "task": ["ioi"], "method": ["eap-ig"], "ablation": ["counterfactual"],
        "node_auc": [BENCH_AUC], "edge_auc": [0.8]}))
    (d / "benchmark.md").write_text("# Circuit discovery benchmark\n")
    manifest(d, "bench", ["--out", d])
    return d


def features_dir(d: Path) -> Path:
    (d / "dashboards").mkdir(parents=True)
    (d / "dashboards" / "index.html").write_text("<html>features</html>")
    write_csv(d / "feature_stats.csv", pd.DataFrame({
        "feature": range(4), "density": [0.0, 0.1, 0.2, 0.05], "mean_activation": [0, 1, 2, 1],
        "max_activation": [0, 2, 3, 2]}))
    write_csv(d / "coactivation_pairs.csv", pd.DataFrame({"i": [1], "j": [2], "count": [7], "jaccard": [0.4321]}))
    (d / "log_density.svg").write_text(SVG.format(id="log-density-marker"))
    manifest(d, "features", ["--dicts", "out/tc/dictionaries", "--out", d])
    return d


@pytest.fixture()
def quickstart(tmp_path, capsys):
    """The README quick-start layout under tmp/out (graph saved by hand, the real prune)."""
    out = tmp_path / "out"
    (out / "tc" / "dictionaries").mkdir(parents=True)
    (out / "tc" / "dictionaries" / "index.json").write_text("{}")
    manifest(out / "tc", "train", ["--out", out / "tc"])
    toy_graph().save(out / "graph")
    manifest(out / "graph", "attribute", ["--dicts", out / "tc" / "dictionaries", "--out", out / "graph"],
             {"dicts": out / "tc" / "dictionaries"})
    code, _, err = cli(capsys, "prune", "--graph", out / "graph", "--node-threshold", "0.9",
                       "--out", out / "circuit")
    assert code == 0, err
    eval_dir(out / "eval")
    feature_val_dir(out / "val", out / "circuit" / "graph", out / "graph")
    component_val_dir(out / "components")
    bench_dir(out / "bench")
    features_dir(out / "features")
    return out


def test_quickstart_layout_fills_every_section(quickstart, capsys):
    out = quickstart
    rec = report_json(capsys, "--run", out)
    assert rec["report"] == str(out / "report.html") and rec["found"] == 7
    assert set(statuses(rec).values()) == {"found"}, rec
    html = (out / "report.html").read_text()
    text = text_of(html)
    # dictionary quality: the CSV's numbers, per-latent array columns dropped
    assert "0.1235" in text and "12.25" in text and "log10_density_hist" not in text
    # graph + circuit: both recognised by their manifests, the circuit drawn (no SVG beside it)
    scores = json.loads((out / "circuit" / "scores.json").read_text())
    assert f"circuit {out / 'circuit' / 'graph'}" in text and f"graph {out / 'graph'}" in text
    assert "When Mary and" in text  # the prompt from the graph's metadata
    assert "written by `circuits prune`" in text
    if HAS_DOT:
        assert "drawn here" in text
    # prune scores from scores.json, 4 significant digits
    assert f"{scores['scores']['pruned']['replacement']:.4g}" in text
    assert f"{scores['nodes']}/{scores['nodes_full']} nodes" in text
    # feature and component validation: the faithfulness values of validation.json
    feat = text[text.index("Feature-circuit validation " + str(out)):text.index("Component validation " + str(out))]
    assert f"faithfulness {FEATURE_FAITH:.4g}" in feat and f"{COMPONENT_FAITH:.4g}" not in feat
    comp = text[text.index("Component validation " + str(out)):text.index("Benchmark " + str(out))]
    assert f"faithfulness {COMPONENT_FAITH:.4g}" in comp and "cpr 0.71" in comp
    assert "L1.mlp->logits 1.2 1 True" in comp  # top components by rank
    if HAS_DOT:
        assert "Component circuit" in comp
    # benchmark and dashboards
    assert f"{BENCH_AUC:.4g}" in text
    assert 'href="features/dashboards/index.html"' in html
    assert "features alive dead" in text and "4 3 1" in text and "log-density-marker" in html
    assert "0.4321" in text
    # run manifests listed, and the summary on stdout names every section
    for d in ("tc", "graph", "circuit", "eval", "val", "components", "bench", "features"):
        assert str(out / d) in " ".join(rec["sections"][-1]["sources"])
    code, stdout, err = report_text(capsys, "--run", out, "--overwrite")
    assert code == 0, err
    assert re.search(r"Benchmark:\s+found: .*benchmark\.csv", stdout)
    assert "7 of 7 result sections found" in stdout


def test_missing_sections_say_why_and_how(tmp_path, capsys):
    out = tmp_path / "out"
    eval_dir(out / "eval")
    code, stdout, err = report_text(capsys, "--run", out)
    assert code == 0, err
    assert "1 of 7 result sections found" in stdout
    assert f"Benchmark:                   not found — run `circuits bench --out {out / 'bench'}`" in stdout
    assert re.search(r"Component validation:\s+not found — run `circuits validate --task ioi", stdout)
    assert re.search(r"Circuit:\s+not found — run `circuits attribute", stdout)
    html = (out / "report.html").read_text()
    text = text_of(html)
    assert "Benchmark (not found)" in text  # table of contents
    assert f"Not found: no benchmark.csv — run `circuits bench --out {out / 'bench'}`" in text
    assert "Feature dashboards (not found)" in text and "Dictionary quality (not found)" not in text


@pytest.mark.parametrize("with_manifest", [False, True], ids=["by-name", "demo-manifest"])
def test_demo_layout(tmp_path, capsys, with_manifest):
    """The demo's out/, with its ``demo`` manifest or without (older demos): same sections."""
    out = tmp_path / "out"
    g = toy_graph()
    g.save(out / "graph")
    from circuits.prune import prune

    prune(g, 0.9, 0.98).graph.save(out / "circuit")
    (out / "circuit.svg").write_text(SVG.format(id="demo-circuit-figure"))  # newer than circuit/
    eval_dir(out)
    (out / "run.json").unlink()  # the demo writes no manifest
    write_json(out / "validation.json", {
        "figures": {"faithfulness": 0.7321, "completeness_patching": 0.11, "replacement_full": 0.6543,
                    "completeness_full": 0.9, "replacement_pruned": 0.7654, "completeness_pruned": 0.95,
                    "graph_nodes": 9, "circuit_nodes": 7, "ig_vs_patching_r": 0.8},
        "faithfulness": {"faithfulness": 0.7321, "ablation": "counterfactual"}})
    write_csv(out / "faithfulness_curve.csv", pd.DataFrame({"fraction": [0.1, 1.0], "n_kept": [1, 9],
                                                            "faithfulness": [0.3, 1.0]}))
    write_csv(out / "ig_vs_patching.csv", pd.DataFrame({"prompt": [0, 0, 0], "node": ["a", "b", "c"],
                                                        "ig": [0.1, 0.5, 0.9], "patching": [0.2, 0.4, 1.0]}))
    (out / "dashboards").mkdir()
    (out / "dashboards" / "index.html").write_text("<html></html>")
    if with_manifest:
        manifest(out, "demo", ["--out", out])
    rec = report_json(capsys, "--run", out)
    st = statuses(rec)
    assert st["Circuit"] == st["Prune scores"] == st["Feature-circuit validation"] == "found"
    assert st["Component validation"] == st["Benchmark"] == "missing"
    html = (out / "report.html").read_text()
    text = text_of(html)
    assert "demo-circuit-figure" in html  # the demo's own figure, not a re-rendering
    assert "written by `circuits demo`" in text
    assert "faithfulness 0.7321" in text
    assert re.search(r"full 0\.6543 0\.9 pruned 0\.7654 0\.95", text)  # prune scores from the figures
    assert 'href="dashboards/index.html"' in html
    circuit = next(s for s in rec["sections"] if s["title"] == "Circuit")
    assert circuit["sources"] == [str(out / "circuit"), str(out / "graph"), str(out / "circuit.svg")]
    assert ("read by file name (no run.json)" in text) != with_manifest


def test_follows_manifest_inputs_outside_the_run(tmp_path, capsys):
    """validate --circuit ../elsewhere/circuit/graph: the circuit and its prune scores are found."""
    elsewhere = tmp_path / "elsewhere"
    toy_graph().save(elsewhere / "graph")
    code, _, err = cli(capsys, "prune", "--graph", elsewhere / "graph", "--out", elsewhere / "circuit")
    assert code == 0, err
    run = tmp_path / "run"
    feature_val_dir(run / "val", elsewhere / "circuit" / "graph", elsewhere / "graph")
    rec = report_json(capsys, "--run", run)
    st = statuses(rec)
    assert st["Circuit"] == st["Prune scores"] == st["Feature-circuit validation"] == "found"
    circuit = next(s for s in rec["sections"] if s["title"] == "Circuit")
    assert str(elsewhere / "circuit" / "graph") in circuit["sources"]
    prune_sec = next(s for s in rec["sections"] if s["title"] == "Prune scores")
    assert prune_sec["sources"] == [str(elsewhere / "circuit" / "scores.json")]
    text = text_of((run / "report.html").read_text())
    assert f"reached as the input 'circuit' of {run / 'val' / 'run.json'}" in text


def test_stale_circuit_svg_is_redrawn_and_fresh_one_used(quickstart, capsys):
    out = quickstart
    svg = out / "circuit.svg"  # where `circuits render --out out/circuit.svg` puts it
    svg.write_text(SVG.format(id="rendered-circuit"))
    report_json(capsys, "--run", out)
    assert "rendered-circuit" in (out / "report.html").read_text()
    old = (out / "circuit" / "graph" / "graph.json").stat().st_mtime - 100
    os.utime(svg, (old, old))
    report_json(capsys, "--run", out, "--overwrite")
    html = (out / "report.html").read_text()
    assert "rendered-circuit" not in html
    assert f"{svg} is older than the circuit; drawn afresh" in text_of(html)


def test_keep_going_marks_corrupt_files_unreadable(quickstart, capsys):
    out = quickstart
    (out / "val" / "validation.json").write_text('{"level": "feature", "faithfulness": 0.5')
    csv = out / "bench" / "benchmark.csv"
    csv.write_text(csv.read_text()[:-9])  # cut inside the last row
    code, stdout, err = cli(capsys, "report", "--run", out)
    assert code == 1 and "--keep-going" in err and "report.html" not in os.listdir(out)
    code, stdout, err = report_text(capsys, "--run", out, "--keep-going")
    assert code == 0, err
    assert re.search(r"Benchmark:\s+unreadable: .*benchmark\.csv: is truncated", stdout)
    assert f"unreadable: {out / 'val' / 'validation.json'}: is not valid JSON" in stdout
    html = (out / "report.html").read_text()
    text = text_of(html)
    assert "Benchmark (unreadable)" in text and "Feature-circuit validation (unreadable)" in text
    assert f"unreadable: {csv}: is truncated" in text
    assert "rerun `circuits bench --out" in text  # the fix, from the manifest's argv
    assert "Component validation (not found)" not in text and f"{COMPONENT_FAITH:.4g}" in text


def test_report_path_elsewhere_links_relative_and_overwrite(quickstart, tmp_path, capsys):
    out = quickstart
    target = tmp_path / "reports" / "sub" / "r.html"
    report_json(capsys, "--run", out, "--out", target)
    html = target.read_text()
    assert 'href="../../out/features/dashboards/index.html"' in html
    assert not (out / "report.html").exists()
    before = target.read_bytes()
    code, _, err = cli(capsys, "report", "--run", out, "--out", target)
    assert code == 1 and "already exists" in err and target.read_bytes() == before
    shutil.rmtree(out / "bench")
    report_json(capsys, "--run", out, "--out", target, "--overwrite")
    assert "Benchmark (not found)" in text_of(target.read_text())
    assert [p.name for p in target.parent.iterdir()] == ["r.html"]  # atomic: no temporary left


def test_real_commands_chain(tmp_path, capsys):
    """train -> attribute -> prune -> validate at tiny budgets, then report the run."""
    out = tmp_path / "out"
    for argv in (["train", "--tokens", "4096", "--batch-tokens", "1024", "--width", "32", "--k", "4",
                  "--arch", "topk", "--out", out / "tc"],
                 ["attribute", "--dicts", out / "tc" / "dictionaries", "--out", out / "graph"],
                 ["prune", "--graph", out / "graph", "--out", out / "circuit"],
                 ["validate", "--circuit", out / "circuit" / "graph", "--graph", out / "graph",
                  "--dicts", out / "tc" / "dictionaries", "--out", out / "val"],
                 ["validate", "--task", "ioi", "--method", "eap", "--n", "8", "--out", out / "components"]):
        code, _, err = cli(capsys, *argv)
        assert code == 0, (argv[0], err)
    rec = report_json(capsys, "--run", out)
    st = statuses(rec)
    assert st["Circuit"] == st["Prune scores"] == st["Feature-circuit validation"] == "found"
    assert st["Component validation"] == "found"
    assert st["Dictionary quality"] == "missing" and st["Benchmark"] == "missing"
    comp = next(s for s in rec["sections"] if s["title"] == "Component validation")
    assert str(out / "components" / "validation.json") in comp["sources"]
    cv = json.loads((out / "components" / "validation.json").read_text())
    dq = next(s for s in rec["sections"] if s["title"] == "Dictionary quality")
    assert f"--dicts {out / 'tc' / 'dictionaries'}" in dq["detail"]  # the hint names the trained dictionaries
    v = json.loads((out / "val" / "validation.json").read_text())
    text = text_of((out / "report.html").read_text())
    assert f"faithfulness {v['faithfulness']:.4g}" in text
    assert f"completeness {v['completeness']:.4g}" in text
    assert f"faithfulness {cv['faithfulness']:.4g}" in text[text.index("Component validation " + str(out)):]


def test_copied_run_does_not_pull_in_the_original(quickstart, tmp_path, capsys):
    """A copy's manifests still name the original's absolute inputs; its own graphs win."""
    copy = tmp_path / "copy"
    shutil.copytree(quickstart, copy)
    rec = report_json(capsys, "--run", copy)
    sources = [p for s in rec["sections"] for p in s["sources"]]
    assert sources and all(p.startswith(str(copy)) for p in sources), sources


def test_component_circuit_json_is_drawn(tmp_path, capsys):
    """A component_circuit.json without its SVG (Graphviz was missing) is drawn by the report."""
    out = tmp_path / "out"
    d = component_val_dir(out / "components")
    write_json(d / "component_circuit.json", {
        "schema": "mlx-circuits/component-circuit", "version": 1, "task": "ioi", "metric": "logit_diff",
        "method": "eap-ig", "ablation": "counterfactual", "level": "edge", "faithfulness": COMPONENT_FAITH,
        "nodes": [{"name": "embed"}, {"name": "L0.H7"}, {"name": "L1.MLP"}, {"name": "logits"}],
        "edges": [{"source": "embed", "target": "L0.H7", "score": 0.5},
                  {"source": "L0.H7", "target": "L1.MLP", "score": -0.25},
                  {"source": "L1.MLP", "target": "logits", "score": 1.0}]})
    rec = report_json(capsys, "--run", out)
    comp = next(s for s in rec["sections"] if s["title"] == "Component validation")
    assert comp["status"] == "found" and str(d / "component_circuit.json") in comp["sources"]
    html = (out / "report.html").read_text()
    if HAS_DOT:
        assert ">L0.H7<" in html and "Component circuit" in text_of(html)  # the json's node, drawn
    else:
        assert "component circuit figure not drawn" in text_of(html)
