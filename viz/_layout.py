"""Grid layout of layered figures as DOT text (shared by circuit and component figures).

Algorithm:
1. Rows are ``rank=same`` subgraphs, one per row index (layers; embeddings lowest),
   and ``rankdir=BT`` puts row 0 at the bottom.
2. Every (row, column) cell holds its nodes, or an invisible placeholder when empty
   (in the bottom row a grey text placeholder with the column's token), so every
   column exists in every row.
3. Invisible flat edges chain each row left to right (row label, then cells by column,
   nodes within a cell in the given order): Graphviz keeps flat edges left-to-right,
   which fixes the column order.
   Crossing minimisation is nearly switched off (``mclimit``) so that order holds.
4. Invisible heavy vertical edges chain each column's first node from row to row, so
   columns line up and the row order is forced; real edges whose head is not above
   their tail get ``constraint=false`` so they cannot reorder rows.
5. Real edges: colour = sign, width ∝ clipped |weight|, drawn under the nodes.
6. Everything is emitted in a fixed order with fixed number formatting.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from viz.style import NEUTRAL, NODE_SHAPES, CircuitStyle, clip_value, edge_color, edge_width, fmt_num

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}


def html_text(text: str) -> str:
    """Escape text for a Graphviz HTML-like label (control characters dropped)."""
    clean = "".join(ch for ch in str(text) if ch >= " " or ch == "\t")
    return "".join(_ESCAPES.get(ch, ch) for ch in clean)


def quote(text: str) -> str:
    """A DOT double-quoted string (backslashes, quotes and newlines escaped)."""
    s = str(text).replace("\\", "\\\\").replace('"', '\\"')
    s = "".join(max(ch, " ") for ch in s)
    return f'"{s}"'


def attrs(**kw: object) -> str:
    """``[k=v, ...]`` in the given order; HTML labels (``<...>``) pass through unquoted."""
    parts = []
    for k, v in kw.items():
        if v is None:
            continue
        if isinstance(v, str) and v.startswith("<") and v.endswith(">"):
            parts.append(f"{k}={v}")
        elif isinstance(v, float):
            parts.append(f"{k}={fmt_num(v)}")
        else:
            parts.append(f"{k}={quote(str(v)) if isinstance(v, str) else v}")
    return "[" + ", ".join(parts) + "]"


@dataclass(frozen=True)
class DrawNode:
    """A node as drawn."""

    id: str
    """DOT node id (the node key string)."""
    kind: str
    """Key of ``style.NODE_SHAPES``."""
    row: int
    """Row (rank) index; 0 is the bottom row."""
    col: int
    """Column (token position)."""
    label: str
    """Inner HTML-like label, already escaped."""
    tooltip: str
    """Plain-text tooltip (SVG hover)."""
    dashed: bool = False
    """Dashed border (automatic supernodes)."""


@dataclass(frozen=True)
class DrawEdge:
    """An edge as drawn (already aggregated)."""

    source: str
    """Source node id."""
    target: str
    """Target node id."""
    weight: float
    """Signed weight."""


def _node_line(n: DrawNode, style: CircuitStyle, group: str | None) -> str:
    shape, node_style, fill = NODE_SHAPES[n.kind]
    if n.dashed:
        node_style += ",dashed"
    return f"    {quote(n.id)} " + attrs(
        shape=shape, style=node_style, fillcolor=fill, label=f"<{n.label}>", tooltip=n.tooltip, group=group,
        penwidth=2.0 if n.kind == "supernode" else None)  # "bold" is lost when combined with dashed


def _cells(nodes: Sequence[DrawNode], rows: Sequence[int], cols: Sequence[int]):
    cell: dict[tuple[int, int], list[DrawNode]] = {(r, c): [] for r in rows for c in cols}
    for n in nodes:
        cell[(n.row, n.col)].append(n)
    return cell


def _rows_block(cell, rows, cols, row_labels, col_labels, style) -> tuple[list[str], dict]:
    """Row subgraphs (step 1-3); returns lines and the first node id of every cell."""
    lines, first = [], {}
    for r in rows:
        lines.append(f"  subgraph row_{r} {{")
        lines.append("    rank=same;")
        chain = []
        if style.show_layer_labels:
            rid = f"_row_{r}"
            lines.append(f"    {quote(rid)} " + attrs(
                shape="plaintext", label=f"<<B>{html_text(row_labels.get(r, str(r)))}</B>>",
                fontcolor=NEUTRAL))
            chain.append(rid)
        for c in cols:
            members = cell[(r, c)]
            group = f"col{c}"  # same group: dot keeps the column's anchor chain straight
            if members:
                mid = (len(members) - 1) // 2  # the middle node anchors the column
                lines.extend(_node_line(n, style, group if i == mid else None) for i, n in enumerate(members))
                ids = [n.id for n in members]
            else:
                pid = f"_cell_{r}_{c}"
                text = col_labels.get(c) if r == rows[0] else None
                if text is not None:
                    lines.append(f"    {quote(pid)} " + attrs(
                        shape="plaintext", label=f"<<I>{html_text(text)}</I>>", fontcolor="#888888", group=group))
                else:
                    lines.append(f"    {quote(pid)} " + attrs(
                        shape="point", style="invis", width=0.05, height=0.05, group=group))
                ids = [pid]
            first[(r, c)] = ids[(len(ids) - 1) // 2]
            chain.extend(ids)
        lines.append("  }")
        for a, b in itertools.pairwise(chain):
            lines.append(f"  {quote(a)} -> {quote(b)} [style=invis];")
    return lines, first


def layout_dot(name: str, nodes: Sequence[DrawNode], edges: Sequence[DrawEdge], row_labels: Mapping[int, str],
               col_labels: Mapping[int, str], style: CircuitStyle, legend: str) -> str:
    """DOT text of a layered figure (see the module docstring). ``legend`` is an inner
    HTML-like label (or empty)."""
    rows = sorted({n.row for n in nodes} | set(row_labels))
    cols = sorted({n.col for n in nodes} | set(col_labels))
    by_id = {n.id: n for n in nodes}
    fs = style.font_size
    head = [
        f"digraph {quote(name)} {{",
        "  " + "graph " + attrs(
            # mclimit: almost no crossing minimisation, which could otherwise break the
            # left-to-right order that the flat chains fix (measured: 24 order violations
            # over 20 random circuits without it, 0 with it).
            rankdir="BT", newrank="true", mclimit=0.01, splines="spline", outputorder="edgesfirst",
            nodesep=style.nodesep, ranksep=style.ranksep, pad=0.25, bgcolor="white",
            fontname=style.font, fontsize=fs - 1, labelloc="b", labeljust="l",
            label=f"<{legend}>" if legend else None) + ";",
        "  node " + attrs(fontname=style.font, fontsize=fs, color=NEUTRAL, penwidth=1.0,
                          margin="0.10,0.05") + ";",
        "  edge " + attrs(fontname=style.font, arrowsize=0.6, arrowhead="normal") + ";",
    ]
    cell = _cells(nodes, rows, cols) if rows else {}
    body, first = _rows_block(cell, rows, cols, row_labels, col_labels, style) if rows else ([], {})
    grid = []
    for c in cols:  # step 4: column chains
        for r0, r1 in itertools.pairwise(rows):
            grid.append(f"  {quote(first[(r0, c)])} -> {quote(first[(r1, c)])} [style=invis, weight=10];")
    if style.show_layer_labels:
        for r0, r1 in itertools.pairwise(rows):
            grid.append(f"  {quote(f'_row_{r0}')} -> {quote(f'_row_{r1}')} [style=invis, weight=20];")
    absw = np.abs(np.array([e.weight for e in edges], dtype=np.float64))
    clip = clip_value(absw, style)
    real = []
    for e in edges:  # step 5
        upward = by_id[e.target].row > by_id[e.source].row
        real.append(f"  {quote(e.source)} -> {quote(e.target)} " + attrs(
            color=edge_color(e.weight, style), penwidth=float(f"{edge_width(abs(e.weight), clip, style):.2f}"),
            tooltip=f"{e.source} -> {e.target}: {fmt_num(e.weight)}",
            constraint=None if upward else "false") + ";")
    return "\n".join(head + body + grid + real + ["}"]) + "\n"


__all__ = ["DrawEdge", "DrawNode", "attrs", "html_text", "layout_dot", "quote"]
