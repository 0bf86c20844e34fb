"""Bad-input matrix for the CLI's shared parts and for attribute, prune, validate
(feature level), features, organism, demo and doctor.

Each case asserts the contract of ``cli_harness.assert_bad_input``: a non-zero
exit, one stderr line naming the problem, no traceback or raw exception name, and
``--out`` (plus every watched input) exactly as before, with no staging left.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_harness import assert_bad_input
from circuits.cli import main

IOI_ROW = {"prompt": "Then, Mary and John went to the store. John gave a drink to",
           "corrupted_prompt": "Then, Mary and John went to the store. Anna gave a drink to",
           "answer": "Mary", "wrong_answer": "John"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """train -> attribute -> prune on the ioi organism at tiny budgets, plus input files."""
    d = tmp_path_factory.mktemp("badcli")
    assert main(["--quiet", "train", "--tokens", "8192", "--batch-tokens", "1024", "--width", "64",
                 "--k", "4", "--arch", "topk", "--out", str(d / "tc")]) == 0
    assert main(["--quiet", "attribute", "--dicts", str(d / "tc" / "dictionaries"),
                 "--out", str(d / "graph")]) == 0
    assert main(["--quiet", "prune", "--graph", str(d / "graph"), "--out", str(d / "circuit")]) == 0
    (d / "task.jsonl").write_text(json.dumps(IOI_ROW) + "\n")
    (d / "unk_task.jsonl").write_text(json.dumps({**IOI_ROW, "prompt": "Then, Zorblax and John went",
                                                  "corrupted_prompt": "Then, Zorblax and Anna went"}) + "\n")
    (d / "bad.json").write_text("{ not json")
    (d / "list.json").write_text("[1, 2]")
    (d / "badkey.json").write_text('{"nonsense": 1}')
    (d / "badtype.json").write_text('{"batch_size": "many"}')
    (d / "badchoice.json").write_text('{"method": "magic"}')
    (d / "negcfg.json").write_text('{"top": -3}')
    (d / "boolcfg.json").write_text('{"feature_edges": "yes"}')
    (d / "afile").write_text("x")
    nomodel = d / "notamodel"
    nomodel.mkdir()
    (nomodel / "readme.txt").write_text("not a model")
    return d


D = "{d}"
DICTS = ["--dicts", "{d}/tc/dictionaries"]
ATTR = ["attribute", *DICTS]
CIRC = ["validate", "--circuit", "{d}/circuit/graph", *DICTS]
CASES = [
    # --- parsing and shared flags -------------------------------------------------
    ("no-command", [], "required"),
    ("unknown-command", ["frobnicate"], "invalid choice"),
    ("unknown-flag", ["prune", "--graph", "{d}/graph", "--nodes", "3"], "unrecognized"),
    ("bad-float", ["prune", "--graph", "{d}/graph", "--node-threshold", "x"], "node-threshold"),
    ("node-threshold>1", ["prune", "--graph", "{d}/graph", "--node-threshold", "1.5"], r"\[0, 1\]"),
    ("node-threshold-0", ["prune", "--graph", "{d}/graph", "--node-threshold", "0"], r"\(0, 1\]"),
    ("edge-threshold<0", ["prune", "--graph", "{d}/graph", "--edge-threshold", "-0.1"], "edge-threshold"),
    ("top-0", ["prune", "--graph", "{d}/graph", "--method", "top", "--top", "0"], ">= 1"),
    ("top-negative", ["prune", "--graph", "{d}/graph", "--method", "top", "--top", "-5"], ">= 1"),
    ("abs-threshold-neg", ["prune", "--graph", "{d}/graph", "--method", "threshold", "--abs-threshold", "-1"],
     "abs-threshold"),
    ("abs-threshold-nan", ["prune", "--graph", "{d}/graph", "--method", "threshold", "--abs-threshold", "nan"],
     "abs-threshold"),
    ("prune-missing-graph", ["prune", "--graph", "{d}/nope"], "nope"),
    ("prune-graph-is-file", ["prune", "--graph", "{d}/afile"], "afile"),
    ("prune-bad-method", ["prune", "--graph", "{d}/graph", "--method", "magic"], "invalid choice"),
    ("config-missing", ["prune", "--graph", "{d}/graph", "--config", "{d}/nope.json"], "does not exist"),
    ("config-invalid-json", ["prune", "--graph", "{d}/graph", "--config", "{d}/bad.json"], "not valid JSON"),
    ("config-not-object", ["prune", "--graph", "{d}/graph", "--config", "{d}/list.json"], "table/object"),
    ("config-unknown-key", ["prune", "--graph", "{d}/graph", "--config", "{d}/badkey.json"], "nonsense"),
    ("config-bad-type", [*ATTR, "--config", "{d}/badtype.json"], "batch_size"),
    ("config-bad-choice", [*ATTR, "--config", "{d}/badchoice.json"], "method"),
    ("config-negative", ["prune", "--graph", "{d}/graph", "--method", "top", "--config", "{d}/negcfg.json"],
     "top"),
    ("config-bool-as-string", [*ATTR, "--config", "{d}/boolcfg.json"], "true or false"),
    ("out-nonempty", ["prune", "--graph", "{d}/graph", "--out", "{d}/circuit"], "--overwrite"),
    ("out-is-file", ["prune", "--graph", "{d}/graph", "--out", "{d}/afile"], "is a file"),
    ("out-under-file", ["prune", "--graph", "{d}/graph", "--out", "{d}/afile/sub"], "not a directory"),
    ("out-contains-input", ["prune", "--graph", "{d}/circuit/graph", "--out", "{d}/circuit", "--overwrite"],
     "inside --out"),
    ("doctor-size-0", ["doctor", "--size", "0"], ">= 1"),
    # --- attribute ----------------------------------------------------------------
    ("attr-missing-dicts", ["attribute", "--dicts", "{d}/nope"], "--dicts"),
    ("attr-dicts-is-file", ["attribute", "--dicts", "{d}/afile"], "afile"),
    ("attr-missing-model", [*ATTR, "--model", "{d}/nomodel"], "does not exist"),
    ("attr-model-is-file", [*ATTR, "--model", "{d}/afile"], "is a file"),
    ("attr-not-a-model", [*ATTR, "--model", "{d}/notamodel"], "notamodel"),
    ("attr-example-past-end", [*ATTR, "--task", "{d}/task.jsonl", "--example", "100"], "past the end"),
    ("attr-example-negative", [*ATTR, "--example", "-1"], ">= 0"),
    ("attr-example-not-int", [*ATTR, "--example", "two"], "example"),
    ("attr-unknown-task", [*ATTR, "--task", "nosuchtask"], "unknown task"),
    ("attr-missing-task-file", [*ATTR, "--task", "{d}/nope.jsonl"], "does not exist"),
    ("attr-prompt-and-task", [*ATTR, "--prompt", "Then, Mary went", "--task", "ioi"], "--prompt and --task"),
    ("attr-prompt-and-example", [*ATTR, "--prompt", "Then, Mary went", "--example", "2"], "--prompt and --task"),
    ("attr-answer-without-wrong", [*ATTR, "--prompt", "Then, Mary went", "--answer", "Mary"], "go together"),
    ("attr-answer-without-prompt", [*ATTR, "--answer", "Mary", "--wrong", "John"], "free --prompt"),
    ("attr-answer-equals-wrong", [*ATTR, "--prompt", "Then, Mary went", "--answer", "Mary", "--wrong", "Mary"],
     "same token"),
    ("attr-answer-unknown", [*ATTR, "--prompt", "Then, Mary went", "--answer", "Zorblax", "--wrong", "John"],
     "vocabulary"),
    ("attr-unk-prompt", [*ATTR, "--prompt", "Then, Zorblax went"], "does not know"),
    ("attr-unk-task-row", [*ATTR, "--task", "{d}/unk_task.jsonl"], "does not know"),
    ("attr-empty-prompt", [*ATTR, "--prompt", "   "], "empty"),
    ("attr-cf-length", [*ATTR, "--prompt", "Then, Mary went", "--counterfactual", "Then, Mary and John went"],
     "same length"),
    ("attr-logit-diff-free", [*ATTR, "--prompt", "Then, Mary went", "--target", "logit_diff"], "--answer"),
    ("attr-counterfactual-free", [*ATTR, "--prompt", "Then, Mary went", "--method", "ig",
                                  "--ablation", "counterfactual"], "--counterfactual"),
    ("attr-exact-ablation", [*ATTR, "--ablation", "mean"], "exact graph has no baseline"),
    ("attr-feature-edges-exact", [*ATTR, "--feature-edges"], "feature-edges"),
    ("attr-batch-0", [*ATTR, "--batch-size", "0"], ">= 1"),
    ("attr-edges-per-target-0", [*ATTR, "--edges-per-target", "0"], ">= 1"),
    ("attr-ig-steps-0", [*ATTR, "--ig-steps", "0", "--method", "ig"], ">= 1"),
    ("attr-bad-method", [*ATTR, "--method", "magic"], "invalid choice"),
    ("attr-jump-aware-tolerance", [*ATTR, "--method", "jump-aware", "--correct-tolerance", "2"], r"\[0, 1\]"),
    ("attr-jump-aware-feature-edges", [*ATTR, "--method", "jump-aware", "--feature-edges"], "feature"),
    ("attr-corrupt-dicts", ["attribute", "--dicts", "{d}/corrupt_dicts"], "corrupt_dicts|safetensors|read"),
    # --- validate (feature level) -------------------------------------------------
    ("val-missing-circuit", ["validate", "--circuit", "{d}/nope", *DICTS], "nope"),
    ("val-other-example", [*CIRC, "--example", "3"], "row 0 of task ioi.*row 3"),
    ("val-other-task", [*CIRC, "--task", "{d}/task.jsonl"], "was built from"),
    ("val-other-prompt", [*CIRC, "--prompt", "Then, Mary went"], "was built from"),
    ("val-other-model", [*CIRC, "--model", "{induction}"], "built on model"),
    ("val-other-dicts", ["validate", "--circuit", "{d}/circuit/graph", "--dicts", "{d}/tc2/dictionaries"],
     "other dictionaries"),
    ("val-graph-other-prompt", [*CIRC, "--graph", "{d}/graph_free"], "another prompt"),
    ("val-mean-feature", [*CIRC, "--ablation", "mean"], "counterfactual or zero"),
    ("val-component-prompt", ["validate", "--prompt", "Then, Mary went"], "feature circuits"),
    ("val-component-no-task", ["validate", "--model", "{plain}"], "needs a task"),
    ("val-missing-dicts", ["validate", "--circuit", "{d}/circuit/graph", "--dicts", "{d}/nope"], "--dicts"),
    # --- features -------------------------------------------------------------------
    ("feat-missing-dicts", ["features", "--dicts", "{d}/nope"], "--dicts"),
    ("feat-bad-site", ["features", *DICTS, "--site", "L0.bogus"], "bogus"),
    ("feat-absent-site", ["features", *DICTS, "--site", "L0.resid_post"], "no dictionary reads"),
    ("feat-max-features-0", ["features", *DICTS, "--max-features", "0"], ">= 1"),
    ("feat-max-features-neg", ["features", *DICTS, "--max-features", "-1"], ">= 1"),
    ("feat-docs-0", ["features", *DICTS, "--docs", "0"], ">= 1"),
    ("feat-missing-corpus", ["features", *DICTS, "--corpus", "{d}/nope.txt"], "nope.txt"),
    # --- organism, demo -------------------------------------------------------------
    ("org-card-unknown", ["organism", "card", "nosuch"], "nosuch"),
    ("org-train-unknown", ["organism", "train", "nosuch", "--out", "{t}/orgs"], "nosuch"),
    ("org-gt-unknown", ["organism", "ground-truth", "nosuch"], "nosuch"),
    ("org-no-action", ["organism"], "required"),
    ("demo-tokens-0", ["demo", "--tokens", "0", "--out", "{t}/demo"], ">= 1"),
    ("demo-out-nonempty", ["demo", "--out", "{d}/circuit"], "--overwrite"),
    ("demo-missing-model", ["demo", "--model", "{d}/nope", "--out", "{t}/demo"], "nope"),
]


@pytest.fixture(scope="module")
def extras(run):
    """Second dictionaries, a free-prompt graph, a corrupt dictionary copy, a non-organism model."""
    from circuits import organisms

    d = run
    if not (d / "tc2").exists():
        assert main(["--quiet", "train", "--tokens", "8192", "--batch-tokens", "1024", "--width", "64",
                     "--k", "4", "--arch", "topk", "--seed", "1", "--out", str(d / "tc2")]) == 0
        assert main(["--quiet", "attribute", *[a.format(d=d) for a in DICTS], "--prompt",
                     "Then, Mary went", "--out", str(d / "graph_free")]) == 0
        shutil.copytree(d / "tc" / "dictionaries", d / "corrupt_dicts")
        st = next((d / "corrupt_dicts").rglob("*.safetensors"))
        st.write_bytes(st.read_bytes()[:100])
        plain = d / "plain_model"
        shutil.copytree(organisms.path("ioi"), plain)
        (plain / "card.json").unlink()  # the same weights, but not a shipped organism any more
    return {"induction": str(organisms.path("induction")), "plain": str(d / "plain_model")}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, run, extras, tmp_path, capsys):
    name, argv, match = case
    fmt = {"d": run, "t": tmp_path, **extras}
    argv = [a.format(**fmt) for a in argv]
    out = None
    if "--out" in argv:
        out = Path(argv[argv.index("--out") + 1])
    elif argv and argv[0] in ("attribute", "prune", "validate", "features"):
        out = tmp_path / "out"
        argv += ["--out", str(out)]
    watch = tuple(Path(run / n) for n in ("graph", "circuit", "tc"))
    assert_bad_input(capsys, argv, match, out=out, watch=watch)
