"""QK attribution figures: why one head attends from a query to a key.

``qk_figure(result)`` (matplotlib) and ``qk_table_html(result)`` (an offline HTML page)
show one ``attribution.attribute.qk.QKAttribution``:
1. Validate the input (a ``QKAttribution``, ``top`` >= 1).
2. Per side, the ``top`` nodes by |marginal| (query side: scale · q_i · k_vec; key side:
   scale · q_vec · k_j), largest first, then one "other N nodes" row with the sum of the
   rest, so each side's rows sum to the score.
3. Signed horizontal bars: blue positive, vermillion negative (``viz.style``); labels
   ``tok "text" @pos``, ``L{layer} #{feature} @pos`` (+ a description from
   ``descriptions[str(key)]``), ``err L{layer} @pos``, ``bias (projection|residual)``.
4. Title: layer, head (and kv head under GQA), positions, score, the softcapped score when
   the model caps, the clean attention weight. Saved atomically when ``path`` is given.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from attribution.attribute.qk import BiasNode, QKAttribution
from attribution.graph.keys import ErrorNode, FeatureNode, TokenNode
from viz._atomic import atomic_write_text
from viz.errors import SchemaError
from viz.plots import new_figure, plot_context, save_figure
from viz.style import NEGATIVE, NEUTRAL, POSITIVE, shorten


def _check(result, top) -> None:
    if not isinstance(result, QKAttribution):
        raise SchemaError(f"expected a QKAttribution (attribution.attribute.qk), got "
                          f"{type(result).__name__}; compute one with qk_attribution")
    if not isinstance(top, int) or top < 1:
        raise SchemaError(f"top must be an int >= 1, got {top!r}")


def node_label(node, tokens: Sequence[str] | None = None,
               descriptions: Mapping[str, str] | None = None) -> str:
    """Short text of one QK node (module docstring, step 3)."""
    if isinstance(node, TokenNode):
        text = tokens[node.pos] if tokens is not None and node.pos < len(tokens) else f"#{node.token_id}"
        return f'tok "{shorten(str(text), 16)}" @{node.pos}'
    if isinstance(node, FeatureNode):
        desc = (descriptions or {}).get(str(node))
        base = f"L{node.layer} #{node.feature} @{node.pos}"
        return f"{base} {shorten(desc, 28)}" if desc else base
    if isinstance(node, ErrorNode):
        return f"err L{node.layer} @{node.pos}"
    if isinstance(node, BiasNode):
        return f"bias ({node.part})"
    return str(node)


def side_rows(result: QKAttribution, side: str, top: int = 8, tokens=None,
              descriptions=None) -> list[tuple[str, float]]:
    """(label, marginal) rows of one side: the ``top`` largest |marginal| nodes, then the
    rest summed in one row (absent when nothing is left)."""
    _check(result, top)
    if side not in ("query", "key"):
        raise SchemaError(f"side must be 'query' or 'key', got {side!r}")
    nodes = result.query_nodes if side == "query" else result.key_nodes
    marg = result.query_marginals if side == "query" else result.key_marginals
    order = np.argsort(-np.abs(marg), kind="stable")
    rows = [(node_label(nodes[i], tokens, descriptions), float(marg[i])) for i in order[:top]]
    rest = order[top:]
    if len(rest):
        rows.append((f"other {len(rest)} nodes", float(marg[rest].sum())))
    return rows


def qk_title(result: QKAttribution) -> str:
    """One-line summary: layer, head, positions, score, capped score, attention weight."""
    _check(result, 1)
    head = f"H{result.head}" + (f" (kv {result.kv_head})" if result.kv_head != result.head else "")
    score = f"score {result.score:+.3f}"
    if result.softcap is not None:
        score += f" → capped {result.capped_score:+.3f}"
    return (f"L{result.layer} {head}: query @{result.query_pos} → key @{result.key_pos}, "
            f"{score}, attention {result.pattern:.3f}")


def qk_figure(result: QKAttribution, top: int = 8, tokens: Sequence[str] | None = None,
              descriptions: Mapping[str, str] | None = None, path=None):
    """Two signed bar charts (query-side and key-side contributors); returns the Figure."""
    _check(result, top)
    sides = [(s, side_rows(result, s, top, tokens, descriptions)) for s in ("query", "key")]
    n = max(len(r) for _, r in sides)
    with plot_context():
        fig, axes = new_figure(9.0, 1.2 + 0.28 * n, ncols=2)
        for ax, (side, rows) in zip(axes, sides):
            labels = [r[0] for r in rows][::-1]
            values = np.array([r[1] for r in rows][::-1])
            colors = [POSITIVE if v >= 0 else NEGATIVE for v in values]
            ax.barh(np.arange(len(rows)), values, color=colors, height=0.7)
            ax.set_yticks(np.arange(len(rows)), labels)
            ax.axvline(0.0, color=NEUTRAL, lw=0.8)
            ax.set_title(f"{side} side (@{result.query_pos if side == 'query' else result.key_pos})")
            ax.set_xlabel("share of the score")
        fig.suptitle(qk_title(result), fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig


def _bar_cell(value: float, scale: float) -> str:
    width = 0.0 if scale <= 0 else min(100.0, 100.0 * abs(value) / scale)
    color = POSITIVE if value >= 0 else NEGATIVE
    return (f'<td class="num">{value:+.4f}</td><td class="bar"><div style="width:{width:.1f}%;'
            f'background:{color}"></div></td>')


def qk_table_html(result: QKAttribution, top: int = 8, tokens: Sequence[str] | None = None,
                  descriptions: Mapping[str, str] | None = None,
                  path: str | os.PathLike | None = None) -> str:
    """A self-contained HTML page with both sides' top contributors as signed bars; written
    atomically to ``path`` when given. Returns the HTML text."""
    _check(result, top)
    tables = []
    for side in ("query", "key"):
        rows = side_rows(result, side, top, tokens, descriptions)
        scale = max((abs(v) for _, v in rows), default=0.0)
        body = "".join(f"<tr><td>{html.escape(label)}</td>{_bar_cell(v, scale)}</tr>"
                       for label, v in rows)
        pos = result.query_pos if side == "query" else result.key_pos
        tables.append(f"<table><caption>{side} side (@{pos})</caption>"
                      f"<tr><th>node</th><th>share</th><th></th></tr>{body}</table>")
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>QK attribution</title>"
            "<style>body{font-family:Helvetica,Arial,sans-serif;font-size:13px}"
            "table{display:inline-table;border-collapse:collapse;margin:8px 24px 8px 0}"
            "td,th{padding:2px 6px;text-align:left}td.num{text-align:right;font-family:monospace}"
            "td.bar{width:160px}td.bar div{height:10px}</style></head><body>"
            f"<h3>{html.escape(qk_title(result))}</h3>{''.join(tables)}"
            "<p>Each side's rows sum to the score (pre-softcap); frozen attention patterns, "
            "norm scales and q/k norms.</p></body></html>")
    if path is not None:
        atomic_write_text(Path(path), page)
    return page


__all__ = ["node_label", "qk_figure", "qk_table_html", "qk_title", "side_rows"]
