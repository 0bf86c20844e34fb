"""The explorer's HTTP server: one run directory, a JSON API and a static front end.

Algorithm:
  1. ``make_server(run, config)`` resolves the run directory once (``realpath``) and
     binds a ``ThreadingHTTPServer`` to ``config.host`` (127.0.0.1 by default) and
     ``config.port`` (0: any free port; ``server.url`` says which). Nothing is printed
     and nothing is written at start.
  2. Graphs are found by walking the run directory (symbolic links are not followed,
     hidden, ``dictionaries/`` and ``dashboards/`` folders skipped, ``config.max_depth``
     levels deep) for folders holding ``graph.json`` + ``graph.safetensors`` (feature
     level) and for ``component_circuit.json`` files (component level, written by
     ``circuits validate``), and from the artifacts named by the run's ``run.json``
     manifests (``circuits.pipeline.manifest``), which also say which command wrote
     each one. Saved subgraphs (``explore/NAME``) are graphs too. A graph is named by
     its path relative to the run (``graph``, ``circuit/graph``,
     ``val/component_circuit.json``). It is loaded on its first request and kept in an
     LRU cache of ``config.cache_graphs`` graphs, with what every request reuses: the
     key column, the CSC copy, the threshold-free node influence (computed at load),
     and its recent pruning results per (thresholds) key.
  3. Every user path is checked before any file access: no NUL, no absolute path, no
     ``..`` component, and its ``realpath`` must stay inside the run (a symbolic link
     pointing out is refused). Graph paths must also be among the graphs found.
  4. Routes (GET unless said): ``/`` and ``/static/NAME`` (only files of the package's
     own ``static/`` folder, by exact name); ``/api/graphs``; ``/api/graph?path=``;
     ``/api/pruned?path=&node_threshold=&edge_threshold=&limit=&offset=``;
     ``/api/node?path=&id=&k=``; POST ``/api/save?path=`` with
     ``{"nodes": [...], "name": "...", "supernodes": [[label, id, ...], ...]}``
     (writes ``RUN/explore/NAME/`` (the subgraph, reopenable), ``NAME.json``
     (Neuronpedia) and ``NAME.svg`` / ``NAME.pdf``, atomically: the only files the
     server ever writes); ``/run/REL`` (files under the run's ``dashboards/`` and
     ``explore/`` folders only); and the feature browser's and steering playground's
     routes of ``circuits.explore.feature_routes`` (``ROUTES``), merged in by
     ``make_server``.
  5. Errors are JSON ``{"error": "..."}`` with a 4xx status: bad parameters 400, path
     escapes 403, unknown graph/node/route 404, wrong method 405, bodies over
     ``config.max_body`` 413. An unexpected failure is a 500 with a one-line message,
     never a traceback. Responses carry a Content-Security-Policy allowing only this
     origin, so the page can make no remote request (run files are served sandboxed:
     a dashboard's inline scripts run, but it cannot call the API); requests whose ``Host`` header
     names another host are refused (DNS rebinding) when bound to a loopback address.
  6. ``serve_forever`` runs until ``shutdown``; the CLI calls it and turns Ctrl-C into
     ``shutdown`` + ``server_close``.
"""

from __future__ import annotations

import json
import mimetypes
import os
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from circuits.explore import api
from circuits.explore.api import ExploreError

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The front end's files; nothing else is served as static content."""
EXPLORE_DIR = "explore"
"""Sub-folder of the run directory that save requests write into."""
_RUN_FILE_ROOTS = ("dashboards", EXPLORE_DIR)
_DRAIN_MAX = 16 << 20
"""Oversized bodies up to this size are read and dropped (larger ones: the connection is closed)."""
_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
        "frame-ancestors 'none'")
