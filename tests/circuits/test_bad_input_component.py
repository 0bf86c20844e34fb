"""Bad-input matrix for component-level ``circuits validate`` and for ``circuits bench``.

Each case asserts the contract of ``cli_harness.assert_bad_input``: a non-zero exit,
one stderr line naming the problem (matched by a regex that names the flag, file or
field and, where there is one, the fix), no traceback or raw exception name, and
``--out`` plus every watched input exactly as before, with no staging left. All
cases use the shipped 2-layer induction organism (or a tiny gpt2 for the
architecture check) and fail before any discovery runs.
"""

from __future__ import annotations

import json
import shutil

import pytest

import attribution  # noqa: F401  (BLAS before mlx)
from attribution.tiny import make_tiny_model
from cli_harness import assert_bad_input
from circuits import organisms

GT_TASK = {"circuit": ["L0H0", "L1H1"], "clean_metric": 15.0, "empty_metric": 0.7,
           "nodes": {"L0H0": 10.0}, "paths": {"L0H0->L1H1": 14.0}}
ROW = {"prompt": "99 candle 90 66 99 candle", "corrupted_prompt": "50 Karen 32 64 99 candle",
       "answer": "90", "wrong_answer": "Hugo"}


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """Input files: ground truths (good and broken), task files, a model copy, a gpt2."""
    d = tmp_path_factory.mktemp("badcomp")
    org = organisms.path("induction")
    ind = d / "ind"  # a user model directory without ground_truth.json
    shutil.copytree(org, ind, ignore=shutil.ignore_patterns("ground_truth.json"))
    make_tiny_model("gpt2", d / "gpt2")

    def gt(name, obj):
        (d / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))

    gt("gt.json", {"model": "x", "tasks": {"induction": GT_TASK}})
    shutil.copy(d / "gt.json", d / "gpt2" / "ground_truth.json")
    gt("gt2.json", {"tasks": {"a": GT_TASK, "b": GT_TASK}})
    gt("gt_badjson.json", '{"tasks": {')
    gt("gt_list.json", [1, 2])
    gt("gt_notasks.json", {"model": "x"})
    gt("gt_emptytasks.json", {"tasks": {}})
    gt("gt_nocircuit.json", {"tasks": {"induction": {"clean_metric": 1.0, "empty_metric": 0.0}}})
    gt("gt_badmetric.json", {"tasks": {"induction": {**GT_TASK, "clean_metric": "high"}}})
    gt("gt_unknowncomp.json", {"tasks": {"induction": {**GT_TASK, "circuit": ["L0H0", "L7H0"]}}})
    gt("gt_badname.json", {"tasks": {"induction": {**GT_TASK, "circuit": ["head3"]}}})
    gt("gt_badpath.json", {"tasks": {"induction": {**GT_TASK, "paths": {"L0H0": 1.0}}}})
    gt("gt_badn.json", {"config": {"n": 0}, "tasks": {"induction": GT_TASK}})
    gt("gt_badkey.json", {"config": {"examples": 5}, "tasks": {"induction": GT_TASK}})
    gt("gt_extrafield.json", {"tasks": {"induction": {**GT_TASK, "circuit_nodes": []}}})
    (d / "task.jsonl").write_text(json.dumps(ROW) + "\n")
    (d / "broken.jsonl").write_text(json.dumps(ROW) + "\n{ not json\n")
    (d / "norows.jsonl").write_text(json.dumps({"prompt": "99"}) + "\n")
    return d


