"""The explorer's HTTP server (``circuits.explore.server``) over real sockets: it serves a
run directory's graphs on 127.0.0.1, answers every bad request (path traversal in any
spelling, escaping symbolic links, oversized bodies, malformed thresholds, unknown
nodes, graphs and routes) with a 4xx JSON error and never a traceback, and writes no
file outside ``RUN/explore/``. Also ``circuits serve --export``."""

from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from circuits.explore.server import ServeConfig, make_server
from test_explore_api import make_graph


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("explore")
    run = base / "run"
    g = make_graph()
    g.save(run / "graph")
    make_graph(seed=1).save(run / "circuit" / "graph")
    (base / "secret.txt").write_text("outside the run")
    make_graph(seed=2).save(base / "outside_graph")
    (run / "escape").symlink_to(base)  # a symbolic link inside the run pointing out
    # A component circuit named by the manifest of the command that wrote it.
    from test_explore_api import COMPONENT
    from circuits.pipeline.manifest import manifest_record, write_manifest

    (run / "val").mkdir()
    (run / "val" / "component_circuit.json").write_text(json.dumps(COMPONENT))
    write_manifest(run / "val", manifest_record("validate", ["validate", "--level", "component"], {},
                                                {"component_circuit": "component_circuit.json"}))
    (run / "dashboards").mkdir()
    (run / "dashboards" / "index.html").write_text("<html>dash</html>")
    os.symlink(base / "secret.txt", run / "dashboards" / "leak.html")
    server = make_server(run, ServeConfig(port=0, svg=False))
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    before = _snapshot(base)
    yield server, run, g, base, before
    server.shutdown()
    server.server_close()
    t.join(5)


def get(server, path, method="GET", body=None, headers=None):
    req = urllib.request.Request(server.url.rstrip("/") + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def get_json(server, path, **kw):
    status, headers, body = get(server, path, **kw)
    assert headers["Content-Type"].startswith("application/json"), (path, headers["Content-Type"])
    return status, json.loads(body)


def test_binds_loopback_and_any_port(served):
    server = served[0]
    assert server.server_address[0] == "127.0.0.1" and server.server_address[1] > 0
    assert server.url == f"http://127.0.0.1:{server.server_address[1]}/"


def test_api_200s(served):
    server, run, g = served[:3]
    st, d = get_json(server, "/api/graphs")
    assert st == 200 and d["graphs"] == ["circuit/graph", "graph", "val/component_circuit.json"]
    assert d["dashboards"] is True
    assert d["entries"] == [{"path": "circuit/graph", "level": "feature", "command": None},
                            {"path": "graph", "level": "feature", "command": None},
                            {"path": "val/component_circuit.json", "level": "component", "command": "validate"}]
    st, d = get_json(server, "/api/graph?path=graph")
    assert st == 200 and d["n_nodes"] == g.n_nodes and d["n_edges"] == g.n_edges
    st, d = get_json(server, "/api/pruned?path=graph&node_threshold=0.7&edge_threshold=0.9&limit=5")
    assert st == 200 and len(d["nodes"]) == 5 and d["total_nodes"] >= 5 and d["next_offset"] == 5
    node = d["nodes"][0]["id"]
    st, d = get_json(server, f"/api/node?path=graph&id={quote(node)}&k=2")
    assert st == 200 and d["node"]["id"] == node and len(d["incoming"]) <= 2
    st, d = get_json(server, "/api/graph?path=circuit/graph")
    assert st == 200


def test_component_circuit_served(served):
    server = served[0]
    st, s = get_json(server, "/api/graph?path=val/component_circuit.json")
    assert st == 200 and s["level"] == "component" and s["n_nodes"] == 5 and not s["thresholds_apply"]
    st, v = get_json(server, "/api/pruned?path=val/component_circuit.json&limit=2")
    assert st == 200 and [n["id"] for n in v["nodes"]] == ["L1.MLP", "L0.H1"] and v["next_offset"] == 2
    assert v["edges"] == [{"source": "L0.H1", "target": "L1.MLP", "weight": -2.0, "port": None}]
    st, v2 = get_json(server, "/api/pruned?path=val/component_circuit.json&limit=2&offset=2")
    assert {n["id"] for n in v2["nodes"]} == {"logits", "embed"} and v2["prev_offset"] == 0
    st, d = get_json(server, "/api/node?path=val/component_circuit.json&id=L1.MLP")
    assert st == 200 and d["n_incoming"] == 2 and d["outgoing"][0]["target"] == "logits"
    st, d = get_json(server, "/api/node?path=val/component_circuit.json&id=L7.H0")
    assert st == 404 and set(d) == {"error"}


def test_feature_routes_merged(served):
    """The feature browser's and steering playground's routes (another module) are
    dispatched by this server: none answers "unknown route"."""
    from circuits.explore import server as srv
    from circuits.explore.feature_routes import ROUTES

    server = served[0]
    assert ROUTES and all(srv._ROUTES[k] is v for k, v in ROUTES.items())
    for method, route in ROUTES:
        st, _, body = get(server, route, method=method, body=b"{}" if method == "POST" else None)
        assert "unknown route" not in body.decode("utf-8", "replace"), (route, st)
    st, d = get_json(server, "/api/features/nope")
    assert st == 404 and "unknown route" in d["error"]  # the negative control


def test_static_front_end(served):
    server = served[0]
    st, headers, body = get(server, "/")
    assert st == 200 and b'src="/static/app.js"' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    st, headers, body = get(server, "/static/app.js")
    assert st == 200 and b"api/pruned" in body
    assert headers["Content-Type"].startswith(("text/javascript", "application/javascript"))
    for p in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fapi.py", "/static/",
              "/static/nope.js", "/static//etc/passwd"):
        st, d = get_json(server, p)
        assert st == 404 and "error" in d, p