"""The front end's policy: its own files only, so the page can make no remote request."""
_RUN_CSP = "sandbox allow-scripts allow-popups; default-src 'self' 'unsafe-inline' data:; connect-src 'none'"
"""Run files (dashboards, with inline scripts) run sandboxed: an opaque origin that cannot call the API."""
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class ServeConfig:
    """Settings of ``circuits serve``."""

    host: str = "127.0.0.1"
    """Address to bind; the default keeps the explorer on this machine."""
    port: int = 0
    """TCP port; 0 picks any free port (read it back from ``server.url``)."""
    max_body: int = 1 << 20
    """Largest accepted request body in bytes (larger: 413)."""
    cache_graphs: int = 4
    """Graphs kept loaded (least recently used is dropped first)."""
    cache_prunes: int = 8
    """Pruning results kept per graph (slider moves repeat thresholds)."""
    max_depth: int = 4
    """How many folder levels under the run directory are searched for graphs."""
    default_node_threshold: float = 0.8
    """Node threshold when a request names none (as ``circuits prune``)."""
    default_edge_threshold: float = 0.98
    """Edge threshold when a request names none (as ``circuits prune``)."""
    default_limit: int = 500
    """Nodes per pruned-view page when a request names none."""
    svg: bool = True
    """Render an SVG and a PDF beside each saved subgraph's JSON (needs Graphviz)."""


