"""``circuits render``: draw a graph or circuit with Graphviz.

Algorithm:
  1. Load the graph directory.
  2. ``viz.to_dot`` (deterministic DOT) and ``viz.render`` to each requested
     file (format from the suffix: .svg, .pdf, .png, .dot).
"""

from __future__ import annotations

from pathlib import Path

from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="render a graph/circuit to SVG, PDF, PNG or DOT")
    p.add_argument("--graph", type=Path, default=Path("out/circuit/graph"), help="graph directory")
    p.add_argument("--out", type=Path, nargs="+", default=[Path("out/circuit.svg")],
                   help="output files; format from the suffix (.svg .pdf .png .dot)")
    p.add_argument("--max-edges", type=int, default=None,
                   help="draw only the N strongest edges (noted in the legend)")
    p.add_argument("--config", type=Path, default=None, help="TOML or JSON options file")


def run(args) -> int:
    from attribution.graph import Graph
    from viz.dot import to_dot
    from viz.render import render

    from viz.style import CircuitStyle

    graph = Graph.load(args.graph)
    style = CircuitStyle(max_edges=args.max_edges)
    written = []
    for out in args.out:
        out = Path(out)
        if out.suffix.lower() == ".dot":
            from viz._atomic import atomic_write_text

            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, to_dot(graph, style=style))
        else:
            render(graph, out, style=style)
        written.append(str(out))
    emit(args, {"written": written}, [f"wrote {w}" for w in written])
    return 0
