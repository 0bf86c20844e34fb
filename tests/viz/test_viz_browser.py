"""Headless Chromium: a feature dashboard, the index and the report load offline with
no console errors, their inline scripts run (``data-ok`` / ``data-index-ready`` set)
and no image is broken (the page's own count of ``naturalWidth == 0``); a rendered
circuit SVG shows its target and edge-cap note and paints a non-blank screenshot; a
dashboard shows word-level tokens with spaces.

Chromium is found at ``$MLX_CIRCUITS_CHROMIUM`` (when set; a path that does not exist
means "missing"), ``/usr/bin/chromium`` or ``chromium``/``chromium-browser`` on PATH.
When it is missing the tests skip with the install command, and FAIL when ``CI`` is set:
a CI machine is expected to have run ``scripts/system_deps.sh`` (which installs it).
``VIZ_SCREENSHOT_DIR`` keeps the screenshots for a human look."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from viz import Section, Svg, faithfulness_curves, save_figure, write_dashboards, write_report
from viz.report import Links

INSTALL = "sudo apt-get update && sudo apt-get install -y chromium (or run `bash scripts/system_deps.sh` as root)"
"""How to get Chromium on Debian/Ubuntu, named in the skip/fail message."""


def find_chromium() -> str | None:
    """The Chromium executable (module docstring), or None."""
    forced = os.environ.get("MLX_CIRCUITS_CHROMIUM")
    if forced:
        return forced if Path(forced).is_file() else None
    for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if p and Path(p).exists():
            return p
    return None


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


CHROMIUM = find_chromium()


def require_chromium() -> str:
    """The Chromium path; skip, or fail on CI, when there is none. Called first in each test
    (not from a fixture, where ``pytest.fail`` would count as a setup error)."""
    if CHROMIUM is None:
        msg = f"Chromium not found (MLX_CIRCUITS_CHROMIUM, /usr/bin/chromium, PATH); install it: {INSTALL}"
        if on_ci():
            pytest.fail(f"CI is set but {msg}", pytrace=False)
        pytest.skip(msg)
    return CHROMIUM


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
    require_chromium()
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
    require_chromium()
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
    require_chromium()
    from viz.html import page

    bad = tmp_path / "bad.html"
    bad.write_text(page("bad", '<img alt="x" src="data:image/png;base64,AAAA">', "throw new Error('boom');"))
    dom, err = load(bad, tmp_path)
    assert 'data-broken-images="1"' in dom
    assert any("boom" in ln for ln in console_errors(err)), err[-2000:]


def _keep(shot: Path) -> None:
    keep = os.environ.get("VIZ_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


def _ink(png: Path) -> float:
    """Fraction of the screenshot's pixels that are not (near) white."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    return float((a < 200).mean())


def test_rendered_circuit_in_browser(tmp_path, capsys):
    """A large circuit through ``circuits render`` (default edge cap): the SVG loads, names
    its target and the cap, and its screenshot is a drawing, not a blank page."""
    require_chromium()
    from viz_synthetic import make_circuit

    from circuits.cli import main

    g = make_circuit(n_layers=6, n_pos=12, per_layer=15, n_errors=3, seed=0, fan_in=30, focus=5)
    g.save(tmp_path / "graph")
    svg = tmp_path / "circuit.svg"
    assert main(["--quiet", "render", "--graph", str(tmp_path / "graph"), "--out", str(svg)]) == 0
    capsys.readouterr()
    page = tmp_path / "circuit.html"
    page.write_text(f"""<!doctype html><html><body style="margin:0;background:white">
      <img id="fig" alt="circuit" src="{svg.name}" style="width:1280px">
      <script>window.addEventListener('load', function () {{
        var im = document.getElementById('fig');
        document.body.dataset.figWidth = String(im.naturalWidth);
      }});</script></body></html>""")
    dom, err = load(page, tmp_path)
    m = re.search(r'data-fig-width="(\d+)"', dom)
    assert m and int(m.group(1)) > 500, f"the SVG did not load as an image: {err[-2000:]}"
    text = svg.read_text()
    assert "target: " in text and "top logits: &quot; Mary&quot; (p=0.62)" in text
    assert f"showing the 120 strongest of {g.n_edges:,} edges" in text
    shot = tmp_path / "circuit_screenshot.png"
    load(page, tmp_path, screenshot=shot)  # the whole figure, scaled to the window width
    _keep(shot)
    assert 0.02 < _ink(shot) < 0.6, f"screenshot looks blank or solid: ink {_ink(shot):.3f}"


def test_dashboard_tokens_spaced_in_browser(tmp_path):
    """Word-level tokens (spaced by ``sae.features.vocab_strings``) read as words in the page."""
    require_chromium()
    from attribution.tokenizer import word_level_tokenizer
    from sae.features import token_strings

    tok = word_level_tokenizer(["old", "man", "painted", "the", "lamp"])

    class M:
        tokenizer, vocab_size = tok, len(tok)

    ids = tok.encode("the old man painted the lamp")
    rec = {**_records()[0], "top_examples": [{"tokens": token_strings(M, ids),
                                              "activations": [0.0, 0.1, 0.5, 3.0, 1.0, 0.2, 0.0]}]}
    page = write_dashboards([rec], tmp_path / "dash")[0]
    probe = page.with_name("probe_tokens.html")
    probe.write_text(page.read_text().replace("</body>", """<script>
      document.body.dataset.tokenText = document.querySelector('.tokens').innerText;
    </script></body>"""))
    dom, err = load(probe, tmp_path)
    assert 'data-token-text="<bos> the old man painted the lamp"' in dom.replace("&lt;", "<").replace("&gt;", ">"), \
        re.findall(r'data-token-text="[^"]*"', dom) or err[-2000:]
    shot = tmp_path / "dashboard_screenshot.png"
    load(page, tmp_path, screenshot=shot)
    _keep(shot)
    assert _ink(shot) > 0.005
