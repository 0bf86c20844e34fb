"""Fixed-position grid layout of layered figures as DOT text (circuit and component figures).

Positions are computed here and pinned (``pos="x,y!"``, points; node sizes pinned with
``fixedsize``); ``render`` runs Graphviz as ``neato -n2`` (graph attribute
``layout="neato"``), which keeps them and only routes the edges, so the grid is exact
and deterministic (``inputscale=72`` makes a plain ``dot file.dot`` agree). Algorithm:
1. Size every node from its label (``_metrics.node_size``).
2. Cells: the nodes of one (row, column), in the given order. A cell with more than
   ``per_line`` nodes wraps onto several lines (first line on top).
3. Column width = widest line of the column (nodes side by side, ``nodesep`` apart),
   at least its column label; a column holding only a token stays that narrow.
   Columns run left to right by position, ``colsep`` apart (``nodesep`` between two
   narrow columns), after the row-label column.
4. Row height = lines x tallest node of the row; rows stack bottom-up (row 0 =
   embeddings at the bottom), ``ranksep`` apart. Cells are centred in their band.
5. ``per_line`` is chosen so that the grid, scaled to fit ``style.page_size`` (a
   landscape page), comes out largest; ties go to fewer wrapped lines. Crowded rows
   thus wrap only when the figure would otherwise be a strip with tiny text.
6. Edges: colour = sign, width ∝ clipped |weight|, routed as splines around the
   nodes (``style.splines``) and drawn beneath them (``outputorder=edgesfirst``);
   emitted weakest first (stable), so strong edges are drawn on top of weak ones.
7. Everything is emitted in a fixed order with fixed number formatting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from viz._metrics import node_size
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


MARGIN = (0.10, 0.05)
"""Graphviz label margin (inches, x and y) of every node."""
_PT = 72.0


@dataclass(frozen=True)
class Placed:
    """A laid-out figure: node centres and extent, all in inches."""

    pos: Mapping[str, tuple[float, float]]
    """Node id (row labels ``_row_<r>``, column labels ``_col_<c>`` included) -> centre."""
    size: Mapping[str, tuple[float, float]]
    """Node id -> (width, height) as emitted."""
    width: float
    """Extent of the grid, left to right."""
    height: float
    """Extent of the grid, bottom to top."""
    per_line: int
    """Most nodes on one line of a cell (step 5)."""


def _extra_nodes(rows, cols, row_labels, col_labels, occupied, style) -> dict[str, tuple[int, int, str, str]]:
    """Row labels and bottom-row column labels: id -> (row, col or -1, shape label, colour)."""
    out = {}
    if style.show_layer_labels:
        for r in rows:
            out[f"_row_{r}"] = (r, -1, f"<B>{html_text(row_labels.get(r, str(r)))}</B>", NEUTRAL)
    for c in cols:
        if c in col_labels and not occupied.get((rows[0], c)):
            out[f"_col_{c}"] = (rows[0], c, f"<I>{html_text(col_labels[c])}</I>", "#888888")
    return out


def _arrange(cell, sizes, extra, rows, cols, per_line: int, style: CircuitStyle) -> Placed:
    """Steps 2-4 for one ``per_line``."""
    gap, pos = style.nodesep, {}
    lines = {k: [v[i:i + per_line] for i in range(0, len(v), per_line)] for k, v in cell.items()}

    def line_w(line):
        return sum(sizes[n.id][0] for n in line) + gap * (len(line) - 1)

    col_w = {c: max([line_w(ln) for r in rows for ln in lines[(r, c)]] + [0.3]) for c in cols}
    line_h = {r: max([sizes[n.id][1] for c in cols for n in cell[(r, c)]] + [0.3]) for r in rows}
    n_lines = {r: max([len(lines[(r, c)]) for c in cols] + [1]) for r in rows}
    for name, (r, c, _, _) in extra.items():
        if c >= 0:
            col_w[c] = max(col_w[c], sizes[name][0])
        line_h[r] = max(line_h[r], sizes[name][1])
    label_w = max([sizes[k][0] for k, v in extra.items() if v[1] < 0] + [0.0])
    # a column with only a token (or its label) is narrow: it sits nodesep from narrow neighbours
    narrow = {c: all(n.kind == "token" for r in rows for n in cell[(r, c)]) for c in cols}
    col_x, x = {}, label_w + (style.colsep if label_w else 0.0)
    for c, nxt in zip(cols, cols[1:] + [None]):
        col_x[c] = x + col_w[c] / 2
        x += col_w[c] + (style.nodesep if nxt is not None and narrow[c] and narrow[nxt] else style.colsep)
    row_y, y = {}, 0.0
    for r in rows:
        band = n_lines[r] * line_h[r] + (n_lines[r] - 1) * gap
        row_y[r] = y + band / 2
        y += band + style.ranksep
    for (r, c), lns in lines.items():
        for k, ln in enumerate(lns):
            ly = row_y[r] + ((len(lns) - 1) / 2 - k) * (line_h[r] + gap)
            lx = col_x[c] - line_w(ln) / 2
            for n in ln:
                pos[n.id] = (lx + sizes[n.id][0] / 2, ly)
                lx += sizes[n.id][0] + gap
    for name, (r, c, _, _) in extra.items():
        pos[name] = (label_w / 2 if c < 0 else col_x[c], row_y[r])
    return Placed(pos, sizes, x - style.colsep, y - style.ranksep, per_line)


def place(nodes: Sequence[DrawNode], row_labels: Mapping[int, str], col_labels: Mapping[int, str],
          style: CircuitStyle) -> tuple[Placed, dict]:
    """Node positions (steps 1-5) and the label nodes to draw (id -> (row, col, label, colour))."""
    rows = sorted({n.row for n in nodes} | set(row_labels))
    cols = sorted({n.col for n in nodes} | set(col_labels))
    if not rows:
        return Placed({}, {}, 0.0, 0.0, 1), {}
    cell: dict[tuple[int, int], list[DrawNode]] = {(r, c): [] for r in rows for c in cols}
    for n in nodes:
        cell[(n.row, n.col)].append(n)
    extra = _extra_nodes(rows, cols, row_labels, col_labels, cell, style)
    sizes = {n.id: node_size(NODE_SHAPES[n.kind][0], n.label, style.font_size, MARGIN) for n in nodes}
    sizes.update({k: node_size("plaintext", v[2], style.font_size, (0.04, 0.02)) for k, v in extra.items()})
    sizes = {k: (round(w, 2), round(h, 2)) for k, (w, h) in sizes.items()}  # place exactly what is emitted
    best = None
    for per_line in range(max([len(v) for v in cell.values()] + [1]), 0, -1):
        p = _arrange(cell, sizes, extra, rows, cols, per_line, style)
        scale = min(style.page_size[0] / max(p.width, 1e-9), style.page_size[1] / max(p.height, 1e-9))
        if best is None or scale > best[0] * 1.02:  # fewer wraps unless clearly larger on the page
            best = (scale, p)
    return best[1], extra


def _pos(xy: tuple[float, float]) -> str:
    return f"{xy[0] * _PT:.1f},{xy[1] * _PT:.1f}!"


def _node_line(n: DrawNode, placed: Placed) -> str:
    shape, node_style, fill = NODE_SHAPES[n.kind]
    if n.dashed:
        node_style += ",dashed"
    w, h = placed.size[n.id]
    return f"    {quote(n.id)} " + attrs(
        shape=shape, style=node_style, fillcolor=fill, label=f"<{n.label}>", tooltip=n.tooltip,
        pos=_pos(placed.pos[n.id]), width=w, height=h, fixedsize="true",
        penwidth=2.0 if n.kind == "supernode" else None)  # "bold" is lost when combined with dashed


def layout_dot(name: str, nodes: Sequence[DrawNode], edges: Sequence[DrawEdge], row_labels: Mapping[int, str],
               col_labels: Mapping[int, str], style: CircuitStyle, legend: str) -> str:
    """DOT text of a layered figure (see the module docstring). ``legend`` is an inner
    HTML-like label (or empty)."""
    placed, extra = place(nodes, row_labels, col_labels, style)
    fs = style.font_size
    lines = [
        f"digraph {quote(name)} {{",
        "  graph " + attrs(
            # inputscale: pos is in points for plain `neato`/`dot file.dot` too, not only `-n2`
            layout="neato", inputscale=72, splines=style.splines, outputorder="edgesfirst", pad=0.25, bgcolor="white",
            fontname=style.font, fontsize=fs - 1, labelloc="b", labeljust="l",
            label=f"<{legend}>" if legend else None) + ";",
        "  node " + attrs(fontname=style.font, fontsize=fs, color=NEUTRAL, penwidth=1.0,
                          margin=f"{MARGIN[0]:.2f},{MARGIN[1]:.2f}") + ";",
        "  edge " + attrs(fontname=style.font, arrowsize=0.6, arrowhead="normal") + ";",
    ]
    for r in sorted({n.row for n in nodes} | {v[0] for v in extra.values()}):
        lines.append(f"  subgraph row_{r} {{")
        for k, (er, c, label, colour) in extra.items():
            if er == r and c < 0:  # the row label first, then the row's nodes left to right
                lines.append(f"    {quote(k)} " + attrs(shape="plaintext", label=f"<{label}>", fontcolor=colour,
                                                        pos=_pos(placed.pos[k])))
        lines.extend(_node_line(n, placed) for n in nodes if n.row == r)
        for k, (er, c, label, colour) in extra.items():
            if er == r and c >= 0:
                lines.append(f"    {quote(k)} " + attrs(shape="plaintext", label=f"<{label}>", fontcolor=colour,
                                                        pos=_pos(placed.pos[k])))
        lines.append("  }")
    clip = clip_value(np.abs(np.array([e.weight for e in edges], dtype=np.float64)), style)
    for e in sorted(edges, key=lambda e: abs(e.weight)):  # step 6: strong edges drawn last, on top
        lines.append(f"  {quote(e.source)} -> {quote(e.target)} " + attrs(
            color=edge_color(e.weight, style), penwidth=float(f"{edge_width(abs(e.weight), clip, style):.2f}"),
            tooltip=f"{e.source} -> {e.target}: {fmt_num(e.weight)}") + ";")
    return "\n".join(lines + ["}"]) + "\n"


__all__ = ["MARGIN", "DrawEdge", "DrawNode", "Placed", "attrs", "html_text", "layout_dot", "place", "quote"]
