"""``circuits serve``: a local graph explorer of one run directory (or an offline export).

Algorithm:
  1. ``--export GRAPH_DIR --out FILE.html``: load the graph, prune it with
     ``--node-threshold``/``--edge-threshold``, write one self-contained HTML page of at
     most ``--limit`` nodes (``circuits.explore.export``) atomically, print its path, stop.
     A component circuit (``component_circuit.json`` or its folder) is exported the same
     way, unpruned (it is already a selection).
  2. Otherwise check ``--run`` (a directory), bind ``circuits.explore.server`` to
     ``--host`` (127.0.0.1) and ``--port`` (0: any free port), print the URL (also with
     ``--quiet``: it is the command's whole output) and serve until Ctrl-C or SIGTERM,
     then shut the server down and exit 0. The server writes nothing but the subgraphs
     a user asks to save (into ``RUN/explore/``). The page has three views: the graph
     (``/``: feature-level graphs and component circuits of the run, found by folder
     scan and by its ``run.json`` manifests), the feature browser and the steering
     playground.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from circuits.cli._common import CLIError, Interrupted
from circuits.cli._out import emit

CHECKS_OUT_ITSELF = True
"""``--out`` is an HTML file for ``--export``, not an output directory."""


def _threshold(text) -> float:
    from circuits.explore.api import ExploreError, parse_threshold

    try:
        return parse_threshold("threshold", text, 0.8)
    except ExploreError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text) -> int:
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a port number in [0, 65535], got {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in [0, 65535], got {v}")
    return v


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="explore a run's attribution graphs in the browser (local server)")
    p.add_argument("--run", type=Path, default=Path("out"), help="run directory whose graphs are served")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; the API has no authentication)")
    p.add_argument("--port", type=_port, default=0, help="TCP port (default 0: any free port; the URL is printed)")
    p.add_argument("--export", type=Path, default=None, metavar="GRAPH_DIR",
                   help="write one offline HTML page of this graph (pruned) or component circuit to --out instead of serving")
    p.add_argument("--out", type=Path, default=None, help="with --export: the .html file to write")
    p.add_argument("--node-threshold", type=_threshold, default=0.8, help="with --export: node threshold (0, 1]")
    p.add_argument("--edge-threshold", type=_threshold, default=0.98, help="with --export: edge threshold (0, 1]")
    p.add_argument("--limit", type=int, default=500, help="with --export: most nodes on the page (most influential)")
    p.add_argument("--overwrite", action="store_true", help="with --export: replace an existing --out file")
    p.add_argument("--config", type=Path, default=None, help="TOML or JSON options file")


def _export(args) -> int:
    from attribution.graph import Graph
    from circuits.cli.report import check_report_out
    from circuits.explore.api import MAX_LIMIT
    from circuits.explore.export import export_html
    from viz._atomic import atomic_write_with

    if args.out is None:
        raise CLIError("--export needs --out FILE.html")
    if not 1 <= args.limit <= MAX_LIMIT:
        raise CLIError(f"--limit must lie in [1, {MAX_LIMIT}], got {args.limit}")
    out = check_report_out(args.out, args.overwrite)
    from viz.components import is_component_circuit, load_component_circuit

    if is_component_circuit(args.export):
        from circuits.explore.api import ComponentCircuit, ExploreError

        try:
            graph = ComponentCircuit(load_component_circuit(args.export))
        except ExploreError as exc:
            raise CLIError(f"--export {args.export}: {exc}") from None
    else:
        graph = Graph.load(args.export)
    html = export_html(graph, Path(args.export).name, args.node_threshold, args.edge_threshold, args.limit)
    atomic_write_with(out, lambda f: f.write(html.encode("utf-8")))
    emit(args, {"export": str(out)}, [f"wrote {out}"])
    return 0


def run(args) -> int:
    if args.export is not None:
        return _export(args)
    if args.out is not None:
        raise CLIError("--out is only for --export GRAPH_DIR")
    from circuits.explore.server import ServeConfig, make_server

    if not Path(args.run).is_dir():
        raise CLIError(f"--run {args.run} is not a directory; pass the folder your commands wrote into")
    server = make_server(args.run, ServeConfig(host=args.host, port=args.port))
    try:
        if args.json:
            print(json.dumps({"url": server.url, "run": str(server.state.root)}), flush=True)
        else:
            print(f"serving {server.state.root} at {server.url} (Ctrl-C to stop)", flush=True)
        server.serve_forever(poll_interval=0.25)
    except (KeyboardInterrupt, Interrupted):
        pass  # Ctrl-C / SIGTERM is how the server is meant to stop
    finally:
        server.server_close()
    return 0
