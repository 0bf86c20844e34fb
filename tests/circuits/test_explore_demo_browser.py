"""``circuits serve`` on a real demo run, in headless Chromium (issue 17, "Done means").

The module fixture runs the real ``circuits.pipeline.demo.run_demo`` at a reduced
``DemoConfig`` (the one of ``test_demo_selection``, with dashboards), adds the run's
``run.json`` manifest as ``circuits demo`` does, and starts the real CLI
``python -m circuits.cli serve --run OUT --port 0`` as a subprocess (SIGINT restored to
its default in the child: background CI jobs inherit it ignored). Chromium is driven
through the DevTools client of ``test_explore_browser``.

Independent computations:
  1. graph view: the kept-node and kept-edge counts at two thresholds equal
     ``circuits.prune.prune`` of the saved graph; a clicked node's incoming and
     outgoing edge counts and its strongest incoming edge come from the graph's own
     edge arrays; the saved Neuronpedia JSON is parsed and its pinned ids are matched
     to the pinned nodes' layer and position;
  2. features page: the heatmap cells (and the same request repeated on new
     connections, so on other server threads) equal ``dictionary.encode`` of
     activations captured at the dictionary's input site, computed here from
     separately loaded model and dictionaries;
  3. steering page: the unmodified continuation equals a plain greedy loop over the
     model's logits;
  4. Ctrl-C (SIGINT) stops the server with exit 0, and the run directory then holds the
     files it held before serving plus the saved ones only.
No console error, no uncaught exception and no request leaving the server's origin."""

from __future__ import annotations

import attribution  # noqa: F401,I001  (BLAS preload before mlx)

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from test_explore_browser import _screenshot, browser, require_chromium

from attribution import capture, load_model
from attribution.graph import Graph
from attribution.sites import Site
from circuits.organisms import SHIPPED
from circuits.pipeline.demo import DemoConfig, run_demo
from circuits.pipeline.dictionaries import DictionarySpec
from circuits.prune import prune

pytestmark = pytest.mark.slow  # trains small transcoders, runs the whole demo with dashboards, then Chromium

REPO = Path(__file__).resolve().parents[2]
SMALL = DemoConfig(dictionaries=DictionarySpec(kind="transcoder", arch="topk", width=64, k=4, tokens=8192,
                                               batch_tokens=1024),
                   agreement_prompts=2, dashboards=True)
"""The smallest demo that still writes everything the explorer reads (shared with
``benchmarks/explorer_screenshot.py``)."""
SAVE = "demo_pins"


