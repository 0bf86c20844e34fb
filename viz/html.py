"""Shared pieces of the offline HTML pages (dashboards, index, report).

1. ``esc`` escapes all text (``html.escape`` with quotes); nothing user-supplied is
   ever written unescaped.
2. ``page`` wraps a body in a complete document with inline CSS and the check script,
   no external resources (no CDN, no fonts, no network).
3. The check script runs on ``load``: it counts images that failed to decode
   (``naturalWidth == 0``) into ``body[data-broken-images]`` and sets
   ``body[data-ok="1"]``, so a headless browser's ``--dump-dom`` can verify the page.
4. ``token_spans`` colours each token by its activation (blue positive, vermillion
   negative, opacity ∝ |a| / scale) with the value in the tooltip.
5. ``histogram_svg`` draws a bar histogram as a small inline SVG (no matplotlib).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from viz.style import FONT, NEGATIVE, NEUTRAL, POSITIVE

CSS = f"""
:root {{ --pos: {POSITIVE}; --neg: {NEGATIVE}; --muted: {NEUTRAL}; }}
body {{ font-family: {FONT}; font-size: 14px; color: #222; margin: 24px auto; max-width: 1200px;
       padding: 0 16px; line-height: 1.45; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }} h2 {{ font-size: 18px; margin-top: 28px;
  border-bottom: 1px solid #ddd; padding-bottom: 4px; }} h3 {{ font-size: 15px; margin: 16px 0 6px; }}
.muted {{ color: var(--muted); }}
table.data {{ border-collapse: collapse; margin: 8px 0; font-size: 13px; }}
table.data th, table.data td {{ border-bottom: 1px solid #e5e5e5; padding: 3px 10px; text-align: right; }}
table.data th {{ background: #f6f6f6; cursor: pointer; user-select: none; }}
table.data td.text, table.data th.text {{ text-align: left; }}
.tokens {{ font-family: Menlo, Consolas, monospace; font-size: 12.5px; white-space: pre-wrap;
          margin: 3px 0; padding: 4px 6px; background: #fafafa; border-radius: 4px; }}
.tok {{ border-radius: 2px; }}
.figure svg, .figure img {{ max-width: 100%; height: auto; }}
.grid2 {{ display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }}
.pos {{ color: var(--pos); }} .neg {{ color: var(--neg); }}
input.search {{ font-size: 14px; padding: 4px 8px; width: 320px; margin: 8px 0; }}
"""

CHECK_JS = """
window.addEventListener('load', function () {
  var bad = 0;
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i];
    if (!im.complete || im.naturalWidth === 0) { bad++; }
  }
  document.body.dataset.brokenImages = String(bad);
  document.body.dataset.ok = '1';
});
"""


def esc(text: object) -> str:
    """HTML-escaped ``str(text)`` (quotes too, so it is safe in attributes)."""
    return html.escape(str(text), quote=True)


def page(title: str, body: str, script: str = "") -> str:
    """A complete offline HTML document (inline CSS, inline scripts, UTF-8)."""
    extra = f"<script>{script}</script>" if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
            f"<body>\n{body}\n<script>{CHECK_JS}</script>{extra}\n</body></html>\n")


def fmt(x: object, digits: int = 4) -> str:
    """Numbers to ``digits`` significant digits; other values as text."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return str(x)
    return "nan" if math.isnan(x) else f"{x:.{digits}g}"


def token_color(a: float, scale: float) -> str:
    """CSS ``rgba`` background for activation ``a`` (opacity |a| / scale, capped at 0.85)."""
    alpha = 0.0 if scale <= 0 or not math.isfinite(a) else min(abs(a) / scale, 1.0) * 0.85
    hexcol = POSITIVE if a >= 0 else NEGATIVE
    r, g, b = (int(hexcol[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha:.3f})"


def token_spans(tokens: Sequence[str], acts: Sequence[float], scale: float) -> str:
    """Tokens as coloured ``<span>``s with the activation in the tooltip (step 4)."""
    if len(tokens) != len(acts):
        raise ValueError(f"{len(tokens)} tokens but {len(acts)} activations")
    parts = []
    for t, a in zip(tokens, acts):
        a = float(a)
        parts.append(f'<span class="tok" style="background:{token_color(a, scale)}" '
                     f'title="{esc(repr(str(t)))}: {a:.3f}">{esc(t)}</span>')
    return "".join(parts)


def histogram_svg(counts: Sequence[float], edges: Sequence[float], width: int = 420, height: int = 140,
                  label: str = "activation") -> str:
    """Inline SVG bar chart of a histogram (``len(edges) == len(counts) + 1``)."""
    if len(edges) != len(counts) + 1 or not counts:
        raise ValueError(f"histogram needs len(edges) == len(counts) + 1 > 1, got {len(edges)} and {len(counts)}")
    top = max(max(float(c) for c in counts), 1.0)
    left, pw, ph = 36, width - 46, height - 32  # 36 px for the y labels, 24 px for the x labels
    bw = pw / len(counts)
    bars = []
    for i, c in enumerate(counts):
        h = ph * float(c) / top
        bars.append(f'<rect x="{left + i * bw:.2f}" y="{8 + ph - h:.2f}" width="{max(bw - 1, 0.5):.2f}" '
                    f'height="{h:.2f}" fill="{POSITIVE}"><title>[{fmt(edges[i])}, {fmt(edges[i + 1])}): '
                    f'{fmt(c)}</title></rect>')
    axis = (f'<line x1="{left}" y1="{8 + ph}" x2="{left + pw}" y2="{8 + ph}" stroke="#888"/>'
            f'<text x="{left}" y="{height - 6}" font-size="10">{esc(fmt(edges[0], 3))}</text>'
            f'<text x="{left + pw}" y="{height - 6}" font-size="10" text-anchor="end">{esc(fmt(edges[-1], 3))}</text>'
            f'<text x="{left + pw / 2}" y="{height - 6}" font-size="10" text-anchor="middle">{esc(label)}</text>'
            f'<text x="{left - 4}" y="16" font-size="10" text-anchor="end">{esc(fmt(top, 3))}</text>'
            f'<text x="{left - 4}" y="{8 + ph}" font-size="10" text-anchor="end">0</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="{esc(FONT)}" role="img">'
            f'{"".join(bars)}{axis}</svg>')


def table_html(headers: Sequence[str], rows: Sequence[Sequence[object]], text_cols: Sequence[int] = (),
               table_id: str = "") -> str:
    """A ``table.data`` with escaped cells; numeric cells carry ``data-value`` for sorting."""
    tid = f' id="{esc(table_id)}"' if table_id else ""
    head = "".join(f'<th class="{"text" if i in text_cols else "num"}">{esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for r in rows:
        cells = []
        for i, v in enumerate(r):
            if i in text_cols or not isinstance(v, (int, float)) or isinstance(v, bool):
                cells.append(f'<td class="text">{v if isinstance(v, Raw) else esc(v)}</td>')
            else:
                cells.append(f'<td data-value="{esc(repr(float(v)))}">{esc(fmt(v))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="data"{tid}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


class Raw(str):
    """A string of trusted HTML (built by viz itself) that must not be escaped again."""


__all__ = ["CHECK_JS", "CSS", "Raw", "esc", "fmt", "histogram_svg", "page", "table_html", "token_color",
           "token_spans"]
