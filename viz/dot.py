"""Circuit figures as DOT text (pure: builds a string, never runs ``dot``).

``to_dot(graph_or_circuit, style, descriptions)``:
1. Accept a ``Graph`` or anything with a ``.graph`` (a ``PruneResult``).
2. Map nodes to drawn nodes: supernode members (``style.supernodes``) become one node
   per group placed at the rounded mean layer and median position of its members;
   every other node is drawn as itself.
3. Sum signed edge weights per pair of drawn nodes (edges inside a group vanish); drop
   |sum| below ``style.min_abs_weight``; keep the ``style.max_edges`` strongest by
   |sum| (display only, noted in the legend); order edges by (source, target) draw order.
4. Rows: embeddings, every layer that has a node, logits; columns: token positions,
   labelled by the token row (``metadata['tokens']`` fills positions without a token node).
   Within a (layer, position) cell: features by feature id, then supernodes, errors,
   logits (in graph order).
5. Node labels: feature ``L{layer} · #{id}``, description (``label`` column, else
   ``descriptions[key]``), activation; error ``err L{layer}`` and its norm; token text
   and position; logit token and probability.
6. Lay out with ``_layout.layout_dot`` (fixed grid positions) and append a legend
   (shapes, colours, widths, method/ablation from metadata, "showing N of M edges").
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from attribution.graph import Graph, as_key
from viz._layout import DrawEdge, DrawNode, html_text, layout_dot
from viz.errors import VizError
from viz.style import KIND_NAMES, NEUTRAL, SHAPE_WORDS, CircuitStyle, clip_value, fmt_act, fmt_num, shorten
from viz.supernodes import resolve_groups


def as_graph(obj) -> Graph:
    """The ``Graph`` of a graph or of a circuit-like object with ``.graph``."""
    g = obj if isinstance(obj, Graph) else getattr(obj, "graph", None)
    if not isinstance(g, Graph):
        raise VizError(f"expected an attribution Graph or an object with a .graph Graph, got {type(obj).__name__}")
    return g


def show_token(tok: str) -> str:
    """A token made visible: spaces as ␣, newlines as ↵, tabs as →."""
    return str(tok).replace(" ", "␣").replace("\n", "↵").replace("\t", "→") or "∅"


def _small(text: str, style: CircuitStyle, color: str | None = None) -> str:
    col = f' COLOR="{color}"' if color else ""
    return f'<FONT POINT-SIZE="{fmt_num(style.font_size - 2)}"{col}>{html_text(text)}</FONT>'


def _node_label(row, desc: str, style: CircuitStyle) -> tuple[str, str]:
    """(HTML label, tooltip) of one graph node (step 5)."""
    t, act = row["type"], float(row["activation"])
    if t == "feature":
        head = f"L{row['layer']} · #{row['feature']}"
        lines = [f"<B>{html_text(head)}</B>"]
        if desc:
            lines.append(_small(shorten(desc, style.max_desc_chars), style))
        lines.append(_small(f"act {fmt_act(act)}", style, NEUTRAL))
    elif t == "error":
        head = f"err L{row['layer']}"
        lines = [f"<B>{html_text(head)}</B>", _small(f"norm {fmt_act(act)}", style, NEUTRAL)]
    elif t == "token":
        head = show_token(row["token"])
        lines = [f"<B>{html_text(shorten(head, style.max_desc_chars))}</B>",
                 _small(f"pos {row['pos']}", style, NEUTRAL)]
    else:
        name = row["key"].split(":", 2)[2]
        is_vocab = row["token_id"] >= 0
        head = f"“{show_token(row['token'])}”" if is_vocab else name
        lines = [f"<B>{html_text(shorten(head, style.max_desc_chars))}</B>",
                 _small(f"p={row['logit_prob']:.2f}" if is_vocab else f"value {fmt_act(act)}", style, NEUTRAL)]
    tip = f"{row['key']}  {desc}".strip() + f"  activation={fmt_num(act)}"
    return "<BR/>".join(lines), tip


_KIND_RANK = {"token": 0, "feature": 1, "error": 3, "logit": 4}
"""Order of node kinds inside one cell (supernodes rank 2)."""


def _rows_of(layers: list[int], n_layers: int) -> tuple[dict[int, int], dict[int, str]]:
    present = sorted(set(layers) | {-1, n_layers})
    names = {lay: ("Emb" if lay == -1 else "Logits" if lay == n_layers else f"L{lay}") for lay in present}
    row = {lay: i for i, lay in enumerate(present)}
    return row, {row[lay]: names[lay] for lay in present}


def _super_nodes(graph: Graph, member_of: dict[int, str], style: CircuitStyle) -> dict[str, dict]:
    """Drawn position and label parts of each supernode (step 2)."""
    t = graph.nodes
    out: dict[str, dict] = {}
    for name in dict.fromkeys(member_of[i] for i in sorted(member_of)):
        rows = [i for i in sorted(member_of) if member_of[i] == name]
        layers = t["layer"].to_numpy()[rows]
        pos = np.sort(t["pos"].to_numpy()[rows])
        out[name] = {
            "layer": int(np.round(layers.mean())), "pos": int(pos[(len(pos) - 1) // 2]), "rows": rows,
            "span": f"L{layers.min()}" + (f"–{layers.max()}" if layers.max() > layers.min() else ""),
            "act": float(t["activation"].to_numpy()[rows].sum()),
        }
    return out


def _draw_nodes(graph: Graph, style: CircuitStyle, descriptions: Mapping[str, str]):
    """Drawn nodes in draw order, node row -> drawn id, and row labels (steps 2, 4, 5)."""
    member_of = resolve_groups(graph, style.supernodes)
    supers = _super_nodes(graph, member_of, style)
    t = graph.nodes
    layers = [int(x) for i, x in enumerate(t["layer"].tolist()) if i not in member_of]
    row_of, row_labels = _rows_of(layers + [s["layer"] for s in supers.values()], graph.n_layers)
    drawn, ident, within = [], {}, {}
    for i, rec in enumerate(t.to_dict("records")):
        if i in member_of:
            ident[i] = f"super:{member_of[i]}"
            continue
        desc = rec["label"] or descriptions.get(rec["key"], "")
        label, tip = _node_label(rec, desc, style)
        drawn.append(DrawNode(rec["key"], rec["type"], row_of[rec["layer"]], rec["pos"], label, tip))
        ident[i] = rec["key"]
        within[rec["key"]] = (_KIND_RANK.get(rec["type"], 9), int(rec["feature"]) if rec["type"] == "feature" else i)
    auto = bool(style.supernodes_auto)
    for name, s in supers.items():
        lines = [f"<B>{html_text(shorten(name, style.max_desc_chars + 6))}</B>",
                 _small(f"{len(s['rows'])} features · {s['span']}" + (" · auto" if auto else ""), style),
                 _small(f"Σ act {fmt_act(s['act'])}", style, NEUTRAL)]
        tip = f"supernode {name}: " + ", ".join(t["key"].iat[i] for i in s["rows"])
        drawn.append(DrawNode(f"super:{name}", "supernode", row_of[s["layer"]], s["pos"], "<BR/>".join(lines),
                              tip, dashed=auto))
    order = {n.id: k for k, n in enumerate(sorted(drawn, key=lambda n: (n.row, n.col, *within.get(n.id, (2, 0)),
                                                                          n.id)))}
    drawn.sort(key=lambda n: order[n.id])
    return drawn, ident, row_labels, order


def _draw_edges(graph: Graph, ident: dict[int, str], order: dict[str, int],
                style: CircuitStyle) -> tuple[list[DrawEdge], int]:
    """Edges summed per drawn pair, filtered, capped and sorted, and the count before
    the ``max_edges`` cap (step 3)."""
    src, tgt, w = graph.edge_arrays()
    sums: dict[tuple[str, str], float] = {}
    for s, d, x in zip(src.tolist(), tgt.tolist(), w.tolist()):
        a, b = ident[s], ident[d]
        if a != b:
            sums[(a, b)] = sums.get((a, b), 0.0) + x
    edges = [DrawEdge(a, b, x) for (a, b), x in sums.items() if x != 0 and abs(x) >= style.min_abs_weight]
    total = len(edges)
    if style.max_edges is not None and total > style.max_edges:
        # strongest first; ties broken by draw order so the cut is deterministic
        edges.sort(key=lambda e: (-abs(e.weight), order[e.source], order[e.target]))
        edges = edges[:style.max_edges]
    return sorted(edges, key=lambda e: (order[e.source], order[e.target])), total


def _col_labels(graph: Graph, cols: set[int]) -> dict[int, str]:
    tokens = graph.metadata.get("tokens")
    if not isinstance(tokens, list):
        return {}
    return {p: show_token(str(tokens[p])) for p in sorted(cols) if 0 <= p < len(tokens)}


def legend_html(style: CircuitStyle, clip: float, title: str, notes: list[str], kinds: list[str]) -> str:
    """Inner HTML-like label of the legend table (title, shapes, colours, widths, notes)."""
    fs = fmt_num(style.font_size - 1)
    cells = "".join(f"<TD>{html_text(SHAPE_WORDS[k])} = {html_text(KIND_NAMES[k])}</TD>" for k in kinds)
    rows = []
    if title:
        rows.append(f'<TR><TD COLSPAN="{len(kinds)}" ALIGN="LEFT"><B>{html_text(title)}</B></TD></TR>')
    rows.append(f"<TR>{cells}</TR>")
    sign = (f'<FONT COLOR="{style.positive_color}"><B>━━ positive effect</B></FONT>   '
            f'<FONT COLOR="{style.negative_color}"><B>━━ negative effect</B></FONT>   '
            f"width ∝ |weight|: {fmt_num(style.min_width)} pt at 0 to {fmt_num(style.max_width)} pt "
            f"at |w| ≥ {html_text(fmt_num(clip))}")
    rows.append(f'<TR><TD COLSPAN="{len(kinds)}" ALIGN="LEFT">{sign}</TD></TR>')
    for note in notes:
        rows.append(f'<TR><TD COLSPAN="{len(kinds)}" ALIGN="LEFT">{html_text(note)}</TD></TR>')
    return (f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="2" CELLPADDING="2">'
            f'<TR><TD COLSPAN="{len(kinds)}"><FONT POINT-SIZE="{fs}"> </FONT></TD></TR>{"".join(rows)}</TABLE>')


def _notes(graph: Graph, style: CircuitStyle, shown: int, total: int) -> list[str]:
    md = graph.metadata
    parts = [f"{k}: {md[k]}" for k in ("model", "method", "ablation") if isinstance(md.get(k), (str, int, float))]
    if shown < total:
        parts.append(f"showing {shown} of {total} edges (strongest |weight|)")
    notes = [" · ".join(parts)] if parts else []
    if style.supernodes:
        notes.append("supernodes (bold): summed edges; " + (style.supernodes_auto + " (dashed)"
                                                            if style.supernodes_auto else "grouped by hand"))
    return notes


def to_dot(graph_or_circuit, style: CircuitStyle | None = None,
           descriptions: Mapping[str, str] | None = None) -> str:
    """DOT text of a circuit (see the module docstring). ``descriptions`` maps node keys
    (typed or string) to short texts (top tokens, logit effect) used where the node
    table's ``label`` is empty. Deterministic: same input, same bytes."""
    style = style or CircuitStyle()
    graph = as_graph(graph_or_circuit)
    desc = {str(as_key(k)): str(v) for k, v in (descriptions or {}).items()}
    nodes, ident, row_labels, order = _draw_nodes(graph, style, desc)
    edges, total = _draw_edges(graph, ident, order, style)
    cols = {n.col for n in nodes}
    title = style.title or str(graph.metadata.get("prompt", "") or "")
    legend = ""
    if style.show_legend:
        kinds = [k for k in ("token", "feature", "error", "logit", "supernode") if any(n.kind == k for n in nodes)]
        clip = clip_value(np.abs(np.array([e.weight for e in edges], dtype=np.float64)), style)
        notes = _notes(graph, style, len(edges), total)
        legend = legend_html(style, clip, shorten(title, 100), notes, kinds or ["feature"])
    return layout_dot("circuit", nodes, edges, row_labels, _col_labels(graph, cols), style, legend)


__all__ = ["as_graph", "legend_html", "show_token", "to_dot"]
