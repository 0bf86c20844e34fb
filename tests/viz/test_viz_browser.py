"""Headless Chromium: a feature dashboard, the index and the report load offline with
no console errors, their inline scripts run (``data-ok`` / ``data-index-ready`` set)
and no image is broken (the page's own count of ``naturalWidth == 0``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from viz import Section, Svg, faithfulness_curves, save_figure, write_dashboards, write_report
from viz.report import Links

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "",
                            shutil.which("chromium-browser") or "") if p and Path(p).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (/usr/bin/chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--window-size=1280,2000"]


def load(path: Path, tmp: Path, screenshot: Path | None = None) -> tuple[str, str]:
    """(DOM after load, stderr) of ``path`` in headless Chromium."""
    mode = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *mode, path.as_uri()],
                          capture_output=True, text=True, timeout=90, check=False)
    return proc.stdout, proc.stderr


def console_errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines()
            if "Uncaught" in ln or re.search(r"CONSOLE.*(error|Error)", ln) or "Failed to load resource" in ln]


def _records():
    ex = {"tokens": ["The", " cat", " sat"], "activations": [0.1, 3.0, -0.5]}
    return [{"feature": i, "site": "L0.resid_post", "density": 0.02 * (i + 1), "mean_activation": 1.0 + i,
             "max_activation": 3.0 + i, "label": f"cats {i}", "histogram": {"counts": [3, 5, 1], "edges": [0, 1, 2, 3]},
             "top_examples": [ex], "logit_effects": {"promoted": [[" cat", 0.4]], "suppressed": [[" dog", -0.2]]},
             "neighbours": [{"feature": 1 - i, "cosine": 0.6}]} for i in range(2)]


def test_dashboard_and_index_in_browser(tmp_path):
    paths = write_dashboards(_records(), tmp_path / "dash")
    for p in (paths[0], paths[-1]):
        dom, err = load(p, tmp_path)
        assert 'data-ok="1"' in dom, f"inline script did not run for {p.name}: {err[-2000:]}"
        assert 'data-broken-images="0"' in dom
        assert not console_errors(err), console_errors(err)
    # Drive the index's own script: sort by density (descending after two clicks), then search.
    probe = tmp_path / "dash" / "probe.html"
    probe.write_text(paths[-1].read_text().replace("</body>", """<script>
      var th = document.querySelectorAll('#features th')[3]; th.click(); th.click();
      var ids = Array.prototype.map.call(document.querySelectorAll('#features tbody tr'),
                                         function (r) { return r.cells[0].textContent; });
      document.body.dataset.sorted = ids.join(',');
      var box = document.getElementById('search'); box.value = 'cats 1';
      box.dispatchEvent(new Event('input'));
      document.body.dataset.visible = String(Array.prototype.filter.call(
        document.querySelectorAll('#features tbody tr'), function (r) { return r.style.display !== 'none'; }).length);
    </script></body>"""))
    dom, err = load(probe, tmp_path)
    assert 'data-index-ready="1"' in dom and 'data-sorted="1,0"' in dom and 'data-visible="1"' in dom, err[-2000:]


def test_report_in_browser(circuit, tmp_path):
    fig = faithfulness_curves(pd.DataFrame({"method": ["m"] * 3, "pct": [1, 10, 100], "faithfulness": [.2, .7, 1]}))
    png = save_figure(fig, tmp_path / "f.png")
    out = write_report(tmp_path / "report.html", [
        Section("Circuit", [circuit]), Section("Curves", [fig, png]),
        Section("Heatmap", [Svg('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="5" '
                                'height="5"/></svg>')]),
        Section("Links", [Links({"dash": "dash/index.html"})])])
    dom, err = load(out, tmp_path)
    assert 'data-ok="1"' in dom and 'data-broken-images="0"' in dom
    assert not console_errors(err), console_errors(err)
    shot = tmp_path / "report.png"
    load(out, tmp_path, screenshot=shot)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_detectors_catch_errors(tmp_path):
    """Negative control: a broken image and a throwing script are detected."""
    from viz.html import page

    bad = tmp_path / "bad.html"
    bad.write_text(page("bad", '<img alt="x" src="data:image/png;base64,AAAA">', "throw new Error('boom');"))
    dom, err = load(bad, tmp_path)
    assert 'data-broken-images="1"' in dom
    assert any("boom" in ln for ln in console_errors(err)), err[-2000:]
