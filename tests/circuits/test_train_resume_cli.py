"""``circuits train --checkpoint-dir/--checkpoint-every/--resume``: an interrupted run,
resumed, writes exactly the dictionaries and log of an uninterrupted run; the same keys
work from ``--config``; a corpus file with any suffix is read as text."""

import importlib
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from circuits.cli import main

trainer = importlib.import_module("sae.train.trainer")  # ``sae.train`` the name is a function

# 16 steps of 256 tokens; log_every = max(1, 16 // 50) = 1, so every step is logged
BASE = ["train", "--sites", "L0.mlp_in,L1.mlp_in", "--arch", "topk", "--width", "32", "--k", "4",
        "--tokens", "4096", "--batch-tokens", "256"]


def _weights(out: Path) -> dict:
    files = sorted((out / "dictionaries").rglob("*.safetensors"))
    assert files, f"no dictionaries under {out}"
    return {f"{f.parent.name}/{k}": np.array(v) for f in files for k, v in mx.load(str(f)).items()}


def _log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines() if ln]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and a run stopped at step 10 (checkpoint at 8) then resumed."""
    d = tmp_path_factory.mktemp("resume")
    assert main(["--quiet", *BASE, "--out", str(d / "full")]) == 0
    ck = d / "ck"
    real_log = trainer._log

    def stop_after_10(trainees, done, *a, **k):  # a Ctrl-C arriving after step 10's log row
        rows = real_log(trainees, done, *a, **k)
        if done == 10:
            raise KeyboardInterrupt
        return rows

    mp = pytest.MonkeyPatch()
    mp.setattr(trainer, "_log", stop_after_10)
    try:
        code = main(["--quiet", *BASE, "--checkpoint-dir", str(ck), "--checkpoint-every", "4",
                     "--out", str(d / "resumed")])
    finally:
        mp.undo()
    state = {"code": code, "out_after_stop": (d / "resumed").exists(),
             "ckpt_step": json.loads(mx.load(str(ck / "checkpoint.safetensors"),
                                             return_metadata=True)[1]["state"])["step"],
             "log_steps": sorted({r["step"] for r in map(json.loads, (ck / "train_log.jsonl")
                                                          .read_text().splitlines())})}
    state["resume_code"] = main(["--quiet", *BASE, "--checkpoint-dir", str(ck), "--checkpoint-every",
                                 "4", "--resume", "--out", str(d / "resumed")])
    return d, state


def test_interrupt_keeps_checkpoint_and_no_output(runs):
    _, s = runs
    assert s["code"] == 130 and not s["out_after_stop"]
    assert s["ckpt_step"] == 8
    assert s["log_steps"] == list(range(1, 10))  # row 9 came after the checkpoint (10 never)


def test_resumed_run_equals_uninterrupted_run(runs):
    d, s = runs
    assert s["resume_code"] == 0
    full, resumed = _weights(d / "full"), _weights(d / "resumed")
    assert full.keys() == resumed.keys() and len(full) >= 2 * 4
    for k in full:
        np.testing.assert_array_equal(full[k], resumed[k], err_msg=k)
    # the log is whole: steps 1..16 once each, equal to the uninterrupted run's rows
    assert _log(d / "resumed") == _log(d / "full")
    assert [r["step"] for r in _log(d / "full")] == [s for s in range(1, 17) for _ in range(2)]


def test_checkpoint_keys_from_config(runs, tmp_path, capsys):
    d, _ = runs
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"checkpoint_dir": str(tmp_path / "ck"), "checkpoint-every": 8,
                               "tokens": 2048}))
    argv = [a for a in BASE if a not in ("--tokens", "4096")]
    assert main(["--quiet", *argv, "--config", str(cfg), "--out", str(tmp_path / "a")]) == 0
    state = json.loads(mx.load(str(tmp_path / "ck" / "checkpoint.safetensors"),
                               return_metadata=True)[1]["state"])
    assert state["step"] == 8 and state["run"]["spec"]["tokens"] == 2048
    # "resume": true in the config continues it; a completed run resumes to the same weights
    cfg.write_text(json.dumps({"checkpoint_dir": str(tmp_path / "ck"), "checkpoint-every": 8,
                               "tokens": 2048, "resume": True}))
    assert main(["--quiet", *argv, "--config", str(cfg), "--out", str(tmp_path / "b")]) == 0
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    capsys.readouterr()


@pytest.mark.parametrize("name", ["corpus.md", "corpus.CSV", "CORPUS.TXT"])
def test_corpus_file_with_any_suffix_is_text(tmp_path, name):
    from circuits.pipeline.corpus import corpus_texts

    p = tmp_path / name
    p.write_text("".join(f"Mary and John went to the shop {i} . John gave a book to Mary .\n"
                         for i in range(40)))
    texts = corpus_texts(None, str(p), n_docs=10)  # a file needs no model
    assert len(texts) == 40 and texts[0].startswith("Mary and John")
    if name == "corpus.md":  # and trains (today's code trains on the path string, and fails)
        assert main(["--quiet", "train", "--sites", "L0.mlp_in", "--arch", "topk", "--width", "16",
                     "--k", "2", "--tokens", "512", "--batch-tokens", "256", "--corpus", str(p),
                     "--out", str(tmp_path / "out")]) == 0
        assert (tmp_path / "out" / "dictionaries" / "index.json").is_file()
