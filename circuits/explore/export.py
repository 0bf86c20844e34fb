"""One self-contained offline HTML page of one pruned graph (``circuits serve --export``).

Algorithm:
  1. Compute the API's answers once: ``summary``, one ``pruned_view`` page of at most
     ``limit`` nodes at the given thresholds, and ``node_detail`` of every node on it
     (for a component circuit, ``api.ComponentCircuit``: its first page by |score| and
     the details of its nodes; thresholds do not apply).
  2. Inline the package's ``static/app.css`` and ``static/app.js`` and the answers as a
     ``<script type="application/json" id="explore-data">`` block (``<`` escaped as
     ``\\u003c`` so no graph text can close the script), into ``static/index.html``,
     without its navigation to the server's other views.
     The page makes no request at all; its sliders are fixed at the export thresholds.
"""

from __future__ import annotations

import json
import re

from circuits.explore import api
from circuits.explore.server import STATIC_DIR


def export_data(graph, name: str, node_threshold: float, edge_threshold: float, limit: int = 500,
                k: int = 10) -> dict:
    """Step 1: the answers the page needs, as one JSON-able dict. ``graph`` is an
    ``attribution.graph.Graph`` or an ``api.ComponentCircuit``."""
    if isinstance(graph, api.ComponentCircuit):
        view = graph.view(limit, 0)
        return {"summary": graph.summary(name), "view": view,
                "details": {n["id"]: graph.detail(n["id"], k) for n in view["nodes"]}}
    view = api.pruned_view(graph, node_threshold, edge_threshold, limit, 0)
    csc = graph.adjacency.tocsc()
    details = {n["id"]: api.node_detail(graph, n["id"], k, csc=csc) for n in view["nodes"]}
    return {"summary": api.summary(graph, name), "view": view, "details": details}


def export_html(graph, name: str, node_threshold: float, edge_threshold: float, limit: int = 500,
                k: int = 10) -> str:
    """Step 2: the page's HTML text."""
    data = json.dumps(export_data(graph, name, node_threshold, edge_threshold, limit, k), allow_nan=False)
    data = data.replace("<", "\\u003c")
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    css = (STATIC_DIR / "app.css").read_text(encoding="utf-8")
    js = (STATIC_DIR / "app.js").read_text(encoding="utf-8").replace("</", "<\\/")
    html = re.sub(r'<nav id="nav">.*?</nav>\n', "", html, flags=re.S)  # no server: no other views
    html = html.replace('<link rel="stylesheet" href="/static/app.css">', f"<style>\n{css}</style>")
    html = html.replace('<script src="/static/app.js"></script>',
                        f'<script type="application/json" id="explore-data">{data}</script>\n<script>\n{js}</script>')
    return html


__all__ = ["export_data", "export_html"]
