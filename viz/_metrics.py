"""Text and node sizes for the fixed-position layout (pure Python, no Graphviz run).

Graphviz sizes nodes from their labels only when it lays them out; the fixed-position
layout needs the sizes first, so they are estimated here:
1. Text width: Helvetica advance widths (Adobe AFM, 1/1000 em; Liberation Sans and
   Arial share them) per character, regular or bold; other characters count as a
   wide 0.75 em (fallback fonts), so estimates err on the large side.
2. An HTML-like label is split at ``<BR/>``; each line's size comes from its
   ``POINT-SIZE`` (else the base size) and ``<B>``; tags are dropped and entities
   decoded before measuring. Line height is 1.2 x the font size.
3. Node size = label box + margins, scaled per shape (diamonds, houses and octagons
   need room around the text box). The layout pins these sizes (``fixedsize``) so
   the boxes Graphviz draws are exactly the ones the layout kept apart; Graphviz's
   own sizing would widen houses by ~1.5x for no gain.
"""

from __future__ import annotations

import html
import re

_REGULAR = (
    278, 278, 355, 556, 556, 889, 667, 222, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667,
    611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 278, 278, 278, 469, 556, 222, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500,
    222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
)
"""Helvetica widths of ASCII 32..126."""
_BOLD = (
    278, 333, 474, 556, 556, 889, 722, 278, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611, 975, 722, 722, 722, 722, 667,
    611, 778, 722, 278, 556, 722, 611, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 333, 278, 333, 584, 556, 278, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556,
    278, 889, 611, 611, 611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584,
)
"""Helvetica-Bold widths of ASCII 32..126."""
_OTHER = {"·": 278, "“": 500, "”": 500, "…": 1000, "–": 556, "—": 1000, "Σ": 600, "∝": 720, "≥": 600}
"""Widths of non-ASCII characters used in labels."""
_FALLBACK = 750
"""Width of any other character (estimate on the large side)."""
_TAG = re.compile(r"<[^>]*>")
_SIZE = re.compile(r'POINT-SIZE="([\d.]+)"')
_SHAPE_SCALE = {"diamond": (1.6, 1.8), "octagon": (1.15, 1.35), "house": (1.08, 1.6), "ellipse": (1.3, 1.35)}
"""Shape -> (width, height) factor around the label box (step 3), checked by eye so
the text stays inside the outline."""


def text_width(text: str, size: float, bold: bool = False) -> float:
    """Width in points of one line of plain text (step 1)."""
    table = _BOLD if bold else _REGULAR
    units = 0
    for ch in text:
        o = ord(ch)
        units += table[o - 32] if 32 <= o < 127 else _OTHER.get(ch, _FALLBACK)
    return units * size / 1000.0


def label_size(label: str, size: float) -> tuple[float, float]:
    """(width, height) in points of an HTML-like label's text (step 2)."""
    width, height = 0.0, 0.0
    for line in label.split("<BR/>"):
        m = _SIZE.search(line)
        fs = float(m.group(1)) if m else size
        text = html.unescape(_TAG.sub("", line))
        width = max(width, text_width(text, fs, "<B>" in line))
        height += 1.2 * fs
    return width, height


def node_size(shape: str, label: str, size: float, margin: tuple[float, float]) -> tuple[float, float]:
    """(width, height) in inches of a node of this shape and label (step 3);
    ``margin`` is Graphviz's (x, y) label margin in inches."""
    w, h = label_size(label, size)
    w, h = w / 72 + 2 * margin[0], h / 72 + 2 * margin[1]
    fx, fy = _SHAPE_SCALE.get(shape, (1.0, 1.0))
    return w * fx, h * fy


__all__ = ["label_size", "node_size", "text_width"]
