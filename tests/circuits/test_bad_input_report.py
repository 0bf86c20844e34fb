"""Bad input to ``circuits report``: one line naming the file and the fix, non-zero exit,
no report written and the run directory left exactly as it was (``cli_harness``).

Each case builds a small valid run (evaluation metrics, a feature validation and a
benchmark, with manifests) and then breaks one thing.
"""

import json
from pathlib import Path

import pandas as pd
import pytest

from cli_harness import assert_bad_input
from circuits.pipeline.manifest import manifest_record, write_manifest


def manifest(directory: Path, command: str, argv: list) -> None:
    arts = {p.name: p.name + ("/" if p.is_dir() else "") for p in sorted(directory.iterdir())
            if p.name != "run.json"}
    write_manifest(directory, manifest_record(command, [command, *map(str, argv)], {}, arts))


@pytest.fixture()
def run(tmp_path) -> Path:
    out = tmp_path / "out"
    (out / "eval").mkdir(parents=True)
    pd.DataFrame({"name": ["L0.mlp_in", "L1.mlp_in"], "l0": [11.5, 12.0], "fvu": [0.12, 0.2]}).to_csv(
        out / "eval" / "dictionary_metrics.csv", index=False)
    manifest(out / "eval", "evaluate", ["--out", out / "eval"])
    (out / "val").mkdir()
    (out / "val" / "validation.json").write_text(json.dumps({"level": "feature", "faithfulness": 0.61,
                                                             "completeness": 0.2, "ablation": "counterfactual"}))
    manifest(out / "val", "validate", ["--circuit", out / "circuit" / "graph", "--out", out / "val"])
    (out / "bench").mkdir()
    pd.DataFrame({"organism": ["ioi"], "method": ["eap"], "node_auc": [0.9]}).to_csv(
        out / "bench" / "benchmark.csv", index=False)
    manifest(out / "bench", "bench", ["--out", out / "bench"])
    return out


def bad(capsys, run: Path, match: str, *extra, out: Path | None = None):
    """``circuits report --run RUN EXTRA`` must fail with ``match``; RUN untouched, no report."""
    report = out if out is not None else run / "report.html"
    return assert_bad_input(capsys, ["report", "--run", run, *extra], match, out=report, watch=(run,))


def test_run_missing(tmp_path, capsys):
    assert_bad_input(capsys, ["report", "--run", tmp_path / "nope"], r"--run .*nope does not exist; pass the "
                     r"directory", out=tmp_path / "nope" / "report.html")


def test_run_is_a_file(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert_bad_input(capsys, ["report", "--run", f, "--out", tmp_path / "r.html"], r"--run .*file\.txt is a "
                     r"file; pass the directory", out=tmp_path / "r.html", watch=(f,))


def test_empty_run_has_nothing_to_report(tmp_path, capsys):
    d = tmp_path / "empty"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "notes.txt").write_text("hello")
    bad(capsys, d, r"holds no results to report: no run\.json manifests .*circuits demo --out")


def test_only_dictionaries_is_nothing_to_report(tmp_path, capsys):
    d = tmp_path / "out"
    (d / "tc" / "dictionaries").mkdir(parents=True)
    (d / "tc" / "dictionaries" / "index.json").write_text("{}")
    manifest(d / "tc", "train", ["--out", d / "tc"])
    bad(capsys, d, r"holds no results to report \(only .*tc \(train\)\).*circuits evaluate")


def test_truncated_csv(run, capsys):
    f = run / "eval" / "dictionary_metrics.csv"
    f.write_text(f.read_text()[:-6])  # cut inside the last row
    bad(capsys, run, r"eval/dictionary_metrics\.csv: is truncated .*rerun `circuits evaluate --out .*--overwrite`"
                     r".*--keep-going")


def test_csv_cut_at_a_number_without_final_newline(run, capsys):
    f = run / "bench" / "benchmark.csv"
    f.write_text(f.read_text().rstrip("\n")[:-1])  # "0.9" -> "0." : same field count, no newline
    bad(capsys, run, r"bench/benchmark\.csv: is truncated \(its last line has no newline\).*circuits bench")


def test_empty_csv(run, capsys):
    (run / "bench" / "benchmark.csv").write_text("")
    bad(capsys, run, r"benchmark\.csv: is empty")


def test_header_only_csv(run, capsys):
    (run / "eval" / "dictionary_metrics.csv").write_text("name,l0,fvu\n")
    bad(capsys, run, r"dictionary_metrics\.csv: has a header but no rows")


def test_csv_missing_columns(run, capsys):
    (run / "bench" / "benchmark.csv").write_text("organism,score\nioi,0.5\n")
    bad(capsys, run, r"benchmark\.csv: lacks the columns \['method'\]")


def test_csv_not_utf8(run, capsys):
    (run / "eval" / "dictionary_metrics.csv").write_bytes(b"name,l0\n\xff\xfe\x00,1\n")
    bad(capsys, run, r"dictionary_metrics\.csv: is not UTF-8 text")