@pytest.mark.parametrize("path", [
    "/api/graph?path=../../etc/passwd", "/api/graph?path=..%2F..%2Fetc%2Fpasswd",
    "/api/graph?path=%2e%2e/%2e%2e/etc/passwd", "/api/graph?path=/etc/passwd", "/api/graph?path=%2Fetc%2Fpasswd",
    "/api/graph?path=graph/../../outside_graph", "/api/graph?path=..\\outside_graph",
    "/api/graph?path=escape/outside_graph", "/api/graph?path=escape", "/api/graph?path=graph%00",
    "/api/graph?path=", "/api/graph", "/api/graph?path=nope", "/api/graph?path=dashboards",
    "/api/pruned?path=../outside_graph", "/api/node?path=escape/outside_graph&id=tok:0:100",
    "/run/../secret.txt", "/run/%2e%2e/secret.txt", "/run/escape/secret.txt", "/run/dashboards/leak.html",
    "/run/graph/graph.json", "/run//etc/passwd", "/run/dashboards/../../secret.txt",
])
def test_paths_outside_the_run_are_refused(served, path):
    server = served[0]
    st, d = get_json(server, path)
    assert 400 <= st < 500 and set(d) == {"error"}, (path, st, d)
    assert "outside the run" not in json.dumps(d) and "Traceback" not in d["error"]


def test_run_files_served_from_dashboards_only(served):
    st, _, body = get(served[0], "/run/dashboards/index.html")
    assert st == 200 and body == b"<html>dash</html>"


@pytest.mark.parametrize("q", ["node_threshold=abc", "node_threshold=nan", "node_threshold=NaN",
                               "edge_threshold=inf", "node_threshold=-0.5", "edge_threshold=0",
                               "node_threshold=1.01", "limit=0", "limit=-3", "limit=999999", "offset=-1",
                               "limit=1.5", "offset=x", "max_edges=0", "max_edges=1e9"])
def test_malformed_parameters(served, q):
    st, d = get_json(served[0], f"/api/pruned?path=graph&{q}")
    assert st == 400 and set(d) == {"error"} and q.split("=")[0] in d["error"], (q, d)


@pytest.mark.parametrize("node", ["feat:9:9:9", "nonsense", "", "%00", "tok:999:1"])
def test_unknown_nodes(served, node):
    st, d = get_json(served[0], f"/api/node?path=graph&id={node}")
    assert st in (400, 404) and set(d) == {"error"}


@pytest.mark.parametrize("path,method", [("/nope", "GET"), ("/api", "GET"), ("/api/graphs/x", "GET"),
                                         ("/api/save", "GET"), ("/api/graph", "POST"), ("/api/graph", "DELETE")])
def test_unknown_routes_and_methods(served, path, method):
    st, d = get_json(served[0], path, method=method, body=b"{}" if method == "POST" else None)
    assert st in (404, 405) and set(d) == {"error"}


def test_foreign_host_header_refused(served):
    server = served[0]
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.request("GET", "/api/graphs", headers={"Host": "evil.example:80"})
    r = conn.getresponse()
    assert r.status == 403 and "error" in json.loads(r.read())
    conn.close()


def test_oversized_and_bad_bodies(served):
    server, run = served[:2]
    big = json.dumps({"nodes": ["tok:0:100"] * 200000}).encode()
    assert len(big) > 1 << 20
    st, d = get_json(server, "/api/save?path=graph", method="POST", body=big,
                     headers={"Content-Type": "application/json"})
    assert st == 413 and "limit" in d["error"]
    # A Content-Length that lies about a huge body is refused before reading it.
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.putrequest("POST", "/api/save?path=graph")
    conn.putheader("Content-Length", str(10 ** 12))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "error" in json.loads(r.read())
    conn.close()
    for body in (b"not json", b"\xff\xfe", b"[]", b'{"nodes": ["feat:9:9:9"]}', b'{"nodes": ["tok:0:100"], "name": "../x"}'):
        st, d = get_json(server, "/api/save?path=graph", method="POST", body=body)
        assert 400 <= st < 500 and set(d) == {"error"}, body
    assert not (run / "explore").exists()


