"""Bad input to ``circuits train`` and ``circuits evaluate``: one line naming the problem
and the fix, a non-zero exit, nothing written (``tests/circuits/cli_harness.py``).

Covers zero/negative counts, k > width, a budget below one batch, corpus specs (missing,
directory, empty, too short, undecodable, malformed tables, unknown task), config files
(unknown keys, wrong types and values), checkpoint flags, resume mismatches (each changed
flag named with its checkpoint and current values), and evaluate's --dicts checks and
non-finite metrics."""

from pathlib import Path

import mlx.core as mx
import pytest

from circuits.cli import main
from cli_harness import assert_bad_input

SMALL = ["--sites", "L0.mlp_in", "--arch", "topk", "--width", "32", "--k", "4",
         "--tokens", "512", "--batch-tokens", "256"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-step run with a checkpoint: (train --out, checkpoint dir)."""
    d = tmp_path_factory.mktemp("trained")
    assert main(["--quiet", "train", *SMALL, "--checkpoint-dir", str(d / "ck"),
                 "--out", str(d / "run")]) == 0
    assert (d / "ck" / "checkpoint.safetensors").is_file()
    return d / "run", d / "ck"


def _files(t: Path) -> None:
    (t / "empty.txt").write_text("")
    (t / "short.txt").write_text("hi there\n")
    (t / "blob.txt").write_bytes(b"\xff\xfe\x00\x81 not text")
    (t / "bad.jsonl").write_text("{not json\n")
    (t / "nocol.jsonl").write_text('{"body": "x"}\n')
    (t / "file.txt").write_text("a file, not a directory\n")
    (t / "emptyck").mkdir()


TRAIN = {  # id: (extra argv with {t} = tmp_path, {out} = --out, regex the message must match)
    "batch-tokens-zero": (["--batch-tokens", "0"], r"--batch-tokens.*>= 1"),
    "tokens-zero": (["--tokens", "0"], r"--tokens.*>= 1"),
    "width-zero": (["--width", "0"], r"--width.*>= 1"),
    "k-zero": (["--k", "0"], r"--k.*>= 1"),
    "k-negative": (["--k", "-3"], r"--k.*>= 1"),
    "width-negative": (["--width", "-5"], r"--width.*>= 1"),
    "tokens-negative": (["--tokens", "-1"], r"--tokens.*>= 1"),
    "k-above-width": (["--arch", "topk", "--width", "32", "--k", "64"],
                      r"--k 64 exceeds --width 32.*lower --k or raise --width"),
    "tokens-below-batch": (["--tokens", "1000", "--batch-tokens", "2048"],
                           r"--tokens 1000 is less than --batch-tokens 2048.*no training step"),
    "checkpoint-every-zero": (["--checkpoint-dir", "{t}/ck", "--checkpoint-every", "0"],
                              r"--checkpoint-every.*>= 1"),
    "seed-negative": (["--seed", "-1"], r"--seed.*>= 0"),
    "lr-zero": (["--lr", "0"], r"--lr.*> 0"),
    "lr-nan": (["--lr", "nan"], r"--lr.*> 0"),
    "corpus-missing": (["--corpus", "{t}/missing.md"], r"corpus file .*missing\.md does not exist"),
    "corpus-directory": (["--corpus", "{t}"], r"is a directory"),
    "corpus-empty-string": (["--corpus", ""], r"--corpus is empty"),
    "corpus-task-no-name": (["--corpus", "task:"], r"names no task.*task:ioi"),
    "corpus-unknown-task": (["--corpus", "task:nosuch"], r"unknown task 'nosuch'"),
    "corpus-empty-file": (["--corpus", "{t}/empty.txt"], r"empty\.txt holds no text"),
    "corpus-too-short": (["--sites", "L0.mlp_in", "--corpus", "{t}/short.txt"],
                         r"corpus is too short: 1 document\(s\) with \d+ tokens.*longer corpus"),
    "corpus-too-short-new-checkpoint-dir": (  # the new checkpoint dir is removed again
        ["--sites", "L0.mlp_in", "--corpus", "{t}/short.txt", "--checkpoint-dir", "{t}/newck"],
        r"corpus is too short"),
    "corpus-not-utf8": (["--corpus", "{t}/blob.txt"], r"blob\.txt is not UTF-8 text"),
    "corpus-bad-jsonl": (["--corpus", "{t}/bad.jsonl"], r"bad\.jsonl is not a valid jsonl"),
    "corpus-no-text-column": (["--corpus", "{t}/nocol.jsonl"], r"no 'text' column"),
    "resume-without-dir": (["--resume"], r"--resume needs --checkpoint-dir"),
    "every-without-dir": (["--checkpoint-every", "5"], r"--checkpoint-every needs --checkpoint-dir"),
    "resume-empty-dir": (["--resume", "--checkpoint-dir", "{t}/emptyck"],
                         r"no checkpoint in .*emptyck.*drop --resume"),
    "checkpoint-dir-is-file": (["--checkpoint-dir", "{t}/file.txt"], r"--checkpoint-dir .* is a file"),
    "checkpoint-dir-inside-out": (["--checkpoint-dir", "{out}/ck"], r"lies inside --out"),
    "lr-diverges": (["--sites", "L0.mlp_in", "--arch", "topk", "--lr", "1e35"],
                    r"loss became non-finite by step \d+; lower --lr"),
    "sites-empty": (["--sites", ""], r"--sites"),
    "sites-out-of-range": (["--sites", "L9.mlp_in"], r"L9|layer"),
}

CONFIGS = {  # id: (config file content, regex)
    "k-not-a-number": ('{"k": "abc"}', r"'k'.*'abc'"),
    "k-fraction": ('{"k": 1.5}', r"'k'.*integer"),
    "width-bool": ('{"width": true}', r"'width'"),
    "unknown-key": ('{"nonsense": 1}', r"'nonsense' is not an option"),
    "arch-unknown": ('{"arch": "nope"}', r"'arch'.*one of"),
    "resume-not-bool": ('{"resume": "yes"}', r"'resume'.*true or false"),
    "tokens-zero": ('{"tokens": 0}', r"'tokens'.*>= 1"),
    "checkpoint-every-negative": ('{"checkpoint_every": -2, "checkpoint_dir": "ck"}',
                                  r"'checkpoint_every'.*>= 1"),
    "corpus-not-string": ('{"corpus": 5}', r"corpus"),
    "not-json": ('{"k": ', r"not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(TRAIN))
def test_train_bad_input(case, tmp_path, capsys):
    _files(tmp_path)
    extra, match = TRAIN[case]
    out = tmp_path / "out"
    argv = ["train", "--width", "32", "--k", "4", "--tokens", "512", "--batch-tokens", "256",
            *[a.format(t=tmp_path, out=out) for a in extra], "--out", out]
    assert_bad_input(capsys, argv, match, out=out, watch=(tmp_path / "emptyck",))


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_train_bad_config(case, tmp_path, capsys):
    text, match = CONFIGS[case]
    cfg = tmp_path / "train.json"
    cfg.write_text(text)
    out = tmp_path / "out"
    # flags win over config keys, so the base command sets none of the keys under test
    assert_bad_input(capsys, ["train", "--sites", "L0.mlp_in", "--batch-tokens", "256",
                              "--config", cfg, "--out", out], match, out=out, watch=(cfg,))


RESUME = {  # flag -> (changed value, regex naming it with checkpoint -> current values)
    "--k": ("8", r"--k: 4 -> 8"),
    "--width": ("64", r"--width: 32 -> 64"),
    "--arch": ("batchtopk", r"--arch: 'topk' -> 'batchtopk'"),
    "--sites": ("L1.mlp_in", r"--sites: \['L0.mlp_in'\] -> \['L1.mlp_in'\]"),
    "--lr": ("0.01", r"--lr: None -> 0.01"),
    "--seed": ("3", r"--seed: 0 -> 3"),
    "--tokens": ("1024", r"--tokens: 512 -> 1024"),
    "--corpus": ("task:ioi", r"--corpus: 'organism' -> 'task:ioi'"),
    "--kind": ("sae", r"--kind: 'transcoder' -> 'sae'"),
    "--batch-tokens": ("128", r"--batch-tokens: 256 -> 128"),
}


def _with(argv: list, flag: str, value: str) -> list:
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


@pytest.mark.parametrize("flag", sorted(RESUME))
def test_resume_with_changed_flag_is_refused(flag, trained, tmp_path, capsys):
    _, ck = trained
    value, match = RESUME[flag]
    out = tmp_path / "out"
    argv = ["train", *_with(SMALL, flag, value), "--checkpoint-dir", ck, "--resume", "--out", out]
    line = assert_bad_input(capsys, argv, r"cannot resume from checkpoint .*" + match, out=out,
                            watch=(ck,))
    assert "another --checkpoint-dir" in line


def test_resume_names_every_changed_flag(trained, tmp_path, capsys):
    _, ck = trained
    out = tmp_path / "out"
    argv = ["train", *_with(_with(SMALL, "--k", "2"), "--width", "16"), "--checkpoint-dir", ck,
            "--resume", "--out", out]
    assert_bad_input(capsys, argv, r"--k: 4 -> 2.*--width: 32 -> 16", out=out, watch=(ck,))


def test_new_run_refuses_a_directory_holding_a_checkpoint(trained, tmp_path, capsys):
    _, ck = trained
    out = tmp_path / "out"
    assert_bad_input(capsys, ["train", *SMALL, "--checkpoint-dir", ck, "--out", out],
                     r"already holds a checkpoint; pass --resume", out=out, watch=(ck,))


def test_corrupt_checkpoint_is_named(tmp_path, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "checkpoint.safetensors").write_bytes(b"garbage, not safetensors")
    out = tmp_path / "out"
    assert_bad_input(capsys, ["train", *SMALL, "--checkpoint-dir", ck, "--resume", "--out", out],
                     r"checkpoint .*checkpoint\.safetensors is unreadable.*delete it", out=out,
                     watch=(ck,))


# ------------------------------------------------------------------- evaluate ----
def test_evaluate_dicts_checks(trained, tmp_path, capsys):
    run, _ = trained
    out = tmp_path / "out"
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "emptydir").mkdir()
    cases = [(tmp_path / "nope", r"--dicts .*nope does not exist"),
             (tmp_path / "file.txt", r"--dicts .*file\.txt is a file"),
             (run, r"is a `circuits train` output directory; pass .*run/dictionaries"),
             (tmp_path / "emptydir", r"not a dictionaries directory \(it has no index\.json\)")]
    for dicts, match in cases:
        assert_bad_input(capsys, ["evaluate", "--dicts", dicts, "--out", out], match, out=out,
                         watch=(run,))


@pytest.mark.parametrize("extra, match", [
    (["--corpus", "{t}/missing.txt"], r"corpus file .*missing\.txt does not exist"),
    (["--corpus", "{t}/short.txt"], r"corpus is too short"),
    (["--corpus", "task:nosuch"], r"unknown task 'nosuch'"),
    (["--baseline", "median"], r"--baseline.*invalid choice|--baseline.*zero"),
    (["--config", "{t}/cfg.json"], r"'baseline'.*one of"),
], ids=["corpus-missing", "corpus-too-short", "unknown-task", "baseline-flag", "baseline-config"])
def test_evaluate_bad_input(extra, match, trained, tmp_path, capsys):
    run, _ = trained
    _files(tmp_path)
    (tmp_path / "cfg.json").write_text('{"baseline": "median"}')
    out = tmp_path / "out"
    argv = ["evaluate", "--dicts", run / "dictionaries", *[a.format(t=tmp_path) for a in extra],
            "--out", out]
    assert_bad_input(capsys, argv, match, out=out, watch=(run,))


@pytest.mark.parametrize("kind, match", [
    ("huge", r"dictionary L0\.mlp_in: (fvu|mse|ce_\w+|kl_\w+) is (nan|inf).*W_dec.*overflow"),
    ("zero", r"dictionary L0\.mlp_in: rel_bias is nan \(the reconstruction is zero"),
])
def test_evaluate_refuses_nonfinite_metrics(kind, match, trained, tmp_path, capsys):
    """Finite weights can still give NaN/inf metrics (float32 overflow; an all-zero
    decoder makes the relative bias 0/0): the error names the dictionary and the metric."""
    from sae import load_dictionaries, save_dictionaries

    run, _ = trained
    dicts = load_dictionaries(run / "dictionaries")
    (key, d), = dicts.items()
    if kind == "huge":
        d.W_dec = mx.sign(d.W_dec) * 3e38  # finite, but any sum of two entries overflows
    else:
        d.W_dec, d.b_dec = mx.zeros_like(d.W_dec), mx.zeros_like(d.b_dec)
    save_dictionaries({key: d}, tmp_path / "bad")
    out = tmp_path / "out"
    assert_bad_input(capsys, ["evaluate", "--dicts", tmp_path / "bad", "--out", out], match,
                     out=out, watch=(tmp_path / "bad",))
