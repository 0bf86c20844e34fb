"""The README's CLI quick start runs as written (smaller budgets), and the report of the
run finds every section the quick start produces."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from circuits.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
# Budgets only: every flag the README shows stays; these are appended (later flags win).
SMALL = {"train": ["--tokens", "8192", "--batch-tokens", "1024"], "features": ["--docs", "60"],
         "bench": ["--n", "8", "--methods", "eap", "eap-ig"]}


def quick_start() -> list[list[str]]:
    text = README.read_text()
    block = text[text.index("## Quick start: the CLI"):]
    block = re.search(r"```bash\n(.*?)```", block, re.S).group(1)
    cmds = []
    for line in block.splitlines():
        argv = shlex.split(line)
        if not argv or argv[0] != "circuits" or "|" in argv:
            continue
        cmds.append(argv[1:])
    return cmds


@pytest.mark.slow
def test_readme_quick_start_runs_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cmds = quick_start()
    assert [c[0] for c in cmds][:3] == ["train", "evaluate", "attribute"] and len(cmds) >= 12
    for argv in cmds:
        if argv[0] == "doctor":
            continue
        if argv[0] == "validate" and "--task" in argv:
            argv = argv + ["--n", "8"]
        code = main(["--quiet", *argv, *SMALL.get(argv[0], [])])
        err = capsys.readouterr().err
        assert code == 0, f"{' '.join(argv)} failed: {err}"
    assert main(["--json", "report", "--run", "out", "--overwrite"]) == 0
    rec = json.loads(capsys.readouterr().out)
    status = json.dumps(rec)
    html = (tmp_path / "out" / "report.html").read_text()
    for title in ("Dictionary quality", "Circuit", "Prune scores", "Feature-circuit validation",
                  "Component validation", "Benchmark", "Feature dashboards"):
        assert title in html, f"{title} missing from the report"
    assert "not found" not in status, status
    val = json.loads((tmp_path / "out" / "val" / "validation.json").read_text())
    assert f"{val['faithfulness']:.3f}"[:4] in html
