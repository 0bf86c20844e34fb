"""``circuits aggregate``: a real run on the ioi organism checked against the library, and bad input."""

import json

import numpy as np
import pandas as pd
import pytest

from circuits.cli import main
from cli_harness import assert_bad_input, run_cli


@pytest.fixture(scope="module")
def dicts_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("agg_cli")
    assert main(["--quiet", "train", "--tokens", "2048", "--batch-tokens", "1024", "--width", "64",
                 "--k", "4", "--arch", "topk", "--out", str(d / "tc")]) == 0
    return d / "tc" / "dictionaries"


def test_aggregate_command_matches_library(dicts_dir, tmp_path, capsys):
    from attribution import GraphConfig, build_graph, load_model, logit_diff
    from circuits import organisms, tasks
    from circuits.multi import Aggregate, aggregate
    from circuits.prune import prune
    from sae import open_dictionaries

    out = tmp_path / "agg"
    code, stdout, err = run_cli(capsys, "--json", "aggregate", "--dicts", dicts_dir, "--examples", "3",
                                "--supernodes", "--bootstrap", "3", "--out", out)
    assert code == 0, err
    rec = json.loads(stdout)
    assert rec["prompts"] == 3 and rec["task"] == "ioi"
    for name in ("aggregate.json", "aggregate.safetensors", "nodes.csv", "edges.csv", "aggregate.dot",
                 "aggregate.svg", "supernodes.json", "run.json"):
        assert (out / name).is_file(), name
    got = Aggregate.load(out)
    # independent: the same three graphs through the library
    model = load_model(organisms.path("ioi"))
    dicts = open_dictionaries(dicts_dir, model=model)
    dicts = list(dicts.values()) if isinstance(dicts, dict) else list(dicts)
    data = tasks.get("ioi").generate(3, 0, model.tokenizer)
    circuits = [prune(build_graph(model, dicts, [int(t) for t in data.clean[i]],
                                  targets=logit_diff(model, int(data.answer[i]), int(data.wrong[i])),
                                  config=GraphConfig(batch_size=64)), 0.8, 0.98) for i in range(3)]
    ref = aggregate(circuits)
    assert got.keys == ref.keys
    np.testing.assert_allclose(got.edge_weight, ref.edge_weight, rtol=1e-6, atol=1e-7)
    kept = pd.read_csv(out / "nodes.csv")
    assert (kept["presence"] >= 0.5 - 1e-12).all() and len(kept) == rec["nodes_kept"]
    assert (out / "aggregate.svg").read_text().lstrip().startswith(("<?xml", "<svg"))


def test_aggregate_bad_input(dicts_dir, tmp_path, capsys):
    out = tmp_path / "bad"
    assert_bad_input(capsys, ["aggregate", "--dicts", dicts_dir, "--examples", "2", "--positions", "absolute",
                              "--out", out], "one length", out=out)
    assert_bad_input(capsys, ["aggregate", "--dicts", dicts_dir, "--threshold", "5", "--out", out],
                     "threshold", out=out)
    assert_bad_input(capsys, ["aggregate", "--dicts", tmp_path / "none", "--out", out], "", out=out)