def test_save_writes_only_into_explore(served):
    server, run, g, base, before = served
    ids = g.nodes["key"].tolist()[:5] + ["logit:6:2001"]
    st, d = get_json(server, "/api/save?path=graph", method="POST",
                     body=json.dumps({"nodes": ids, "name": "mine"}).encode())
    assert st == 200 and d["n_nodes"] == 6 and d["files"] == {"neuronpedia": "/run/explore/mine.json"}
    saved = json.loads((run / "explore" / "mine.json").read_text())
    assert len(saved["nodes"]) == 6
    st, _, body = get(server, "/run/explore/mine.json")
    assert st == 200 and json.loads(body) == saved
    after = _snapshot(base)
    changed = {p for p in after if before.get(p) != after[p]}
    assert changed == {"run/explore/mine.json", "run/explore/mine/graph.json",
                       "run/explore/mine/graph.safetensors"}, changed
    # The saved subgraph reopens: it is listed, and its view holds exactly the saved nodes.
    assert d["path"] == "explore/mine"
    st, lst = get_json(server, "/api/graphs")
    assert "explore/mine" in lst["graphs"]
    st, v = get_json(server, "/api/pruned?path=explore/mine&node_threshold=1&edge_threshold=1&limit=100")
    assert st == 200 and {n["id"] for n in v["nodes"]} == set(ids)  # tokens and logits are always kept
    st, s = get_json(server, "/api/graph?path=explore/mine")
    assert st == 200 and s["n_nodes"] == 6 and s["metadata"]["explore"]["pinned"] == ids


def test_export_cli(tmp_path, capsys):
    from circuits.cli import main

    make_graph().save(tmp_path / "graph")
    out = tmp_path / "page.html"
    assert main(["serve", "--export", str(tmp_path / "graph"), "--out", str(out), "--node-threshold", "0.7"]) == 0
    html = out.read_text()
    assert 'id="explore-data"' in html and "/static/" not in html and "http://" not in html.replace(
        "http://www.w3.org/2000/svg", "")
    data = html.split('id="explore-data">', 1)[1].split("</script>", 1)[0]
    d = json.loads(data)
    assert d["view"]["node_threshold"] == 0.7 and set(d["details"]) == {n["id"] for n in d["view"]["nodes"]}
    assert "<script>" not in data  # the graph's '<' is escaped inside the JSON block
    capsys.readouterr()
    assert main(["serve", "--export", str(tmp_path / "graph"), "--out", str(out)]) == 1  # exists: --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["serve", "--export", str(tmp_path / "graph"), "--out", str(out), "--node-threshold", "nan"]) == 2
    assert main(["serve", "--run", str(tmp_path / "nope")]) == 1


def test_cli_serves_until_ctrl_c(tmp_path):
    """``circuits serve --port 0`` prints its URL, answers, and exits 0 on SIGINT."""
    import signal
    import subprocess
    import sys

    make_graph().save(tmp_path / "run" / "graph")
    before = _snapshot(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "circuits.cli", "serve", "--run", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2],
                            # A shell's background jobs (CI) inherit SIGINT ignored, and Python then
                            # installs no KeyboardInterrupt handler: start the child as a terminal would.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        with urllib.request.urlopen(url + "api/graphs", timeout=30) as r:
            assert json.loads(r.read())["graphs"] == ["graph"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _snapshot(tmp_path) == before  # serving wrote nothing


def test_export_component_circuit(tmp_path):
    """``circuits serve --export`` of a component circuit: every node's detail travels."""
    from circuits.cli import main
    from test_explore_api import COMPONENT

    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "component_circuit.json").write_text(json.dumps(COMPONENT))
    out = tmp_path / "page.html"
    assert main(["--quiet", "serve", "--export", str(tmp_path / "val"), "--out", str(out)]) == 0
    data = json.loads(out.read_text().split('id="explore-data">', 1)[1].split("</script>", 1)[0])
    assert data["summary"]["level"] == "component" and len(data["view"]["nodes"]) == 5
    assert data["details"]["L1.MLP"]["n_incoming"] == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "component_circuit.json").write_text(json.dumps({"nodes": [{"name": "L0.Q"}], "edges": []}))
    assert main(["--quiet", "serve", "--export", str(tmp_path / "bad"), "--out", str(tmp_path / "b.html")]) == 1
    assert not (tmp_path / "b.html").exists()
