"""README screenshots of the explorer (``circuits serve``) on a real demo run, in headless Chromium.

Algorithm:
  1. The run: ``--run DIR`` (an existing ``circuits demo`` output), copied into a
     temporary folder so that the subgraph saved in step 3 never lands in it; otherwise
     the small demo of ``tests/circuits/test_explore_demo_browser.py`` (``run_demo`` at a
     reduced ``DemoConfig``, dashboards on, plus its ``run.json``) into a temporary folder.
  2. Serve it with the real CLI (``python -m circuits.cli serve --run RUN --port 0``) and
     open it in headless Chromium (viewport and image scale per view: ``VIEWS``) through the project's DevTools client
     (``tests/circuits/test_explore_browser.py``).
  3. Graph view: the full graph at node threshold ``--node-threshold`` (0.95: at the
     default 0.8 the demo prompt's influence sits on tokens and error nodes only), the
     first three features drawn pinned and grouped into the supernode ``--label``, saved,
     and the most influential feature's panel open -> ``OUT/explorer.png``.
  4. Features page: the headline circuit's features most active on the demo prompt
     (up to three, from the server's own activations endpoint), chosen side by side,
     their heatmaps on the prompt and the first one's card -> ``OUT/explorer_features.png``.
  5. Steering page: the demo prompt, the most active circuit feature clamped to
     ``--clamp`` times its largest activation, 8 new tokens next to the unmodified
     model's -> ``OUT/explorer_steering.png``.
  6. Ctrl-C (SIGINT) stops the server; any console error, uncaught exception or
     request leaving the server's origin fails the script (exit 1) before a file is
     written; the PNGs are written atomically and their sizes printed.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "circuits"))

import attribution  # noqa: E402,F401  (our BLAS preload before anything else)


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


VIEWS = {"graph": (2100, 640, 0.75), "features": (1600, 900, 0.85), "steering": (1280, 480, 1.0)}
"""Per view: viewport width and height (the graph's wide enough for the demo prompt's 15
token columns beside the panel) and the scale of the saved image."""


def _size(dt, view: str) -> None:
    w, h, _ = VIEWS[view]
    dt.send("Emulation.setDeviceMetricsOverride", width=w, height=h, deviceScaleFactor=1, mobile=False)


def _shoot(dt, view: str) -> bytes:
    w, h, scale = VIEWS[view]
    clip = {"x": 0, "y": 0, "width": w, "height": h, "scale": scale}
    return base64.b64decode(dt.send("Page.captureScreenshot", format="png", clip=clip)["data"])


def _graph_view(dt, url: str, nt: float, label: str) -> bytes:
    _size(dt, "graph")
    dt.send("Page.navigate", url=url)
    dt.wait("document.body && document.body.dataset.state === 'ready'", timeout=90)
    before = dt.eval("document.body.dataset.nodes")
    dt.eval(f"(function () {{ var s = document.getElementById('nt'); s.value = '{nt}';"
            " s.dispatchEvent(new Event('input', {bubbles: true})); })()")
    dt.wait(f"document.body.dataset.state === 'ready' && document.body.dataset.nodes !== '{before}'")
    feats = dt.eval("Array.prototype.map.call(document.querySelectorAll('#plot circle.node'), function (c) "
                    "{ return c.getAttribute('data-id'); }).filter(function (i) { return i.indexOf('feat:') === 0; })")
    if len(feats) < 4:
        raise SystemExit(f"only {len(feats)} features drawn at node threshold {nt}; raise --node-threshold")

    def click(node):
        dt.eval(f"document.querySelector('#plot circle.node[data-id={json.dumps(node)}]')"
                ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        dt.wait(f"document.getElementById('panel').dataset.node === {json.dumps(node)}")

    for node in feats[1:4]:
        click(node)
        dt.eval("document.getElementById('pin').click()")
    dt.eval(f"document.getElementById('sn-label').value = {json.dumps(label)};"
            " document.getElementById('group').click()")
    dt.eval("document.getElementById('save-name').value = 'screenshot'; document.getElementById('save').click()")
    dt.wait("document.body.dataset.saved === '3'", timeout=120)
    click(feats[0])
    return _shoot(dt, "graph")


def _features_view(dt, url: str, fids: list[str], text: str) -> bytes:
    _size(dt, "features")
    dt.send("Page.navigate", url=url + "static/features.html")
    dt.wait("document.body && document.body.dataset.state === 'ready'", timeout=120)
    for k, fid in enumerate(reversed(fids)):
        dt.eval(f"document.getElementById('q').value = {json.dumps(fid)}; document.getElementById('search-btn').click()")
        dt.wait(f"document.body.dataset.searched === {json.dumps(fid)} && document.body.dataset.results === '1'")
        dt.eval("document.querySelector('#results li').click()")
        dt.wait(f"document.body.dataset.card === {json.dumps(fid)}")
        dt.eval("document.getElementById('card-add').click()")
        dt.wait(f"document.body.dataset.chosen === '{k + 1}'")
    dt.eval(f"document.getElementById('text').value = {json.dumps(text)}; document.getElementById('run').click()")
    if dt.wait("document.body.dataset.heatmap !== 'running' && document.body.dataset.heatmap", timeout=120) != "ready":
        raise RuntimeError("heatmap failed: " + dt.eval("document.getElementById('status').textContent"))
    # The card (with its dashboard frame) comes first: scroll so the card's end, the chosen
    # features and their heatmaps are in view.
    dt.eval("document.getElementById('heatmap').scrollIntoView({block: 'end'})")
    return _shoot(dt, "features")


def _steering_view(dt, url: str, fid: str, strength: float, prompt: str) -> bytes:
    _size(dt, "steering")
    dt.send("Page.navigate", url=url + f"static/steer.html#feature={fid}")
    dt.wait("document.body && document.body.dataset.state === 'ready'", timeout=120)
    dt.eval(f"document.getElementById('prompt').value = {json.dumps(prompt)};"
            "document.querySelector('#ivs .mode').value = 'clamp';"
            f"document.querySelector('#ivs .strength').value = '{strength:.3g}';"
            "document.getElementById('n').value = '8'")
    dt.eval("document.getElementById('go').click()")
    if dt.wait("document.body.dataset.steered !== 'running' && document.body.dataset.steered", timeout=180) != "1":
        raise RuntimeError("steering failed: " + dt.eval("document.getElementById('status').textContent"))
    return _shoot(dt, "steering")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--run", type=Path, default=None, help="an existing demo output (default: run the small demo)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="folder of the three PNGs")
    p.add_argument("--node-threshold", type=float, default=0.95, help="graph view node threshold")
    p.add_argument("--label", default="pinned features", help="the supernode's label")
    p.add_argument("--clamp", type=float, default=4.0, help="steering: clamp to this many times the max activation")
    args = p.parse_args(argv)

    from test_explore_browser import browser  # the project's DevTools client and Chromium policy
    from test_explore_demo_browser import make_demo_run, start_serve

    from attribution.graph import Graph
    from viz._atomic import atomic_write_bytes

    with tempfile.TemporaryDirectory(prefix="explorer_screenshot_") as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        if args.run is not None:
            shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("explore"))
        else:
            print("running the small demo…", file=sys.stderr, flush=True)
            make_demo_run(run)
        prompt = json.loads((run / "validation.json").read_text())["figures"]["prompt"]
        nodes = Graph.load(run / "circuit").nodes
        f = nodes[nodes["type"] == "feature"]
        circuit = sorted({f"L{int(l)}/{int(i)}" for l, i in zip(f["layer"], f["feature"])})
        proc, url = start_serve(run)
        try:
            rows = [r for k in range(0, len(circuit), 16)
                    for r in _post(url + "api/features/activations",
                                   {"text": prompt, "features": circuit[k:k + 16]})["features"]]
            ranked = sorted(rows, key=lambda r: -r["max"])
            fids = [r["id"] for r in ranked[:3]]
            with browser(tmp) as dt:
                shots = {"explorer.png": _graph_view(dt, url, args.node_threshold, args.label),
                         "explorer_features.png": _features_view(dt, url, fids, prompt),
                         "explorer_steering.png": _steering_view(dt, url, fids[0], args.clamp * ranked[0]["max"],
                                                                 prompt)}
                problems = dt.problems()
                foreign = [u for u in dt.requests() if not u.startswith(url) and not u.startswith("data:")]
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            err = proc.stderr.read()
            if err.strip():
                print(f"circuits serve's stderr:\n{err[-4000:]}", file=sys.stderr)
        if problems or foreign or rc != 0:
            print(f"not written: console problems {problems}, foreign requests {foreign}, serve exit {rc}",
                  file=sys.stderr)
            return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name, png in shots.items():
        atomic_write_bytes(args.out / name, png)
        print(f"{args.out / name} ({len(png) // 1024} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
