"""The own-model traps of the CLI, each checked against an independent computation.

Every test here failed on the code before the fix: ``--example N`` built another
row, a free ``--prompt`` took the IOI task's target, a non-organism model got the
built-in IOI task, ``validate`` measured a circuit on another example, old and new
files mixed in ``--out``, staging survived SIGTERM, and scores that do not apply
printed as numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from circuits.cli import main

ROWS = [  # three IOI-shaped rows in the organism's vocabulary, of different lengths
    {"prompt": "Then, Mary and John went to the store. John gave a drink to",
     "corrupted_prompt": "Then, Mary and John went to the store. Anna gave a drink to",
     "answer": "Mary", "wrong_answer": "John"},
    {"prompt": "While Adam and Peter were working at the school, Peter gave a ticket to",
     "corrupted_prompt": "While Iris and Amy were working at the school, Ella gave a ticket to",
     "answer": "Adam", "wrong_answer": "Peter"},
    {"prompt": "The beach Carol and Mary went to had a flower. Mary gave it to",
     "corrupted_prompt": "The beach Hugo and Max went to had a flower. Rachel gave it to",
     "answer": "Carol", "wrong_answer": "Mary"},
]
CLI = [sys.executable, "-m", "circuits.cli"]


def cli(capsys, *argv):
    code = main(["--quiet", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("traps")
    assert main(["--quiet", "train", "--tokens", "8192", "--batch-tokens", "1024", "--width", "64",
                 "--k", "4", "--arch", "topk", "--out", str(d / "tc")]) == 0
    with open(d / "task.jsonl", "w") as f:
        f.write("\n")  # a blank first line: rows are counted without it
        for r in ROWS:
            f.write(json.dumps(r) + "\n")
    return d


def _model():
    from attribution import load_model
    from circuits import organisms

    return load_model(organisms.path("ioi"))


def _graph(path):
    from attribution.graph import Graph

    return Graph.load(path)


def test_example_n_is_row_n_of_a_task_file(d, capsys):
    from circuits.tasks.base import encode

    model = _model()
    for n in (2, 0, 1):
        out = d / f"g_row{n}"
        code, _, err = cli(capsys, "attribute", "--dicts", d / "tc" / "dictionaries", "--task", d / "task.jsonl",
                           "--example", n, "--out", out)
        assert code == 0, err
        md = _graph(out).metadata
        want = [int(t) for t in encode(model.tokenizer, ROWS[n]["prompt"])]
        assert md["tokens"] == want
        src = md["prompt_source"]
        assert src["example"] == n and src["line"] == n + 2 and src["task_file"] == str((d / "task.jsonl").resolve())
        assert src["clean_ids"] == want
        assert src["corrupted_ids"] == [int(t) for t in encode(model.tokenizer, ROWS[n]["corrupted_prompt"])]
        assert model.tokenizer.decode([src["answer_id"]]).strip() == ROWS[n]["answer"]
        assert md["target"]["label"] == f'logit(" {ROWS[n]["answer"]}") − logit(" {ROWS[n]["wrong_answer"]}")'


def test_builtin_task_row_is_stable_and_matches_generate(d, capsys):
    from circuits import tasks

    model = _model()
    ref = tasks.get("ioi").generate(12, 0, model.tokenizer)
    out = d / "g_ioi5"
    assert cli(capsys, "attribute", "--dicts", d / "tc" / "dictionaries", "--task", "ioi", "--example", 5,
               "--out", out)[0] == 0
    md = _graph(out).metadata
    assert md["tokens"] == [int(t) for t in ref.clean[5]]
    assert md["prompt_source"]["corrupted_ids"] == [int(t) for t in ref.corrupted[5]]
    assert md["prompt_source"]["answer_id"] == int(ref.answer[5])


def test_free_prompt_targets_its_own_top_logits(d, capsys):
    import mlx.core as mx

    model = _model()
    prompt = "Then, Mary and John went to the store. John gave a drink to"
    out = d / "g_free"
    code, _, err = cli(capsys, "attribute", "--dicts", d / "tc" / "dictionaries", "--prompt", prompt, "--out", out)
    assert code == 0, err
    g = _graph(out)
    assert g.metadata["target"]["kind"] == "top_logits"
    assert g.metadata["prompt_source"]["kind"] == "prompt" and g.metadata["prompt_source"]["answer_id"] is None
    logits = np.asarray(model(mx.array([model.encode(prompt)]))[0, -1])
    top = int(np.argmax(logits))
    ids = [int(t) for t in g.nodes[g.nodes["type"] == "logit"]["token_id"]]
    assert ids[0] == top  # the model's own top token, not the IOI task's answer
    out2 = d / "g_free_ld"
    assert cli(capsys, "attribute", "--dicts", d / "tc" / "dictionaries", "--prompt", prompt, "--answer", "John",
               "--wrong", "Mary", "--out", out2)[0] == 0
    g2 = _graph(out2)
    assert g2.metadata["target"]["label"] == 'logit(" John") − logit(" Mary")'
    lg = g2.nodes[g2.nodes["type"] == "logit"]
    j, m = model.tokenizer.encode(" John", add_special_tokens=False), model.tokenizer.encode(" Mary", add_special_tokens=False)
    assert float(lg["activation"].iloc[0]) == pytest.approx(float(logits[j[-1]] - logits[m[-1]]), abs=1e-3)


def test_non_organism_model_never_gets_ioi(d, capsys, tmp_path):
    from circuits import organisms

    plain = tmp_path / "plain"
    shutil.copytree(organisms.path("ioi"), plain)
    (plain / "card.json").unlink()
    code, _, err = cli(capsys, "attribute", "--model", plain, "--dicts", d / "tc" / "dictionaries",
                       "--out", tmp_path / "g")
    assert code == 1 and "--prompt" in err and not (tmp_path / "g").exists()
    code, _, err = cli(capsys, "attribute", "--model", plain, "--dicts", d / "tc" / "dictionaries",
                       "--prompt", "Then, Mary and John went", "--out", tmp_path / "g")
    assert code == 0, err
    assert _graph(tmp_path / "g").metadata["prompt_source"]["kind"] == "prompt"


def test_validate_refuses_a_circuit_of_another_example(d, capsys, tmp_path):
    dicts = d / "tc" / "dictionaries"
    assert cli(capsys, "attribute", "--dicts", dicts, "--task", "ioi", "--example", 0, "--out", tmp_path / "g")[0] == 0
    assert cli(capsys, "prune", "--graph", tmp_path / "g", "--out", tmp_path / "c")[0] == 0
    code, _, err = cli(capsys, "validate", "--circuit", tmp_path / "c" / "graph", "--dicts", dicts,
                       "--task", "ioi", "--example", 3, "--out", tmp_path / "v")
    assert code == 1 and "row 0" in err and "row 3" in err and not (tmp_path / "v").exists()
    # Without restating, the circuit's own prompt is used: equals validating with --example 0.
    code, _, err = cli(capsys, "validate", "--circuit", tmp_path / "c" / "graph", "--dicts", dicts,
                       "--out", tmp_path / "v1")
    assert code == 0, err
    code, _, err = cli(capsys, "validate", "--circuit", tmp_path / "c" / "graph", "--dicts", dicts,
                       "--task", "ioi", "--example", 0, "--out", tmp_path / "v2")
    assert code == 0, err
    a = json.loads((tmp_path / "v1" / "validation.json").read_text())
    b = json.loads((tmp_path / "v2" / "validation.json").read_text())
    assert a["faithfulness"] == b["faithfulness"] and a["prompt_source"]["example"] == 0


def test_validate_feature_matches_direct_patching(d, capsys, tmp_path):
    """validate's faithfulness equals feature_faithfulness called by hand on example 2's row."""
    from attribution.replacement import ReplacementModel
    from sae import load_dictionaries

    from circuits import tasks
    from circuits.pipeline.feature_faithfulness import feature_faithfulness

    dicts = d / "tc" / "dictionaries"
    assert cli(capsys, "attribute", "--dicts", dicts, "--example", 2, "--out", tmp_path / "g")[0] == 0
    assert cli(capsys, "prune", "--graph", tmp_path / "g", "--out", tmp_path / "c")[0] == 0
    assert cli(capsys, "validate", "--circuit", tmp_path / "c" / "graph", "--dicts", dicts,
               "--out", tmp_path / "v")[0] == 0
    got = json.loads((tmp_path / "v" / "validation.json").read_text())
    model = _model()
    ex = tasks.get("ioi").generate(3, 0, model.tokenizer)
    a, w = int(ex.answer[2]), int(ex.wrong[2])
    ref = feature_faithfulness(ReplacementModel(model, load_dictionaries(dicts)), ex.clean[2],
                               _graph(tmp_path / "c" / "graph"), lambda l: l[a] - l[w], "counterfactual",
                               ex.corrupted[2])
    assert got["faithfulness"] == pytest.approx(ref.faithfulness, abs=1e-5)


def test_prune_scores_na_on_patching_graphs(d, capsys, tmp_path):
    dicts = d / "tc" / "dictionaries"
    assert cli(capsys, "attribute", "--dicts", dicts, "--method", "atp", "--out", tmp_path / "g")[0] == 0
    code = main(["prune", "--graph", str(tmp_path / "g"), "--out", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert code == 0 and "replacement  n/a" in out and "0.000" not in out
    rec = json.loads((tmp_path / "c" / "scores.json").read_text())
    assert rec["scores"]["full"]["replacement"] is None and "n/a" in rec["scores"]["note"]


def test_overwrite_replaces_and_never_mixes(d, capsys, tmp_path):
    assert cli(capsys, "attribute", "--dicts", d / "tc" / "dictionaries", "--out", tmp_path / "g")[0] == 0
    out = tmp_path / "c"
    out.mkdir()
    (out / "stale.txt").write_text("old result")
    code, _, err = cli(capsys, "prune", "--graph", tmp_path / "g", "--out", out)
    assert code == 1 and "--overwrite" in err and (out / "stale.txt").exists()
    assert cli(capsys, "prune", "--graph", tmp_path / "g", "--out", out, "--overwrite")[0] == 0
    assert not (out / "stale.txt").exists() and (out / "scores.json").exists() and (out / "run.json").exists()
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name or ".old-" in p.name]
    man = json.loads((out / "run.json").read_text())
    assert man["command"] == "prune" and man["inputs"]["graph"]["resolved"] == str((tmp_path / "g").resolve())


def test_stale_staging_of_a_dead_process_is_removed(d, capsys, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".c.staging-{dead}-abcd"
    stale.mkdir()
    (stale / "half.json").write_text("{")
    live = tmp_path / f".c.staging-{os.getpid()}-live"
    live.mkdir()
    assert cli(capsys, "attribute", "--dicts", d / "tc" / "dictionaries", "--out", tmp_path / "g")[0] == 0
    assert cli(capsys, "prune", "--graph", tmp_path / "g", "--out", tmp_path / "c")[0] == 0
    assert not stale.exists() and live.exists()  # only dead processes' staging goes


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_removes_staging(d, tmp_path, sig, code):
    out = tmp_path / "tc"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*CLI, "--quiet", "train", "--tokens", str(2 ** 22), "--batch-tokens", "1024",
                             "--width", "64", "--k", "4", "--arch", "topk", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            # A shell's background jobs (CI) inherit SIGINT ignored, and Python then
                            # keeps ignoring it; a terminal's Ctrl-C arrives with the default action.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".tc.staging-*")):
        time.sleep(0.2)
    assert list(tmp_path.glob(".tc.staging-*")), "staging directory never appeared"
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in err
    assert not list(tmp_path.glob(".tc.*")) and not out.exists()


def test_global_flags_after_subcommand_and_closed_pipe(tmp_path):
    r = subprocess.run([*CLI, "doctor", "--size", "64", "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["matmul_n"] == 64
    r = subprocess.run(f"{sys.executable} -m circuits.cli organism list --json | head -c 5", shell=True,
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "" and len(r.stdout) == 5
    r = subprocess.run([*CLI, "prune", "--graph", str(tmp_path / "nope"), "--debug"], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" in r.stderr  # --debug after the subcommand works too


def test_progress_is_line_per_decile_without_a_terminal(d, tmp_path):
    r = subprocess.run([*CLI, "attribute", "--dicts", str(d / "tc" / "dictionaries"), "--out", str(tmp_path / "g")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("attribution:")]
    assert 2 <= len(lines) <= 11, r.stderr


def test_small_denominator_warns(d, capsys, tmp_path, monkeypatch):
    from circuits.pipeline import feature_faithfulness as ff

    dicts = d / "tc" / "dictionaries"
    assert cli(capsys, "attribute", "--dicts", dicts, "--out", tmp_path / "g")[0] == 0
    assert cli(capsys, "prune", "--graph", tmp_path / "g", "--out", tmp_path / "c")[0] == 0
    real = ff.feature_faithfulness

    def nearly_flat(*a, **k):  # the real measurement, with F(∅) moved next to F(M)
        r = real(*a, **k)
        f0 = r.f_full - 1e-4
        return ff.FeatureFaithfulness((r.f_circuit - f0) / 1e-4, (r.f_complement - f0) / 1e-4, r.f_circuit, f0,
                                      r.f_full, r.f_complement, r.n_features, r.n_errors, r.n_tokens, r.ablation)

    monkeypatch.setattr(ff, "feature_faithfulness", nearly_flat)
    code, _, err = cli(capsys, "validate", "--circuit", tmp_path / "c" / "graph", "--dicts", dicts,
                       "--out", tmp_path / "v")
    assert code == 0
    assert err.count("warning:") == 1 and "noise" in err and len(err.strip().splitlines()) == 1
    assert "noise" in json.loads((tmp_path / "v" / "validation.json").read_text())["warning"]


def _perturbed_copy(src, dst):
    """The same architecture and shapes with one norm weight changed: another model."""
    import mlx.core as mx

    shutil.copytree(src, dst)
    (dst / "card.json").unlink()
    for f in dst.glob("*.safetensors"):
        w = mx.load(str(f))
        key = next((k for k in w if k.endswith("norm.weight")), None)
        if key is not None:
            w[key] = w[key] * 1.5
            mx.save_safetensors(str(f), w)
            return
    raise AssertionError("no norm weight found")


def test_dictionaries_of_another_model_refused_or_forced(d, capsys, tmp_path):
    from circuits import organisms

    other = tmp_path / "other"
    _perturbed_copy(organisms.path("ioi"), other)
    argv = ["attribute", "--model", other, "--dicts", d / "tc" / "dictionaries", "--prompt", "Then, Mary went"]
    code, _, err = cli(capsys, *argv, "--out", tmp_path / "g")
    assert code == 1 and "trained on model" in err and "--force" in err and not (tmp_path / "g").exists()
    code, _, err = cli(capsys, *argv, "--force", "--out", tmp_path / "g")
    assert code == 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("circuits: warning:") and "trained on model" in lines[0]


def test_large_model_flags_equal_the_python_preset(d, capsys):
    """--large-model --max-feature-nodes N is GraphConfig.large_model(max_feature_nodes=N):
    the same graph as the API call, with exactly N features; refused for other methods."""
    from attribution import GraphConfig, build_graph
    from sae import open_dictionaries

    model = _model()
    prompt = ROWS[0]["prompt"]
    out = d / "g_large"
    code, _, err = cli(capsys, "attribute", "--dicts", d / "tc" / "dictionaries", "--prompt", prompt,
                       "--large-model", "--max-feature-nodes", "20", "--edges-per-target", "16",
                       "--out", out)
    assert code == 0, err
    g = _graph(out)
    want = build_graph(model, open_dictionaries(d / "tc" / "dictionaries", model=model), model.encode(prompt),
                       config=GraphConfig.large_model(max_feature_nodes=20, edges_per_target=16))
    assert int(g.type_mask("feature").sum()) == 20 and g.keys == want.keys
    assert abs(g.adjacency - want.adjacency).max() <= 1e-6
    assert np.diff(g.adjacency.indptr).max() <= 16
    code, _, err = cli(capsys, "attribute", "--dicts", d / "tc" / "dictionaries", "--prompt", prompt,
                       "--method", "atp", "--large-model", "--out", d / "g_large_atp")
    assert code != 0 and "--large-model" in err and len(err.strip().splitlines()) == 1
    assert not (d / "g_large_atp").exists()
