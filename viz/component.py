"""Component-level circuits (attention heads and MLPs) as DOT text.

``component_to_dot(nodes, edges, style, title)``:
1. Validate the tables. ``nodes`` needs a ``name`` column: ``embed``, ``logits``,
   ``L{l}.H{h}`` (head), ``L{l}.ATTN`` (whole attention layer) or ``L{l}.MLP``;
   optional ``score`` (float, shown in the node), ``pos`` (column, default 0) and
   ``label`` (short description). ``edges`` needs ``source``, ``target`` (node names)
   and ``weight`` (signed float).
2. Rows: ``embed`` at the bottom, then for each layer a row of its heads and, above it,
   a row for its MLP (attention writes before the MLP within a layer), ``logits`` on top.
3. Same shapes-by-kind, sign palette, clipped widths, legend and grid layout as
   ``to_dot`` (``_layout.layout_dot``); edges ordered by (source, target) draw order.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from viz._layout import DrawEdge, DrawNode, html_text, layout_dot
from viz.dot import legend_html
from viz.errors import SchemaError
from viz.style import NEUTRAL, CircuitStyle, clip_value, fmt_act, fmt_num, shorten

_HEAD = re.compile(r"^L(\d+)\.H(\d+)$")
_BLOCK = re.compile(r"^L(\d+)\.(ATTN|MLP)$", re.IGNORECASE)


def parse_component(name: str) -> tuple[str, int, int]:
    """(kind, layer, head) of a component name; layer -1 for embed, head -1 if none.
    ``logits`` returns layer -2 (placed on top by the caller)."""
    if name == "embed":
        return "token", -1, -1
    if name == "logits":
        return "logit", -2, -1
    m = _HEAD.match(name)
    if m:
        return "head", int(m[1]), int(m[2])
    m = _BLOCK.match(name)
    if m:
        return ("mlp" if m[2].upper() == "MLP" else "head"), int(m[1]), -1
    raise SchemaError(f"component name {name!r} is not embed, logits, L<l>.H<h>, L<l>.ATTN or L<l>.MLP")


def _check(nodes: pd.DataFrame, edges: pd.DataFrame) -> None:
    for df, cols, what in ((nodes, ("name",), "nodes"), (edges, ("source", "target", "weight"), "edges")):
        if not isinstance(df, pd.DataFrame):
            raise SchemaError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise SchemaError(f"{what} table lacks columns {missing}; has {list(df.columns)}")
    if nodes["name"].duplicated().any():
        raise SchemaError(f"duplicate component names: {nodes['name'][nodes['name'].duplicated()].tolist()[:5]}")
    unknown = sorted((set(edges["source"]) | set(edges["target"])) - set(nodes["name"]))
    if unknown:
        raise SchemaError(f"edges name components missing from the nodes table: {unknown[:5]}")
    if not np.isfinite(edges["weight"].to_numpy(dtype=np.float64)).all():
        raise SchemaError("edge weights must be finite")


def _rows(parsed: list[tuple[str, int, int]]) -> tuple[list[int], dict[int, str]]:
    """Row index of every node and the row labels (step 2)."""
    top = max([lay for _, lay, _ in parsed] + [0])
    raw = []
    for kind, lay, _ in parsed:
        raw.append(0 if lay == -1 else 2 * top + 3 if lay == -2 else 1 + 2 * lay + (kind == "mlp"))
    present = sorted(set(raw) | {0, 2 * top + 3})
    row = {r: i for i, r in enumerate(present)}

    def name(r: int) -> str:
        if r == 0:
            return "Emb"
        if r == 2 * top + 3:
            return "Logits"
        return f"L{(r - 1) // 2} " + ("MLP" if (r - 1) % 2 else "attn")

    return [row[r] for r in raw], {row[r]: name(r) for r in present}


def _label(rec: dict, style: CircuitStyle) -> str:
    fs = fmt_num(style.font_size - 2)
    lines = [f"<B>{html_text(rec['name'])}</B>"]
    if str(rec.get("label", "") or ""):
        lines.append(f'<FONT POINT-SIZE="{fs}">{html_text(shorten(rec["label"], style.max_desc_chars))}</FONT>')
    if "score" in rec and rec["score"] is not None and not pd.isna(rec["score"]):
        score = html_text(fmt_act(float(rec["score"])))
        lines.append(f'<FONT POINT-SIZE="{fs}" COLOR="{NEUTRAL}">score {score}</FONT>')
    return "<BR/>".join(lines)


def component_to_dot(nodes: pd.DataFrame, edges: pd.DataFrame, style: CircuitStyle | None = None,
                     title: str = "") -> str:
    """DOT text of a component-level circuit (see the module docstring). Deterministic."""
    style = style or CircuitStyle()
    _check(nodes, edges)
    recs = nodes.to_dict("records")
    parsed = [parse_component(str(r["name"])) for r in recs]
    rows, row_labels = _rows(parsed)
    drawn = []
    for rec, (kind, _, _), row in zip(recs, parsed, rows):
        pos = int(rec["pos"]) if "pos" in rec and not pd.isna(rec["pos"]) else 0
        score = f" score={fmt_num(float(rec['score']))}" if "score" in rec and not pd.isna(rec["score"]) else ""
        drawn.append(DrawNode(str(rec["name"]), kind, row, pos, _label(rec, style), f"{rec['name']}{score}"))
    sort_key = {n.id: (n.row, n.col, parsed[i][2], i) for i, n in enumerate(drawn)}
    drawn.sort(key=lambda n: sort_key[n.id])
    order = {n.id: k for k, n in enumerate(drawn)}
    sums: dict[tuple[str, str], float] = {}
    for s, t, w in zip(edges["source"].astype(str), edges["target"].astype(str), edges["weight"].astype(float)):
        sums[(s, t)] = sums.get((s, t), 0.0) + w
    draw_edges = sorted((DrawEdge(s, t, w) for (s, t), w in sums.items() if w != 0 and abs(w) >= style.min_abs_weight),
                        key=lambda e: (order[e.source], order[e.target]))
    legend = ""
    if style.show_legend:
        kinds = [k for k in ("token", "head", "mlp", "logit") if any(n.kind == k for n in drawn)]
        clip = clip_value(np.abs(np.array([e.weight for e in draw_edges], dtype=np.float64)), style)
        legend = legend_html(style, clip, style.title or title, [], kinds or ["head"])
    return layout_dot("components", drawn, draw_edges, row_labels, {}, style, legend)


__all__ = ["component_to_dot", "parse_component"]
