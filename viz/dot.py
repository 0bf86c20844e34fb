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
   labelled by the token row; a position without a token node is labelled with
   ``metadata['tokens']`` when it holds strings, else the token text its feature and
   error nodes carry (``build_graph`` stores ids in metadata).
   Within a (layer, position) cell: features by feature id, then supernodes, errors,
   logits (in graph order).
5. Node labels: feature ``L{layer} · #{id}``, description (``label`` column, else
   ``descriptions[key]``), activation; error ``err L{layer}`` and its norm; token text
   and position; logit token and probability.
6. Lay out with ``_layout.layout_dot`` (fixed grid positions) and append a legend
   (title, the target the graph explains, shapes, colours, widths, method/ablation from
   metadata, "showing the N strongest of M edges").

The target (``target_label``): ``metadata["target"]["label"]`` when the attribute command
recorded one (e.g. ``logit(" Kate") − logit(" Anna")``); otherwise derived from the logit
nodes, so graphs saved before that key existed are named too: vocabulary logits as
``top logits: " Kate" (p=0.41), ...``, a custom direction as its name and value
(``logit_diff = 2.31``), the metric node of the patching-style methods as
``<method> metric: <its targets> (clean value)``.
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
    """Token text of each column: ``metadata['tokens']`` when it holds strings, else (``build_graph``
    stores token *ids* there) the node table, where every token, feature and error node carries
    its position's token string (logit nodes carry their output token, so they are skipped)."""
    text: dict[int, str] = {}
    tokens = graph.metadata.get("tokens")
    if isinstance(tokens, list):
        text = {p: tok for p, tok in enumerate(tokens) if isinstance(tok, str) and tok}
    t = graph.nodes
    for kinds in (("token",), ("feature", "error")):
        for p, tok, kind in zip(t["pos"].tolist(), t["token"].tolist(), t["type"].tolist()):
            if kind in kinds and tok and int(p) not in text:
                text[int(p)] = str(tok)
    return {p: show_token(text[p]) for p in sorted(cols) if p in text}


def legend_html(style: CircuitStyle, clip: float, title: str, notes: list[str], kinds: list[str],
                target: str = "") -> str:
    """Inner HTML-like label of the legend table (title, target, shapes, colours, widths, notes)."""
    fs = fmt_num(style.font_size - 1)
    cells = "".join(f"<TD>{html_text(SHAPE_WORDS[k])} = {html_text(KIND_NAMES[k])}</TD>" for k in kinds)
    rows = []
    if title:
        rows.append(f'<TR><TD COLSPAN="{len(kinds)}" ALIGN="LEFT"><B>{html_text(title)}</B></TD></TR>')
    if target:
        rows.append(f'<TR><TD COLSPAN="{len(kinds)}" ALIGN="LEFT">target: <B>{html_text(target)}</B></TD></TR>')
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


TARGET_TOKENS = 3
"""Vocabulary logits named in a derived target label; the rest are counted ("+N more")."""


def _quoted(tok: str) -> str:
    # straight quotes keep a leading space visible: " Kate" vs "Kate"
    return '"' + str(tok).replace("\n", "\\n").replace("\t", "\\t") + '"'


def _target_names(md: Mapping) -> str:
    """The targets a patching metric was built from (``metadata["targets"]`` key strings)."""
    names = []
    for k in md.get("targets") or []:
        parts = str(k).split(":", 2)
        if len(parts) == 3 and parts[0] == "logit" and parts[2] != "metric":
            names.append(f"token #{parts[2]}" if parts[2].lstrip("-").isdigit() else parts[2])
    if len(names) <= 1:
        return names[0] if names else "its targets"
    more = f", … (+{len(names) - TARGET_TOKENS} more)" if len(names) > TARGET_TOKENS else ""
    return "weighted " + ", ".join(names[:TARGET_TOKENS]) + more  # the metric sums targets by weight


def target_label(graph: Graph) -> str:
    """What the graph explains, in words (module docstring); "" when it has no logit node."""
    md = graph.metadata
    t = graph.nodes[graph.nodes["type"] == "logit"]
    named = t[t["token_id"] < 0]
    given = md.get("target")
    if isinstance(given, Mapping) and isinstance(given.get("label"), str) and given["label"].strip():
        label = " ".join(given["label"].split())
        if len(named) == 1 and len(t) == 1:  # one direction: its clean value is worth showing
            label += f" = {fmt_act(float(named['activation'].iat[0]))}"
        return label
    parts = []
    vocab = t[t["token_id"] >= 0]
    if len(vocab):
        probs = vocab["logit_prob"].to_numpy()
        # build_graph's default targets come in descending probability; chosen ids need not
        head = "top logits" if bool((np.diff(probs) <= 0).all()) else "logits"
        items = [f"{_quoted(tok)} (p={p:.2f})" for tok, p in zip(vocab["token"], probs)]
        more = f", … (+{len(items) - TARGET_TOKENS} more)" if len(items) > TARGET_TOKENS else ""
        parts.append(f"{head}: " + ", ".join(items[:TARGET_TOKENS]) + more)
    for key, act in zip(named["key"], named["activation"]):
        name = str(key).split(":", 2)[2]
        if name == "metric":
            method = md.get("method") if isinstance(md.get("method"), str) else "patching"
            parts.append(f"{method} metric: {_target_names(md)} (clean {fmt_act(float(act))})")
        else:
            parts.append(f"{name} = {fmt_act(float(act))}")
    return "; ".join(parts)


def _notes(graph: Graph, style: CircuitStyle, shown: int, total: int) -> list[str]:
    md = graph.metadata
    parts = [f"{k}: {md[k]}" for k in ("model", "method", "ablation") if isinstance(md.get(k), (str, int, float))]
    model = md.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("path"), str) and model["path"]:
        # build_graph records {"path", "arch", ...}: the directory name identifies the model
        parts.insert(0, f"model: {model['path'].rstrip('/').rsplit('/', 1)[-1]}")
    if shown < total:
        parts.append(f"showing the {shown:,} strongest of {total:,} edges (by |weight|)")
    notes = [" · ".join(parts)] if parts else []
    if style.supernodes:
        notes.append("supernodes (bold): summed edges; " + (style.supernodes_auto + " (dashed)"
                                                            if style.supernodes_auto else "grouped by hand"))
    return notes


def edge_counts(graph_or_circuit, style: CircuitStyle | None = None) -> tuple[int, int]:
    """(edges drawn, edges before the ``max_edges`` cap) of ``to_dot`` with this style:
    counted after supernode aggregation and the ``min_abs_weight`` filter, as in the legend."""
    style = style or CircuitStyle()
    graph = as_graph(graph_or_circuit)
    _, ident, _, order = _draw_nodes(graph, style, {})
    edges, total = _draw_edges(graph, ident, order, style)
    return len(edges), total


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
        legend = legend_html(style, clip, shorten(title, 100), notes, kinds or ["feature"],
                             target=shorten(target_label(graph), 140))
    return layout_dot("circuit", nodes, edges, row_labels, _col_labels(graph, cols), style, legend)


__all__ = ["TARGET_TOKENS", "as_graph", "edge_counts", "legend_html", "show_token", "target_label", "to_dot"]
