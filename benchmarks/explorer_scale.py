"""Benchmark: the explorer (``circuits serve``) on a large graph, measured in headless Chromium.

Algorithm:
  1. Build a synthetic attribution graph (``synthetic_graph``) in the library's own
     ``Graph`` format with numpy/scipy, not the attribution engine: ``n_pos`` tokens,
     features spread over ``n_layers`` layers and positions, one error node per
     (layer, position), 4 logits; every non-token node gets the same number of incoming
     edges from uniformly drawn nodes of lower layers (a DAG, as attribution graphs
     are), weights normal x log-normal (heavy-tailed, so pruning keeps a few thousand
     nodes); each non-token node draws the same number of sources (at most half of its
     lower-layer nodes, so repeats stay rare), duplicates are merged and the draw is
     repeated with 5% more per target until there are at least ``n_edges`` edges. Saved with ``Graph.save`` and read back by the same loader as
     real graphs.
  2. Serve the run directory with ``circuits serve --json --port 0`` in a subprocess
     (its RSS is then the server's own) and open it in headless Chromium through the
     project's DevTools client (``tests/circuits/test_explore_browser.py``).
  3. Measure in the page (``performance.now()`` around the action until the page says
     it is done, so the figure includes the request, the server's work, JSON parsing
     and the SVG redraw):
       - page load: navigation to the first drawn view (``readyAt``), the first (cold:
         graph load + influence + CSC copy) apart from ``reps`` warm reloads; bytes per
         load = the sum of ``Network.loadingFinished.encodedDataLength`` of its requests;
       - slider move: set the node threshold to a new value (``reps`` distinct values,
         none cached) and wait for the re-pruned view (the 150 ms debounce included);
       - node click: click a node, wait for its side panel;
       - page change: next / previous page alternately.
     Each gives the median and max over ``reps`` repetitions.
  4. Server RSS (VmRSS and the high-water mark VmHWM from ``/proc``) after the run.
  5. One JSON line per run into ``--out`` (default
     ``benchmarks/results/explorer_scale.jsonl``) with the bounds checked (median
     interaction latency < 1 s, no page load > 20 MB) and the 1-minute load average
     before and after (the machine is shared).
``--screenshot PATH`` instead writes a screenshot of a small demo-like graph (pinned
nodes, a supernode, a node's panel open) for the README, and stops.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import attribution  # noqa: E402,F401  (our BLAS preload before anything else)
from attribution.graph import ErrorNode, FeatureNode, Graph, LogitNode, TokenNode  # noqa: E402

BOUND_MEDIAN_S = 1.0
"""Median interaction latency bound (issue 17)."""
BOUND_PAGE_BYTES = 20 * 1024 * 1024
"""Largest allowed page load (issue 17)."""


def synthetic_graph(n_nodes: int = 50_000, n_edges: int = 5_000_000, n_layers: int = 12, n_pos: int = 24,
                    seed: int = 0) -> Graph:
    """Step 1: a layered DAG ``Graph`` with exactly ``n_nodes`` nodes and >= ``n_edges`` edges."""
    rng = np.random.default_rng(seed)
    n_logits = 4
    n_feat = n_nodes - n_pos - n_layers * n_pos - n_logits
    if n_feat < n_layers:
        raise ValueError(f"n_nodes={n_nodes} is too small for {n_layers} layers x {n_pos} positions")
    f_layer = np.sort(rng.integers(0, n_layers, n_feat))
    f_pos = rng.integers(0, n_pos, n_feat)
    keys = [TokenNode(p, 1000 + p) for p in range(n_pos)]
    keys += [FeatureNode(int(la), int(p), int(f)) for f, (la, p) in enumerate(zip(f_layer, f_pos))]
    keys += [ErrorNode(la, p) for la in range(n_layers) for p in range(n_pos)]
    keys += [LogitNode(n_pos - 1, 5000 + j) for j in range(n_logits)]
    layer = np.concatenate([np.full(n_pos, -1), f_layer, np.repeat(np.arange(n_layers), n_pos),
                            np.full(n_logits, n_layers)])
    n = len(keys)
    by_layer = np.argsort(layer, kind="stable")
    below = np.searchsorted(layer[by_layer], layer, side="left")  # nodes on lower layers
    targets = np.flatnonzero(below > 0)
    # Per-target draws: k, or half the available sources where fewer (so duplicate
    # draws stay rare), with k the smallest giving ~2% more than n_edges in all.
    cap = np.maximum(below[targets] // 2, 1)
    lo, hi = 1, int(cap.max()) + 1
    while lo < hi:  # bisection: sum(min(k, cap)) grows with k
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if np.minimum(mid, cap).sum() < n_edges * 1.02 else (lo, mid)
    k = lo
    codes = np.empty(0, dtype=np.int64)
    while codes.size < n_edges:  # redraw with 5% more per target if duplicates merged too many
        t = np.repeat(targets, np.minimum(k, cap))
        s = by_layer[(rng.random(t.size) * below[t]).astype(np.int64)]
        codes = np.sort(t.astype(np.int64) * n + s)
        codes = codes[np.r_[True, codes[1:] != codes[:-1]]]
        k = int(k * 1.05) + 1
    t, s = codes // n, codes % n
    w = (rng.standard_normal(t.size) * rng.lognormal(0.0, 1.5, t.size)).astype(np.float32)
    a = sp.csr_matrix((w, (t, s)), shape=(n, n))
    act = np.abs(rng.normal(size=n)) * 3
    md = {"n_layers": n_layers, "model": "synthetic-scale", "prompt": "synthetic",
          "tokens": [f"t{p}" for p in range(n_pos)]}
    return Graph.from_keys(keys, a, act, [0.4, 0.3, 0.2, 0.1], md)


# ---------------------------------------------------------------- browser measurement ----
def _timed(dt, action_js: str, done_js: str, timeout_ms: int = 60000) -> float:
    """Seconds from running ``action_js`` in the page until ``done_js`` holds (polled in the page)."""
    expr = f"""new Promise(function (resolve, reject) {{
      var before = {{ views: document.body.dataset.views, node: document.getElementById('panel').dataset.node }};
      var t0 = performance.now();
      {action_js};
      (function poll() {{
        if ({done_js}) {{ resolve(performance.now() - t0); return; }}
        if (performance.now() - t0 > {timeout_ms}) {{ reject(new Error('timed out: ' + {json.dumps(done_js[:60])})); return; }}
        setTimeout(poll, 2);
      }})();
    }})"""
    return float(dt.eval(expr)) / 1000.0


_NEW_VIEW = "document.body.dataset.views !== before.views && document.body.dataset.state === 'ready'"


def _bytes_since(dt, mark: int) -> int:
    """Sum of encodedDataLength of the requests finished since event index ``mark``."""
    dt.eval("1")  # one more round trip collects the events that arrived meanwhile
    return int(sum(e["params"].get("encodedDataLength", 0) for e in dt.events[mark:]
                   if e.get("method") == "Network.loadingFinished"))


def _stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "max": max(xs), "n": len(xs)}


def measure(dt, url: str, reps: int = 10, slider_values=None, page_size: int | None = None) -> dict:
    """Step 3 on an open DevTools page: latencies (s) and bytes of each interaction.
    ``page_size`` (one of the page's choices) is set before the page changes."""
    loads, load_bytes, cold = [], [], None
    for r in range(reps + 1):
        mark = len(dt.events)
        dt.send("Page.navigate", url=url)
        dt.wait("document.body && document.body.dataset.state === 'ready' && document.body.dataset.readyAt", 300)
        t = float(dt.eval("Number(document.body.dataset.readyAt)")) / 1000.0
        b = _bytes_since(dt, mark)
        if r == 0:
            cold = {"latency_s": t, "bytes": b}
        else:
            loads.append(t)
        load_bytes.append(b)
    shown = int(dt.eval("document.querySelectorAll('#plot circle.node').length"))
    total = int(dt.eval("document.body.dataset.nodes"))
    inter_bytes = []
    slider_values = slider_values or [round(0.60 + 0.01 * i, 2) for i in range(reps)]
    slider = []
    for v in slider_values[:reps]:
        mark = len(dt.events)
        slider.append(_timed(dt, f"""var s = document.getElementById('nt'); s.value = '{v}';
            s.dispatchEvent(new Event('input', {{bubbles: true}}))""", _NEW_VIEW))
        inter_bytes.append(_bytes_since(dt, mark))
    # Back to the default view for clicks and pages.
    _timed(dt, """var s = document.getElementById('nt'); s.value = '0.8';
        s.dispatchEvent(new Event('input', {bubbles: true}))""", _NEW_VIEW)
    ids = dt.eval(f"""Array.prototype.slice.call(document.querySelectorAll('#plot circle.node'), 0, {reps})
        .map(function (c) {{ return c.getAttribute('data-id'); }})""")
    clicks = []
    for node in ids:
        mark = len(dt.events)
        sel = json.dumps(f'#plot circle.node[data-id="{node}"]')
        clicks.append(_timed(dt, f"document.querySelector({sel}).dispatchEvent(new MouseEvent('click', {{bubbles: true}}))",
                             f"document.getElementById('panel').dataset.node === {json.dumps(node)}"))
        inter_bytes.append(_bytes_since(dt, mark))
    if page_size is not None:
        _timed(dt, f"""var s = document.getElementById('page-size'); s.value = '{page_size}';
            s.dispatchEvent(new Event('change', {{bubbles: true}}))""", _NEW_VIEW)
    pages = []
    for r in range(reps):
        button = "next" if r % 2 == 0 else "prev"
        mark = len(dt.events)
        pages.append(_timed(dt, f"document.getElementById('{button}').click()", _NEW_VIEW))
        inter_bytes.append(_bytes_since(dt, mark))
    return {"page_load_cold": cold, "page_load_s": _stats(loads), "page_load_bytes_max": max(load_bytes),
            "page_load_bytes_median": statistics.median(load_bytes), "interaction_bytes_max": max(inter_bytes),
            "slider_s": _stats(slider), "click_s": _stats(clicks), "page_s": _stats(pages),
            "nodes_drawn": shown, "pruned_nodes": total}


def bounds_ok(m: dict) -> dict:
    """Step 5: the issue's bounds on one measurement."""
    med = {k: m[k]["median"] for k in ("slider_s", "click_s", "page_s")}
    return {"median_interaction_under_1s": all(v < BOUND_MEDIAN_S for v in med.values()),
            "page_load_under_20MB": m["page_load_bytes_max"] < BOUND_PAGE_BYTES}


# ---------------------------------------------------------------- driver ----
def _rss_mb(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024.0
    return {"server_rss_mb": out.get("VmRSS"), "server_rss_peak_mb": out.get("VmHWM")}


def _serve(run: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "circuits.cli", "--json", "serve", "--run", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"circuits serve did not start: {proc.stderr.read()[:500]}")
    return proc, json.loads(line)["url"]


def _browser(tmp: Path):
    sys.path.insert(0, str(ROOT / "tests" / "circuits"))
    from test_explore_browser import browser  # the project's DevTools client and Chromium policy

    return browser(tmp)


def run_benchmark(n_nodes: int, n_edges: int, reps: int, out: Path) -> dict:
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="explorer_scale_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        g = synthetic_graph(n_nodes, n_edges)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        g.save(tmp / "run" / "graph")
        save_s = time.perf_counter() - t0
        nodes, edges = g.n_nodes, g.n_edges
        del g
        proc, url = _serve(tmp / "run")
        try:
            with _browser(tmp) as dt:
                m = measure(dt, url, reps)
                version = dt.send("Browser.getVersion").get("product")
            rss = _rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    rec = {"benchmark": "explorer.scale", "n_nodes": nodes, "n_edges": edges, "reps": reps,
           "build_s": build_s, "save_s": save_s, **m, **rss, "bounds": bounds_ok(m), "browser": version,
           "load_average_1m_before": load0, "load_average_1m": os.getloadavg()[0], "cpus": os.cpu_count(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
    return rec


def screenshot(path: Path) -> Path:
    """A screenshot of a demo-like graph (IOI-style prompt): pins, a supernode, a panel."""
    sys.path.insert(0, str(ROOT / "tests" / "circuits"))
    import threading

    from test_explore_api import make_graph

    from circuits.explore.server import ServeConfig, make_server

    with tempfile.TemporaryDirectory(prefix="explorer_shot_") as tmp:
        tmp = Path(tmp)
        make_graph(n_layers=4, per_layer=14, seed=5, fan_in=5).save(tmp / "run" / "graph")
        server = make_server(tmp / "run", ServeConfig(port=0, svg=False))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        try:
            with _browser(tmp) as dt:
                dt.send("Emulation.setDeviceMetricsOverride", width=1280, height=720, deviceScaleFactor=1, mobile=False)
                dt.send("Page.navigate", url=server.url)
                dt.wait("document.body && document.body.dataset.state === 'ready'")
                dt.eval("""(function () { var s = document.getElementById('nt'); s.value = '0.6';
                    s.dispatchEvent(new Event('input', {bubbles: true})); })()""")
                time.sleep(0.5)
                dt.wait("document.body.dataset.state === 'ready'")
                ids = dt.eval("""Array.prototype.map.call(document.querySelectorAll('#plot circle.node'),
                    function (c) { return c.getAttribute('data-id'); }).filter(function (i) {
                    return i.indexOf('feat:') === 0; })""")
                for node in ids[:2]:
                    dt.eval(f"document.querySelector('#plot circle.node[data-id=\"{node}\"]')"
                            ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
                    dt.wait(f"document.getElementById('panel').dataset.node === {json.dumps(node)}")
                    dt.eval("document.getElementById('pin').click()")
                dt.eval("document.getElementById('sn-label').value = 'name movers'; "
                        "document.getElementById('group').click()")
                node = ids[2]
                dt.eval(f"document.querySelector('#plot circle.node[data-id=\"{node}\"]')"
                        ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
                dt.wait(f"document.getElementById('panel').dataset.node === {json.dumps(node)}")
                png = base64.b64decode(dt.send("Page.captureScreenshot", format="png")["data"])
        finally:
            server.shutdown()
            server.server_close()
    path.parent.mkdir(parents=True, exist_ok=True)
    from viz._atomic import atomic_write_bytes

    return atomic_write_bytes(path, png)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--nodes", type=int, default=50_000)
    p.add_argument("--edges", type=int, default=5_000_000)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "explorer_scale.jsonl")
    p.add_argument("--screenshot", type=Path, default=None, help="write the README screenshot here and stop")
    args = p.parse_args(argv)
    if args.screenshot is not None:
        print(screenshot(args.screenshot))
        return 0
    rec = run_benchmark(args.nodes, args.edges, args.reps, args.out)
    print(json.dumps(rec, indent=1, sort_keys=True))
    return 0 if all(rec["bounds"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