# ---------------------------------------------------------------- paths ----
def safe_relpath(root: Path, rel: str) -> Path:
    """``root / rel`` resolved, refusing anything that leaves ``root`` (step 3)."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or len(rel) > 1000:
        raise ExploreError(400, "path must be a non-empty path relative to the run directory")
    rel = rel.replace("\\", "/")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":") or ".." in rel.split("/"):
        raise ExploreError(403, "path must stay inside the run directory (no absolute paths, no '..')")
    full = Path(os.path.realpath(root / rel))
    try:
        if os.path.commonpath([str(full), str(root)]) != str(root):
            raise ValueError
    except ValueError:
        raise ExploreError(403, "path leaves the run directory (through a symbolic link?)") from None
    return full


def _walk(root: Path, max_depth: int):
    """(folder, file names) under ``root``, not following links, skipping hidden folders
    and the bulky ``dictionaries/`` / ``dashboards/`` trees."""
    from circuits.pipeline.manifest import SKIP_DIRS

    root_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS
                             and len(here.parts) - root_depth < max_depth)
        yield here, filenames


def _is_graph_dir(d: Path) -> bool:
    return (d / "graph.json").is_file() and (d / "graph.safetensors").is_file()


def _is_component_file(f: Path) -> bool:
    from viz.components import FILENAME

    return f.name == FILENAME and f.is_file() and not f.is_symlink()


def find_entries(root: Path, max_depth: int = 4) -> list[dict]:
    """Step 2: every graph of the run as ``{"path", "level", "command"}``, sorted by path.
    ``level`` is ``feature`` (a Graph folder) or ``component`` (a component circuit file);
    ``command`` is the subcommand whose manifest lists it (None when none does)."""
    from circuits.pipeline.manifest import ManifestError, find_manifests, parse_manifest
    from viz.components import FILENAME

    found: dict[str, dict] = {}

    def add(full: Path, level: str, command=None) -> None:
        try:
            if os.path.islink(full):
                return
            rel = safe_relpath(root, full.relative_to(root).as_posix() if full != root else ".")
        except (ExploreError, ValueError):
            return  # outside the run (a manifest artifact pointing out): not served
        name = rel.relative_to(root).as_posix()
        if name in found:
            found[name]["command"] = found[name]["command"] or command
        else:
            found[name] = {"path": name, "level": level, "command": command}

    for here, files in _walk(root, max_depth):
        if "graph.json" in files and "graph.safetensors" in files:
            add(here, "feature")
        if FILENAME in files and _is_component_file(here / FILENAME):
            add(here / FILENAME, "component")
    try:
        manifests = find_manifests(root, max_depth)
    except ManifestError:
        manifests = []  # a tree too broad to be a run: the folder scan above stands
    for mpath in manifests:
        try:
            m = parse_manifest(mpath)
        except ManifestError:
            continue  # a corrupt manifest: its folder's graphs were still found by name
        for art in m.artifacts.values():
            p = Path(art)
            if p.is_dir() and _is_graph_dir(p):
                add(p, "feature", m.command)
            elif p.is_dir() and _is_component_file(p / FILENAME):
                add(p / FILENAME, "component", m.command)
            elif _is_component_file(p):
                add(p, "component", m.command)
    return [found[k] for k in sorted(found)]


def find_graphs(root: Path, max_depth: int = 4) -> list[str]:
    """Relative paths (posix) of every graph under ``root`` (``find_entries``' paths)."""
    return [e["path"] for e in find_entries(root, max_depth)]


# ---------------------------------------------------------------- state ----
@dataclass
class _Entry:
    graph: object
    """An ``attribution.graph.Graph`` or an ``api.ComponentCircuit``."""
    csc: object = None
    keys: object = None
    influence: object = None
    prunes: OrderedDict = field(default_factory=OrderedDict)

    @property
    def component(self) -> bool:
        return isinstance(self.graph, api.ComponentCircuit)


def _load_entry(full: Path) -> _Entry:
    """Load one graph and precompute what every request reuses (step 2)."""
    if full.suffix == ".json":
        from viz.components import load_component_circuit

        return _Entry(api.ComponentCircuit(load_component_circuit(full)))
    from attribution.graph import Graph

    g = Graph.load(full)
    e = _Entry(g, csc=g.adjacency.tocsc(), keys=g.nodes["key"].to_numpy(dtype=object))
    try:
        e.influence = api.node_influence(g)
    except ValueError:  # no logits / a cycle: pruning requests answer 422 then
        e.influence = None
    return e


class ExploreState:
    """The run directory, its graphs and their caches (shared by request threads)."""

    def __init__(self, run: Path, config: ServeConfig):
        self.root = Path(os.path.realpath(run))
        if not self.root.is_dir():
            raise NotADirectoryError(f"--run {run} is not a directory")
        self.config = config
        self._lock = threading.Lock()
        self._graphs: OrderedDict[str, _Entry] = OrderedDict()
        self._load_locks: dict[str, threading.Lock] = {}

    def entries(self) -> list[dict]:
        return find_entries(self.root, self.config.max_depth)

    def graphs(self) -> list[str]:
        return [e["path"] for e in self.entries()]

    def entry(self, rel: str | None) -> tuple[str, _Entry]:
        """The cached entry of graph ``rel`` (loaded on first use)."""
        if rel is None:
            raise ExploreError(400, "missing ?path= (a graph folder relative to the run; see /api/graphs)")
        full = safe_relpath(self.root, rel)
        name = full.relative_to(self.root).as_posix()
        with self._lock:
            if name in self._graphs:
                self._graphs.move_to_end(name)
                return name, self._graphs[name]
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        if name not in self.graphs():
            raise ExploreError(404, f"no graph at {rel[:200]!r} in this run (see /api/graphs)")
        with load_lock:  # one thread loads; the others wait for its result
            with self._lock:
                if name in self._graphs:
                    return name, self._graphs[name]
            try:
                e = _load_entry(full)
            except ExploreError:
                raise
            except Exception as exc:
                raise ExploreError(422, f"graph {name} could not be read: {str(exc).splitlines()[0][:300]}") from None
            with self._lock:
                self._graphs[name] = e
                while len(self._graphs) > self.config.cache_graphs:
                    self._graphs.popitem(last=False)
            return name, e

    def forget(self, name: str) -> None:
        """Drop a cached graph (a save just rewrote it)."""
        with self._lock:
            self._graphs.pop(name, None)

    def csc(self, e: _Entry):
        with self._lock:
            if e.csc is None:
                e.csc = e.graph.adjacency.tocsc()
            return e.csc

    def prune(self, e: _Entry, nt: float, et: float) -> api.PruneMasks:
        key = (nt, et)
        with self._lock:
            if key in e.prunes:
                e.prunes.move_to_end(key)
                return e.prunes[key]
        if e.influence is None:
            raise ExploreError(422, "cannot prune this graph (no logit nodes, or its adjacency has a cycle)")
        try:
            res = api.prune_masks(e.graph, nt, et, influence=e.influence)
        except ValueError as exc:  # PruneError: a graph this pruning cannot handle (e.g. no logits)
            raise ExploreError(422, f"cannot prune this graph: {str(exc).splitlines()[0][:300]}") from None
        with self._lock:
            e.prunes[key] = res
            while len(e.prunes) > self.config.cache_prunes:
                e.prunes.popitem(last=False)
        return res


# ---------------------------------------------------------------- handler ----
class _Handler(BaseHTTPRequestHandler):
    server_version = "mlx-circuits-explore"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # library code never prints
        pass

    # -- responses
    def _send(self, status: int, body: bytes, ctype: str, csp: str = _CSP) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", csp)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _file(self, path: Path, csp: str = _CSP) -> None:
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        self._send(200, path.read_bytes(), ctype, csp)

    # -- dispatch
    def _host_ok(self) -> bool:
        host = self.server.config.host
        if host not in _LOOPBACK:
            return True
        h = (self.headers.get("Host") or "").strip().lower()
        name = h.rsplit(":", 1)[0] if not h.startswith("[") else h.split("]")[0] + "]"
        return name in _LOOPBACK

    def _run(self, method: str) -> None:
        try:
            if not self._host_ok():
                raise ExploreError(403, "requests must name this machine as Host (localhost or 127.0.0.1)")
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            route = unquote(url.path)
            handler = _ROUTES.get((method, route))
            if handler is None and method == "GET" and route.startswith("/static/"):
                handler = _static
            elif handler is None and method == "GET" and route.startswith("/run/"):
                handler = _run_file
            if handler is None:
                known = any(r == route for (_, r) in _ROUTES)
                raise ExploreError(405 if known else 404,
                                   f"{method} not allowed on {route[:100]}" if known else f"unknown route {route[:100]}")
            handler(self, route, query)
        except ExploreError as exc:
            self._error(exc.status, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # one line, never a traceback to the client
            try:
                self._error(500, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            except Exception:
                pass

    def do_GET(self):
        self._run("GET")

    def do_HEAD(self):
        self._run("GET")

    def do_POST(self):
        self._run("POST")

    def do_PUT(self):
        self._run("PUT")

    def do_DELETE(self):
        self._run("DELETE")

    def _body(self):
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise ExploreError(411, "send the body with a Content-Length (no chunked encoding)")
        try:
            n = int(length)
        except (TypeError, ValueError):
            raise ExploreError(411, "a Content-Length header is required") from None
        if n < 0:
            raise ExploreError(400, "bad Content-Length")
        if n > self.server.config.max_body:
            self.close_connection = True
            if n <= _DRAIN_MAX:  # read and drop a moderately large body so the client sees the 413
                left = n
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            raise ExploreError(413, f"request body of {n} bytes is over the {self.server.config.max_body}-byte limit")
        raw = self.rfile.read(n)
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ExploreError(400, "the body is not valid UTF-8 JSON") from None


# ---------------------------------------------------------------- routes ----
def _index(h: _Handler, route, q) -> None:
    h._file(STATIC_DIR / "index.html")


def _static(h: _Handler, route, q) -> None:
    name = route[len("/static/"):]
    allowed = {p.name for p in STATIC_DIR.iterdir() if p.is_file()}
    if name not in allowed:  # exact names only: no sub-paths, no '..'
        raise ExploreError(404, f"no static file {name[:100]!r}")
    h._file(STATIC_DIR / name)


def _run_file(h: _Handler, route, q) -> None:
    rel = route[len("/run/"):]
    st = h.server.state
    full = safe_relpath(st.root, rel)
    top = full.relative_to(st.root).parts
    if not top or top[0] not in _RUN_FILE_ROOTS or not full.is_file():
        raise ExploreError(404, f"no file {rel[:200]!r} (only dashboards/ and explore/ are served)")
    h._file(full, _RUN_CSP)


def _graphs(h: _Handler, route, q) -> None:
    st = h.server.state
    entries = st.entries()
    h._json(200, {"run": st.root.name, "graphs": [e["path"] for e in entries], "entries": entries,
                  "dashboards": (st.root / "dashboards").is_dir()})


def _graph(h: _Handler, route, q) -> None:
    name, e = h.server.state.entry(q.get("path"))
    h._json(200, e.graph.summary(name) if e.component else api.summary(e.graph, name))


def _pruned(h: _Handler, route, q) -> None:
    st = h.server.state
    cfg = st.config
    nt = api.parse_threshold("node_threshold", q.get("node_threshold"), cfg.default_node_threshold)
    et = api.parse_threshold("edge_threshold", q.get("edge_threshold"), cfg.default_edge_threshold)
    limit = api.parse_int("limit", q.get("limit"), cfg.default_limit, 1, api.MAX_LIMIT)
    offset = api.parse_int("offset", q.get("offset"), 0, 0, 10 ** 9)
    max_edges = api.parse_int("max_edges", q.get("max_edges"), api.DEFAULT_PAGE_EDGES, 1, api.MAX_PAGE_EDGES)
    name, e = st.entry(q.get("path"))
    if e.component:
        out = e.graph.view(limit, offset, max_edges)
    elif api.is_selection(e.graph):  # a saved subgraph / no logits: shown whole, never pruned
        res = api.whole_masks(e.graph, e.influence)
        out = api.pruned_view(e.graph, 1.0, 1.0, limit, offset, result=res, max_edges=max_edges, keys=e.keys)
        out.update(thresholds_apply=False, node_threshold=None, edge_threshold=None)
    else:
        res = st.prune(e, nt, et)
        out = api.pruned_view(e.graph, nt, et, limit, offset, result=res, max_edges=max_edges, keys=e.keys)
    out["path"] = name
    h._json(200, out)


def _node(h: _Handler, route, q) -> None:
    st = h.server.state
    k = api.parse_int("k", q.get("k"), 10, 1, api.MAX_TOP_K)
    name, e = st.entry(q.get("path"))
    if q.get("id") is None:
        raise ExploreError(400, "missing ?id= (a node key such as feat:1:3:42)")
    if e.component:
        h._json(200, e.graph.detail(q["id"], k))
        return
    d = api.node_detail(e.graph, q["id"], k, csc=st.csc(e), run_root=st.root)
    if d["dashboard"]:
        d["dashboard"] = "/run/" + d["dashboard"]
    h._json(200, d)


def _save(h: _Handler, route, q) -> None:
    st = h.server.state
    body = h._body()
    name, e = st.entry(q.get("path"))
    out_dir = safe_relpath(st.root, EXPLORE_DIR)  # refuses an explore/ symlink pointing out
    d = api.save_subgraph(e.graph, body, out_dir, svg=st.config.svg, source=name)
    st.forget(f"{EXPLORE_DIR}/{d['name']}")
    st.forget(f"{EXPLORE_DIR}/{d['name']}/component_circuit.json")
    d["path"] = f"{EXPLORE_DIR}/{d['name']}" + ("/component_circuit.json" if e.component else "")
    d["files"] = {k: f"/run/{EXPLORE_DIR}/{v}" for k, v in d["files"].items()}
    h._json(200, d)


_ROUTES = {("GET", "/"): _index, ("GET", "/index.html"): _index, ("GET", "/api/graphs"): _graphs,
           ("GET", "/api/graph"): _graph, ("GET", "/api/pruned"): _pruned, ("GET", "/api/node"): _node,
           ("POST", "/api/save"): _save}


def _merge_feature_routes() -> None:
    """Add the feature browser's and steering playground's routes; the graph routes keep
    their handlers. Imported here, not at module load: no work at import."""
    from circuits.explore.feature_routes import ROUTES as _FEATURE_ROUTES

    for key, handler in _FEATURE_ROUTES.items():
        _ROUTES.setdefault(key, handler)


class ExploreServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the explorer's state; ``url`` is where it listens."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: ExploreState, config: ServeConfig):
        self.state = state
        self.config = config
        if ":" in config.host:  # an IPv6 literal such as ::1
            self.address_family = socket.AF_INET6
        super().__init__((config.host, config.port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"


def make_server(run, config: ServeConfig | None = None) -> ExploreServer:
    """Step 1: a bound (not yet serving) explorer of run directory ``run``."""
    _merge_feature_routes()
    config = config or ServeConfig()
    return ExploreServer(ExploreState(Path(run), config), config)


__all__ = ["EXPLORE_DIR", "STATIC_DIR", "ExploreServer", "ExploreState", "ServeConfig", "find_entries", "find_graphs",
           "make_server", "safe_relpath"]
