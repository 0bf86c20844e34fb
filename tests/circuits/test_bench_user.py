"""``circuits bench`` on the user's own model, ground-truth file and task file.

The user set-up is the shipped induction organism copied to a temporary directory,
its ground truth rewritten as a user file (another task name, the figures' spelling
of component names, a second task so the file must be matched by name) and the
task's examples written out as a JSONL task file. Every score must equal the shipped
path's; node AUC is also recomputed from brute-force node patching (``Patcher``).
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

import attribution  # noqa: F401  (BLAS before mlx)
from attribution import load_model
from circuits import organisms, tasks
from circuits.bench import BenchConfig, roc_auc, run_benchmark
from circuits.cli import main
from circuits.errors import OrganismError
from circuits.organisms.ground_truth import GroundTruth, read_ground_truth
from circuits.organisms.patching import Patcher, components
from circuits.tasks.base import _hf

N = 16
METHODS = ("eap", "exact")
SKIP = ("organism", "task", "runtime_edge_s", "runtime_node_s")


def _figure_spelling(name: str) -> str:
    """L0H1 -> L0.H1, L1.mlp -> L1.MLP (the user file need not use the canonical form)."""
    return re.sub(r"^L(\d+)H(\d+)$", r"L\1.H\2", name).replace(".mlp", ".MLP")


def _user_task(gt_task: dict, key: str) -> dict:
    t = dict(gt_task, task=key)
    t["circuit"] = [_figure_spelling(c) for c in t["circuit"]]
    t["nodes"] = {_figure_spelling(k): v for k, v in t["nodes"].items()}
    t["paths"] = {"->".join(_figure_spelling(p) for p in k.split("->")): v for k, v in t["paths"].items()}
    return t


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("benchuser")
    org = d / "my_organism"
    shutil.copytree(organisms.path("induction"), org, ignore=shutil.ignore_patterns("ground_truth.json"))
    shipped = json.loads((organisms.path("induction") / "ground_truth.json").read_text())
    model = load_model(org)
    data = tasks.get("induction").generate(N, shipped["config"]["seed"], model.tokenizer)
    hf = _hf(model.tokenizer)
    rows = [{"prompt": hf.decode(data.clean[i][1:].tolist()),  # [1:]: the tokenizer adds BOS itself
             "corrupted_prompt": hf.decode(data.corrupted[i][1:].tolist()),
             "answer": hf.decode([int(data.answer[i])]), "wrong_answer": hf.decode([int(data.wrong[i])])}
            for i in range(N)]
    task_file = d / "my_induction.jsonl"
    task_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gt_task = shipped["tasks"]["induction"]
    user_gt = {"model": "my organism", "config": shipped["config"],
               "tasks": {"my_induction": _user_task(gt_task, "my_induction"),
                         "other": _user_task(gt_task, "other")}}
    gt_file = d / "my_gt.json"
    gt_file.write_text(json.dumps(user_gt))
    ref = run_benchmark(organisms=["induction"], methods=METHODS, config=BenchConfig(n=N))
    return {"d": d, "org": org, "task_file": task_file, "gt_file": gt_file, "ref": ref.table,
            "model": model, "gt_task": gt_task}


def _assert_same_scores(table: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert len(table) == len(ref)
    cols = [c for c in ref.columns if c not in SKIP]
    for c in cols:
        a, b = table[c].to_numpy(), ref[c].to_numpy()
        if a.dtype.kind in "fc":
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, err_msg=c)
        else:
            assert list(a) == list(b), c


def test_user_model_ground_truth_and_task_file_score_like_shipped(setup):
    res = run_benchmark(model=setup["org"], ground_truth=setup["gt_file"], tasks=[str(setup["task_file"])],
                        methods=METHODS, config=BenchConfig(n=N))
    t = res.table
    assert list(t.organism.unique()) == ["my_organism"] and list(t.task.unique()) == ["my_induction"]
    assert (t.n_examples == N).all()
    _assert_same_scores(t, setup["ref"])
    # node AUC from brute-force node patching on the user's task data: |F(M) - F(node patched)|
    model = setup["model"]
    data = tasks.get(str(setup["task_file"])).generate(N, 0, model.tokenizer)
    p = Patcher(model, data)
    comps = components(model)
    effect = np.array([abs(p.clean_metric - p.node_metric(c)) for c in comps])
    positive = np.array([str(c) in setup["gt_task"]["circuit"] for c in comps])
    exact_row = t[t.method == "exact"].iloc[0]
    assert exact_row.node_auc == pytest.approx(roc_auc(effect, positive))
    assert exact_row.gt_nodes == positive.sum()


def test_cli_default_ground_truth_beside_model_with_task_file_key(setup, tmp_path, capsys):
    """ground_truth.json in the model directory; its task named by a task file beside it."""
    org = tmp_path / "org"
    shutil.copytree(setup["org"], org)
    shutil.copy(setup["task_file"], org / "my_induction.jsonl")
    user = json.loads(setup["gt_file"].read_text())
    (org / "ground_truth.json").write_text(json.dumps(
        {"config": user["config"], "tasks": {"my_induction.jsonl": user["tasks"]["my_induction"]}}))
    out = tmp_path / "bench"
    code = main(["--quiet", "bench", "--model", str(org), "--methods", "eap", "--n", str(N), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    t = pd.read_csv(out / "benchmark.csv")
    assert list(t.task) == ["my_induction.jsonl"] and list(t.organism) == ["org"]
    ref = setup["ref"][setup["ref"].method == "eap"].reset_index(drop=True)
    _assert_same_scores(t, ref)


def test_cli_ground_truth_flag_and_task_flag(setup, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["--quiet", "bench", "--model", str(setup["org"]), "--ground-truth", str(setup["gt_file"]),
                 "--tasks", str(setup["task_file"]), "--methods", "exact", "--n", str(N), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    ref = setup["ref"][setup["ref"].method == "exact"].reset_index(drop=True)
    _assert_same_scores(pd.read_csv(out / "benchmark.csv"), ref)
    assert "my_induction" in (out / "benchmark.md").read_text()


def test_shipped_ground_truths_pass_the_schema_unchanged():
    for name in organisms.names():
        f = organisms.path(name) / "ground_truth.json"
        raw = json.loads(f.read_text())
        gt = read_ground_truth(f)
        assert gt.to_dict() == raw
        model_cfg = json.loads((organisms.path(name) / "config.json").read_text())
        gt.check_components(model_cfg["num_hidden_layers"], model_cfg["num_attention_heads"])


def test_schema_defaults_and_canonical_names():
    gt = GroundTruth.from_dict({"tasks": {"t": {"circuit": ["l0.h1", "L1.MLP", "L2H0"],
                                                "clean_metric": 2, "empty_metric": 0.5,
                                                "paths": {"L0.H1 -> logits": 1.5}}}})
    t = gt.tasks["t"]
    assert t.circuit == ["L0H1", "L1.mlp", "L2H0"] and t.paths == {"L0H1->logits": 1.5}
    assert t.task == "t" and t.metric == "logit_diff" and t.nodes == {}
    assert gt.config.n == 100 and gt.config.seed == 20_000
    gt.check_components(3, 2)
    with pytest.raises(OrganismError, match=r"unknown component 'L2H0' .*2 layers x 2 heads"):
        gt.check_components(2, 2)
    with pytest.raises(OrganismError, match="embeddings are never ablated"):
        GroundTruth.from_dict({"tasks": {"t": {"circuit": ["EMB"], "clean_metric": 1, "empty_metric": 0}}})