def make_demo_run(out: Path, cfg: DemoConfig = SMALL) -> Path:
    """``run_demo`` into ``out`` plus the ``run.json`` that ``circuits demo`` writes."""
    from circuits.pipeline.manifest import manifest_record, write_manifest

    run_demo(out, None, cfg)
    arts = {p.name: p.name + ("/" if p.is_dir() else "") for p in sorted(out.iterdir())}
    write_manifest(out, manifest_record("demo", ["demo"], {"model": str(SHIPPED / "ioi")}, arts))
    return out


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file under ``root``."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def start_serve(run: Path) -> tuple[subprocess.Popen, str]:
    """The real CLI ``serve`` as a subprocess; (process, printed URL)."""
    proc = subprocess.Popen([sys.executable, "-m", "circuits.cli", "serve", "--run", str(run), "--port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(120)
    m = re.search(r"(http://127\.0\.0\.1:\d+/)", line[0] if line else "")
    if m is None:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"circuits serve printed no URL: {line!r} {err[-2000:]}")
    return proc, m.group(1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    require_chromium()
    run = make_demo_run(tmp_path_factory.mktemp("demo") / "run")
    from sae import load_dictionaries

    model = load_model(SHIPPED / "ioi")
    dicts = {s.layer: d for s, d in load_dictionaries(run / "dictionaries", model=model).items()}
    return run, model, dicts


@pytest.fixture(scope="module")
def served(demo):
    run = demo[0]
    before = files_under(run)
    proc, url = start_serve(run)
    yield proc, url, before
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


@pytest.fixture(scope="module")
def dt(tmp_path_factory, served):
    with browser(tmp_path_factory.mktemp("chromium")) as d:
        yield d


def _clean(dt, url: str) -> None:
    """No console error, no exception, no request outside the server's origin."""
    assert not dt.problems(), dt.problems()
    foreign = [u for u in dt.requests() if not u.startswith(url) and not u.startswith("data:")]
    assert not foreign, foreign


def _slide(dt, value: float) -> None:
    dt.eval(f"(function () {{ var s = document.getElementById('nt'); s.value = '{value}';"
            " s.dispatchEvent(new Event('input', {bubbles: true})); })()")


def _click_node(dt, node: str) -> None:
    dt.eval(f"document.querySelector('#plot circle.node[data-id={json.dumps(node)}]')"
            ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    dt.wait(f"document.getElementById('panel').dataset.node === {json.dumps(node)}")


def _circuit_features(run: Path) -> list[tuple[int, int]]:
    nodes = Graph.load(run / "circuit").nodes
    f = nodes[nodes["type"] == "feature"]
    return sorted({(int(l), int(i)) for l, i in zip(f["layer"], f["feature"])})


def _prompt(run: Path) -> str:
    return json.loads((run / "validation.json").read_text())["figures"]["prompt"]


def test_graph_view_on_the_demo_run(demo, served, dt):
    run, _, _ = demo
    _, url, _ = served
    graph = Graph.load(run / "graph")
    dt.send("Page.navigate", url=url)
    dt.wait("document.body && document.body.dataset.state === 'ready'", timeout=60)
    listed = dt.eval("Array.prototype.map.call(document.querySelectorAll('#graph option'), function (o) { return o.value; })")
    assert {"graph", "circuit", "circuit_influence"} <= set(listed), listed
    assert dt.eval("document.getElementById('graph').value") == "graph"
    # The default thresholds (0.8, 0.98): the library's pruning of the same graph.
    ref = prune(graph, 0.8, 0.98)
    assert int(dt.eval("document.body.dataset.nodes")) == ref.graph.n_nodes == int(ref.node_mask.sum())
    assert int(dt.eval("document.body.dataset.edges")) == ref.graph.n_edges
    # Move the node slider up until features are kept (influence at 0.8 keeps tokens and
    # errors only on the demo prompt): the count changes and equals prune() there.
    before = ref.graph.n_nodes
    nt = next(t for t in (0.95, 0.99, 1.0)
              if (prune(graph, t, 0.98).graph.nodes["type"] == "feature").sum() >= 2)
    want = prune(graph, nt, 0.98)
    assert want.graph.n_nodes != before
    _slide(dt, nt)
    dt.wait(f"document.body.dataset.state === 'ready' && document.body.dataset.nodes !== '{before}'")
    assert int(dt.eval("document.body.dataset.nodes")) == want.graph.n_nodes
    assert int(dt.eval("document.body.dataset.edges")) == want.graph.n_edges
    assert dt.eval("document.getElementById('count').textContent").startswith(f"{want.graph.n_nodes} nodes")
    # Click a feature node (one of the headline circuit's, which have dashboards): its edge
    # counts and strongest incoming edge, from the graph's edge arrays.
    ids = dt.eval("Array.prototype.map.call(document.querySelectorAll('#plot circle.node'), "
                  "function (c) { return c.getAttribute('data-id'); })")
    assert sorted(ids) == sorted(want.graph.nodes["key"].tolist())  # every kept node drawn (one page)
    in_circuit = set(Graph.load(run / "circuit").nodes["key"].tolist())
    feats = sorted((i for i in ids if i.startswith("feat:")), key=lambda i: i not in in_circuit)
    assert len(feats) >= 2 and feats[0] in in_circuit, (feats, sorted(in_circuit))
    keys = graph.nodes["key"].tolist()
    src, tgt, w = graph.edge_arrays()
    node = feats[0]
    row = keys.index(node)
    _click_node(dt, node)
    text = dt.eval("document.getElementById('panel').textContent")
    n_in, n_out = int((tgt == row).sum()), int((src == row).sum())
    assert f"incoming ({n_in})" in text and f"outgoing ({n_out})" in text, text
    assert n_in > 0 and n_out > 0
    into = np.flatnonzero(tgt == row)
    strongest = keys[int(src[into[np.argmax(np.abs(w[into]))]])]
    assert dt.eval("document.querySelector('#panel a.nid').textContent") == strongest  # incoming, by |weight|
    _, layer, _, feat = node.split(":")
    assert (run / "dashboards" / f"feature_L{layer}.mlp_in_{feat}.html").is_file()
    assert dt.eval("Array.prototype.some.call(document.querySelectorAll('#panel a'), function (a) "
                   "{ return a.textContent === 'feature dashboard'; })")
    # Pin two feature nodes, group them into a supernode, save.
    pins = feats[:2]
    for i in pins:
        _click_node(dt, i)
        dt.eval("document.getElementById('pin').click()")
    assert dt.eval("document.getElementById('pins').textContent") == "2 pinned"
    dt.eval("document.getElementById('sn-label').value = 'pair'; document.getElementById('group').click()")
    assert dt.eval("document.querySelector('#plot g.supernode').getAttribute('data-label')") == "pair"
    dt.eval(f"document.getElementById('save-name').value = '{SAVE}'; document.getElementById('save').click()")
    dt.wait("document.body.dataset.saved === '2'", timeout=60)
    # The saved Neuronpedia JSON parses and lists the pinned nodes.
    saved = json.loads((run / "explore" / f"{SAVE}.json").read_text())
    pinned = saved["qParams"]["pinnedIds"]
    assert len(pinned) == 2 and len(saved["nodes"]) == 2
    by_id = {n["node_id"]: n for n in saved["nodes"]}
    got = sorted((int(by_id[p]["layer"]), int(by_id[p]["ctx_idx"])) for p in pinned)
    assert got == sorted((int(k.split(":")[1]), int(k.split(":")[2])) for k in pins)
    assert saved["qParams"]["supernodes"] == [["pair", *pinned]] or \
        sorted(saved["qParams"]["supernodes"][0][1:]) == sorted(pinned)
    # Reload the page and open the saved subgraph from the list: the supernode is back.
    dt.send("Page.reload")
    dt.wait("document.body && document.body.dataset.state === 'ready'", timeout=60)
    listed = dt.eval("Array.prototype.map.call(document.querySelectorAll('#graph option'), function (o) { return o.value; })")
    assert f"explore/{SAVE}" in listed, listed
    dt.eval(f"var s = document.getElementById('graph'); s.value = 'explore/{SAVE}';"
            " s.dispatchEvent(new Event('change', {bubbles: true}))")
    dt.wait(f"document.body.dataset.path === 'explore/{SAVE}' && document.body.dataset.state === 'ready'")
    assert dt.eval("document.getElementById('pins').textContent") == "2 pinned"
    assert dt.eval("document.querySelector('#supernodes li').dataset.label") == "pair"
    assert dt.eval("document.querySelector('#plot g.supernode').getAttribute('data-label')") == "pair"
    # A saved subgraph is a selection: drawn whole (it has no logit node, so influence
    # pruning would keep nothing), the thresholds off.
    assert sorted(dt.eval("Array.prototype.map.call(document.querySelectorAll('#plot circle.node'), "
                          "function (c) { return c.getAttribute('data-id'); })")) == sorted(pins)
    assert dt.eval("document.getElementById('nt').disabled") is True
    _screenshot(dt, run.parent / "explorer_demo.png")
    _clean(dt, url)


def test_features_page_on_the_demo_run(demo, served, dt):
    run, model, dicts = demo
    _, url, _ = served
    text = _prompt(run)
    ids = model.encode(text)
    # The circuit feature most active on the demo prompt (independent capture + encode).
    cache = capture(model, mx.array([ids]), [Site(l, "mlp_in") for l in dicts])
    acts = {l: np.asarray(dicts[l].encode(cache[Site(l, "mlp_in")][0]), dtype=np.float64) for l in dicts}
    layer, feat = max(_circuit_features(run), key=lambda lf: acts[lf[0]][:, lf[1]].max())
    ref = acts[layer][:, feat]
    assert ref.max() > 0
    fid = f"L{layer}/{feat}"
    dt.send("Page.navigate", url=url + "static/features.html")
    dt.wait("document.body && document.body.dataset.state === 'ready'", timeout=90)
    dt.eval(f"document.getElementById('q').value = {json.dumps(fid)}")
    dt.eval("document.getElementById('search-btn').click()")
    dt.wait(f"document.body.dataset.searched === {json.dumps(fid)} && document.body.dataset.results === '1'")
    assert dt.eval("document.querySelector('#results li').dataset.id") == fid
    dt.eval("document.querySelector('#results li').click()")
    dt.wait(f"document.body.dataset.card === {json.dumps(fid)}")
    page = f"/run/dashboards/feature_L{layer}.mlp_in_{feat}.html"
    assert (run / page[len("/run/"):]).is_file()
    assert dt.eval("document.querySelector('#card iframe').getAttribute('src')") == page
    dt.eval("document.getElementById('card-add').click()")
    dt.wait("Number(document.body.dataset.chosen) >= 1")
    dt.eval(f"document.getElementById('text').value = {json.dumps(text)}")
    dt.eval("document.getElementById('run').click()")
    dt.wait("document.body.dataset.heatmap === 'ready'", timeout=60)
    row = dt.eval(f"Array.prototype.map.call(document.querySelectorAll('#heatmap tr[data-id=\"{fid}\"] .tok-cell'),"
                  " function (c) { return [c.textContent, Number(c.dataset.value)]; })")
    assert [t for t, _ in row] == model.to_str_tokens(ids)
    np.testing.assert_allclose([v for _, v in row], ref, rtol=1e-4, atol=1e-5)
    # The same request on new connections (new server threads): MLX streams are
    # thread-local, and the TopK encoder's extra CPU streams once made every thread but
    # the first answer 500 ("There is no Stream(cpu, i) in current thread").
    for _ in range(2):
        req = urllib.request.Request(url + "api/features/activations", method="POST",
                                     data=json.dumps({"text": text, "features": [fid]}).encode(),
                                     headers={"Content-Type": "application/json", "Connection": "close"})
        with urllib.request.urlopen(req, timeout=120) as r:
            again = json.loads(r.read())
        np.testing.assert_allclose(again["features"][0]["activations"], ref, rtol=1e-4, atol=1e-5)
    _screenshot(dt, run.parent / "explorer_demo_features.png")
    _clean(dt, url)


def test_steering_page_on_the_demo_run(demo, served, dt):
    run, model, _ = demo
    _, url, _ = served
    layer, feat = _circuit_features(run)[0]
    prompt, n = _prompt(run), 4
    dt.send("Page.navigate", url=url + f"static/steer.html#feature=L{layer}/{feat}")
    dt.wait("document.body && document.body.dataset.state === 'ready'", timeout=90)
    dt.eval(f"document.getElementById('prompt').value = {json.dumps(prompt)};"
            "document.querySelector('#ivs .mode').value = 'ablate';"
            f"document.getElementById('n').value = '{n}'")
    dt.eval("document.getElementById('go').click()")
    dt.wait("document.body.dataset.steered === '1'", timeout=90)
    # The unmodified side: a plain greedy loop over the model.
    ids = model.encode(prompt)
    seq = list(ids)
    for _ in range(n):
        seq.append(int(mx.argmax(model(mx.array([seq]))[0, -1]).item()))
    assert dt.eval("document.getElementById('clean').dataset.text") == model.decode(seq[len(ids):])
    for side in ("clean", "steered"):
        assert dt.eval(f"document.querySelectorAll('#{side} .new').length") == n
        assert dt.eval(f"document.getElementById('{side}').textContent").startswith(
            "".join(model.to_str_tokens(ids)))
    _screenshot(dt, run.parent / "explorer_demo_steering.png")
    _clean(dt, url)


def test_ctrl_c_stops_serve_and_leaves_only_saved_files(demo, served):
    run = demo[0]
    proc, _, before = served
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("circuits serve did not stop on SIGINT")
    err = proc.stderr.read()
    assert rc == 0, err
    assert "Traceback" not in err, err
    after = files_under(run)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing rewritten or removed
    new = set(after) - set(before)
    # Only the subgraph saved by the graph-view test (its folder, JSON, SVG and PDF).
    assert all(p.startswith(f"explore{os.sep}{SAVE}") for p in new), sorted(new)
