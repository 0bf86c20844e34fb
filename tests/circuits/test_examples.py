"""Each script in examples/ runs end to end at a reduced size and produces its outputs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script, *args, timeout=600):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), *map(str, args)],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _float(pattern, text):
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in output:\n{text}"
    return float(m.group(1))


def test_ioi_circuit(tmp_path):
    out = _run("ioi_circuit.py", "--tokens", 16384, "--out", tmp_path)
    assert 0 <= _float(r"replacement ([-\d.]+)", out) <= 1
    assert (tmp_path / "ioi_circuit.svg").stat().st_size > 1000


def test_induction_circuit(tmp_path):
    out = _run("induction_circuit.py", "--n", 20, "--out", tmp_path)
    assert _float(r"node ROC AUC = ([\d.]+)", out) >= 0.9  # the organism's circuit is crisp
    assert "previous_token heads: L0H" in out
    assert (tmp_path / "induction_components.svg").exists()


def test_train_saes_on_your_model(tmp_path):
    out = _run("train_saes_on_your_model.py", "--tokens", 8192, "--width", 64, "--k", 4,
               "--layers", "1,2", "--out", tmp_path / "saes")
    assert (tmp_path / "saes" / "index.json").exists() and "fvu" in out


def test_steer_with_features():
    out = _run("steer_with_features.py", "--tokens", 8192)
    before, after = (_float(p, out) for p in (r"ablate \(constrained\): logit diff ([-\d.]+)",
                                              r"ablate \(constrained\): logit diff [-\d.]+ -> ([-\d.]+)"))
    edge = _float(r"edge ([-+\d.]+)", out)
    # constrained ablation removes exactly the feature's direct effect: the graph edge
    assert after == pytest.approx(before - edge, abs=2e-3)


def test_compare_dictionaries(tmp_path):
    out = _run("compare_dictionaries.py", "--tokens", 8192, "--out", tmp_path)
    assert (tmp_path / "pareto.svg").exists()
    assert {"relu", "jumprelu", "gated"} <= set(re.findall(r"^\s*(\w+)", out, re.M))
