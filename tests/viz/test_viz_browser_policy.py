"""The browser tests' missing-Chromium policy, run in a child pytest with Chromium
hidden (``MLX_CIRCUITS_CHROMIUM`` pointing at nothing): with ``CI`` set they FAIL,
naming the install command; without it they skip with that command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _child(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["MLX_CIRCUITS_CHROMIUM"] = str(tmp_path / "no-such-chromium")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider",
                           str(HERE / "test_viz_browser.py"), "-k", "detectors"],
                          cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_chromium_fails_on_ci(tmp_path, ci):
    proc = _child(tmp_path, ci)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "1 failed" in out and "CI is set but Chromium not found" in out
    assert "apt-get install -y chromium" in out


@pytest.mark.parametrize("ci", [None, "false"])
def test_missing_chromium_skips_elsewhere(tmp_path, ci):
    proc = _child(tmp_path, ci)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "1 skipped" in out and "apt-get install -y chromium" in out and "scripts/system_deps.sh" in out