def test_validation_json_invalid(run, capsys):
    (run / "val" / "validation.json").write_text('{"level": "feature", "faithfulness": 0.6')
    bad(capsys, run, r"val/validation\.json: is not valid JSON \(line 1 column \d+.*rerun `circuits validate "
                     r"--circuit")


def test_validation_json_not_a_number(run, capsys):
    (run / "val" / "validation.json").write_text('{"level": "feature", "faithfulness": "high"}')
    bad(capsys, run, r"validation\.json: faithfulness is 'high', not a number")


def test_validation_json_not_an_object(run, capsys):
    (run / "val" / "validation.json").write_text("[0.5]")
    bad(capsys, run, r"validation\.json: must hold a JSON object, got list")


def test_manifest_invalid_json(run, capsys):
    (run / "eval" / "run.json").write_text('{"kind": "mlx-circuits run manifest", ')
    bad(capsys, run, r"eval/run\.json: is not valid JSON .*delete .*eval/run\.json to have that directory's "
                     r"files read by name")


def test_manifest_wrong_kind(run, capsys):
    (run / "eval" / "run.json").write_text('{"kind": "something else", "format_version": 1}')
    bad(capsys, run, r"run\.json: is not an mlx-circuits run manifest")


def test_manifest_newer_format(run, capsys):
    rec = json.loads((run / "bench" / "run.json").read_text())
    (run / "bench" / "run.json").write_text(json.dumps({**rec, "format_version": 99}))
    bad(capsys, run, r"bench/run\.json: format_version 99 was written by a newer mlx-circuits.*upgrade")


def test_manifest_points_at_missing_file(run, capsys):
    (run / "bench" / "benchmark.csv").unlink()
    bad(capsys, run, r"bench/benchmark\.csv: is listed in .*bench/run\.json but missing; rerun `circuits bench "
                     r"--out .*--overwrite`")


def test_manifest_artifact_escapes_directory(run, capsys):
    rec = json.loads((run / "eval" / "run.json").read_text())
    rec["artifacts"]["dictionary_metrics.csv"] = "../../elsewhere.csv"
    (run / "eval" / "run.json").write_text(json.dumps(rec))
    bad(capsys, run, r"eval/run\.json: artifact 'dictionary_metrics\.csv' points outside its directory")


def test_corrupt_circuit_graph(run, capsys):
    d = run / "circuit" / "graph"
    d.mkdir(parents=True)
    (d / "graph.json").write_text('{"schema": "x"')
    (d / "graph.safetensors").write_bytes(b"\0" * 8)
    bad(capsys, run, r"circuit/graph/graph\.json: is not valid JSON .*`circuits prune \.\.\. --out "
                     r".*/out/circuit --overwrite`")


def test_truncated_svg(run, capsys):
    (run / "circuit.svg").write_text('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><rect')
    bad(capsys, run, r"circuit\.svg: is not a complete SVG document.*circuits render")


def test_existing_report_needs_overwrite(run, capsys):
    (run / "report.html").write_text("<html>old</html>")
    bad(capsys, run, r"report .*report\.html already exists; pass --overwrite to replace it, or choose "
                     r"another --out")


def test_out_is_a_directory(run, tmp_path, capsys):
    d = tmp_path / "rep.html"
    d.mkdir()
    bad(capsys, run, r"--out .*rep\.html is a directory; pass a file path", "--out", d, out=d)


def test_out_not_html(run, tmp_path, capsys):
    bad(capsys, run, r"--out .*report\.txt must end in \.html", "--out", tmp_path / "report.txt",
        out=tmp_path / "report.txt")


def test_out_parent_is_a_file(run, tmp_path, capsys):
    f = tmp_path / "plain"
    f.write_text("x")
    bad(capsys, run, r"plain is a file, not a directory; choose another --out", "--out", f / "r.html",
        out=f / "r.html")


def test_keep_going_still_refuses_nothing_found(tmp_path, capsys):
    d = tmp_path / "empty"
    d.mkdir()
    bad(capsys, d, r"holds no results to report", "--keep-going")


def test_out_is_an_artifact_of_the_run(run, capsys):
    (run / "bench" / "dashboards").mkdir()
    index = run / "bench" / "dashboards" / "index.html"
    index.write_text("<html></html>")
    bad(capsys, run, r"--out .*dashboards/index\.html is one of the run's artifacts; choose another --out",
        "--out", index, "--overwrite", out=index)


def test_component_circuit_json_bad_name(run, capsys):
    d = run / "components"
    d.mkdir()
    (d / "validation.json").write_text(json.dumps({"level": "component", "method": "eap", "faithfulness": 0.7}))
    (d / "component_circuit.json").write_text(json.dumps({
        "nodes": [{"name": "L0.H1"}, {"name": "attention-thing"}],
        "edges": [{"source": "L0.H1", "target": "attention-thing", "score": 1.0}]}))
    bad(capsys, run, r"components/component_circuit\.json: cannot be drawn \(.*attention-thing.*rewrite it with "
                     r"`circuits validate")