IND = str(organisms.path("induction"))
VAL = ["validate", "--model", IND, "--task", "induction", "--n", "4"]
BENCH = ["bench", "--organisms", "induction", "--methods", "eap", "--n", "4"]
USER = ["bench", "--model", "{d}/ind", "--methods", "eap", "--n", "4"]
CASES = [
    # --- component validate: selection and method flags -----------------------------
    ("val-method", [*VAL, "--method", "magic"], r"--method.*'magic'.*eap, eap-ig, exact, acdc"),
    ("val-ablation", [*VAL, "--ablation", "magic"], r"ablation.*magic"),
    ("val-n-zero", [*VAL[:-2], "--n", "0"], r"--n must be an integer >= 1"),
    ("val-n-text", [*VAL[:-2], "--n", "many"], r"--n must be an integer.*'many'"),
    ("val-topn-zero", [*VAL, "--top-n", "0"], r"--top-n must be an integer >= 1"),
    ("val-topn-frac", [*VAL, "--top-n", "2.5"], r"--top-n must be an integer"),
    ("val-topn-and-threshold", [*VAL, "--top-n", "2", "--threshold", "0.1"],
     r"--top-n and --threshold.*give one"),
    ("val-threshold-zero", [*VAL, "--threshold", "0"], r"--threshold must be a finite number > 0"),
    ("val-threshold-negative", [*VAL, "--threshold", "-1"], r"--threshold must be a finite number > 0"),
    ("val-threshold-nan", [*VAL, "--threshold", "nan"], r"--threshold must be a finite number"),
    ("val-topn-too-many", [*VAL, "--top-n", "100000"], r"--top-n 100000 exceeds the 54 edges.*at most 54"),
    ("val-topn-too-many-nodes", [*VAL, "--level", "node", "--top-n", "12"],
     r"--top-n 12 exceeds the 11 nodes"),
    ("val-ig-steps-zero", [*VAL, "--ig-steps", "0"], r"--ig-steps must be an integer >= 1"),
    ("val-ig-steps-wrong-method", [*VAL, "--method", "eap", "--ig-steps", "4"],
     r"--ig-steps applies to --method eap-ig only"),
    ("val-acdc-negative", [*VAL, "--method", "acdc", "--acdc-threshold", "-0.5"],
     r"--acdc-threshold must be a finite number >= 0"),
    ("val-acdc-wrong-method", [*VAL, "--method", "exact", "--acdc-threshold", "0.1"],
     r"--acdc-threshold applies to --method acdc only"),
    ("val-topn-with-acdc", [*VAL, "--method", "acdc", "--top-n", "3"],
     r"do not apply to --method acdc.*--acdc-threshold"),
    ("val-level", [*VAL, "--level", "neuron"], r"--level.*'neuron'.*edge, node"),
    ("val-qkv", [*VAL, "--qkv", "both"], r"--qkv.*'both'.*joint, separate"),
    ("val-seed-negative", [*VAL, "--seed", "-1"], r"--seed must be an integer >= 0"),
    # --- component validate: task and model -----------------------------------------
    ("val-task-unknown", ["validate", "--model", IND, "--task", "nosuchtask"], r"unknown task.*known tasks"),
    ("val-task-file-missing", ["validate", "--model", IND, "--task", "{d}/missing.jsonl"],
     r"task file .*missing.jsonl does not exist"),
    ("val-task-file-broken", ["validate", "--model", IND, "--task", "{d}/broken.jsonl"],
     r"broken.jsonl, line 2: invalid JSON"),
    ("val-task-file-fields", ["validate", "--model", IND, "--task", "{d}/norows.jsonl"],
     r"line 1: missing field.*corrupted_prompt"),
    ("val-not-llama", ["validate", "--model", "{d}/gpt2", "--task", "induction", "--n", "4"],
     r"llama-family.*'gpt2'.*--circuit"),
    # --- bench: flags ---------------------------------------------------------------
    ("bench-organism", ["bench", "--organisms", "nosuch"], r"unknown organism 'nosuch'.*--model DIR"),
    ("bench-method", [*BENCH[:3], "--methods", "eap", "magic"], r"--methods: unknown value 'magic'"),
    ("bench-no-method", [*BENCH[:3], "--methods"], r"--methods needs at least one"),
    ("bench-ablation", [*BENCH, "--ablations", "noise"], r"--ablations: unknown value 'noise'.*counterfactual"),
    ("bench-n-zero", [*BENCH[:-2], "--n", "0"], r"--n must be an integer >= 1"),
    ("bench-ig-steps", [*BENCH, "--ig-steps", "0"], r"--ig-steps must be an integer >= 1"),
    ("bench-acdc-threshold", [*BENCH, "--acdc-threshold", "-1"], r"--acdc-threshold must be a finite number >= 0"),
    ("bench-qkv", [*BENCH, "--qkv", "both"], r"--qkv: unknown value 'both'"),
    ("bench-task-unknown", [*BENCH, "--tasks", "nosuchtask"], r"unknown task 'nosuchtask'"),
    ("bench-task-file-missing", [*BENCH, "--tasks", "{d}/missing.jsonl"], r"task file .*missing.jsonl does not exist"),
    ("bench-task-file-broken", [*USER, "--ground-truth", "{d}/gt.json", "--tasks", "{d}/broken.jsonl"],
     r"broken.jsonl, line 2: invalid JSON"),
    # --- bench: user model and ground truth -----------------------------------------
    ("bench-model-and-organisms", [*USER, "--organisms", "induction"], r"--model DIR .* or --organisms .*not both"),
    ("bench-model-missing", ["bench", "--model", "{d}/nomodel", "--methods", "eap"],
     r"model directory .*nomodel does not exist"),
    ("bench-no-ground-truth", USER, r"ind has no ground_truth.json; pass one with --ground-truth"),
    ("bench-gt-missing", [*USER, "--ground-truth", "{d}/nope.json"], r"ground-truth file .*nope.json does not exist"),
    ("bench-gt-dir", [*USER, "--ground-truth", "{d}"], r"is a directory; give the JSON file"),
    ("bench-gt-badjson", [*USER, "--ground-truth", "{d}/gt_badjson.json"], r"is not valid JSON \(line 1"),
    ("bench-gt-list", [*USER, "--ground-truth", "{d}/gt_list.json"], r"must be a JSON object with 'tasks'"),
    ("bench-gt-notasks", [*USER, "--ground-truth", "{d}/gt_notasks.json"], r"lacks field 'tasks'"),
    ("bench-gt-emptytasks", [*USER, "--ground-truth", "{d}/gt_emptytasks.json"], r"'tasks' must be a non-empty"),
    ("bench-gt-nocircuit", [*USER, "--ground-truth", "{d}/gt_nocircuit.json"],
     r"task 'induction' lacks field 'circuit' \(a list of component names"),
    ("bench-gt-badmetric", [*USER, "--ground-truth", "{d}/gt_badmetric.json"],
     r"field 'clean_metric' must be a number, got 'high'"),
    ("bench-gt-unknown-component", [*USER, "--ground-truth", "{d}/gt_unknowncomp.json"],
     r"circuit: unknown component 'L7H0' for this model \(2 layers x 4 heads"),
    ("bench-gt-bad-name", [*USER, "--ground-truth", "{d}/gt_badname.json"],
     r"'head3' is not a component name; write L<layer>H<head>"),
    ("bench-gt-bad-path", [*USER, "--ground-truth", "{d}/gt_badpath.json"], r"'L0H0' is not 'sender->receiver'"),
    ("bench-gt-config-n", [*USER, "--ground-truth", "{d}/gt_badn.json"], r"config 'n' must be an integer >= 1"),
    ("bench-gt-config-key", [*USER, "--ground-truth", "{d}/gt_badkey.json"],
     r"config has unknown key\(s\) 'examples'; valid: n, seed"),
    ("bench-gt-extra-field", [*USER, "--ground-truth", "{d}/gt_extrafield.json"],
     r"unknown field\(s\) 'circuit_nodes'; valid: task, metric"),
    ("bench-gt-task-absent", [*USER, "--ground-truth", "{d}/gt.json", "--tasks", "ioi"],
     r"gt.json has no task 'ioi'; it has: induction"),
    ("bench-gt-file-unmatched", [*USER, "--ground-truth", "{d}/gt2.json", "--tasks", "{d}/task.jsonl"],
     r"task file .*task.jsonl matches no task of .*tasks: a, b\).*name the ground-truth task after the file"),
    ("bench-gt-task-not-builtin", [*USER, "--ground-truth", "{d}/gt2.json"],
     r"task 'a' is not a built-in task .*--tasks FILE.jsonl"),
    ("bench-gt-several-organisms", ["bench", "--organisms", "induction", "ioi", "--ground-truth", "{d}/gt.json"],
     r"--ground-truth replaces one model's ground truth"),
    ("bench-not-llama", ["bench", "--model", "{d}/gpt2", "--methods", "eap"], r"llama-family.*'gpt2'"),
]


@pytest.mark.parametrize("argv,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(argv, match, d, tmp_path, capsys):
    argv = [a.format(d=d) for a in argv]
    out = tmp_path / "out"
    files = tuple(p for p in d.iterdir() if p.is_file())
    assert_bad_input(capsys, [*argv, "--out", out], match, out=out, watch=files)


def test_at_least_25_cases():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)
