"""The README's Python API blocks run as written (with a smaller token budget)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks():
    text = README.read_text()
    api = text[text.index("## Python API"):text.index("### Using a real model")]
    return re.findall(r"```python\n(.*?)```", api, re.S)


def test_python_api_blocks_run(tmp_path, monkeypatch):
    blocks = _blocks()
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    ns: dict = {}
    for code in blocks:
        exec(compile(code.replace("2**18", "2**13"), str(README), "exec"), ns)  # noqa: S102
    assert (tmp_path / "out" / "circuit.svg").stat().st_size > 1000
    assert -10 < ns["check"].faithfulness < 10
    assert ns["comp"].ablation == "counterfactual"
    assert set(ns["grads"]) == {ns["Site"](1, "mlp_out")}
