"""One visual style for every viz output: palette, fonts, node shapes, edge widths.

1. Signs use the Okabe–Ito colour-blind-safe pair: blue (#0072B2) for positive
   (excitatory) effects, vermillion (#D55E00) for negative (inhibitory) ones. The
   same two colours are used in circuit figures, plots and HTML highlighting.
2. Edge width is linear in |weight|, clipped: ``min_width`` at 0, ``max_width`` at and
   above the clip value (``weight_clip``, or the ``clip_quantile`` of the drawn
   |weights| when it is None), so one huge edge cannot make all others hairlines.
3. Numbers in DOT text go through ``fmt_num`` (fixed significant digits) so the DOT is
   byte-for-byte deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from viz.errors import VizError

POSITIVE = "#0072B2"
"""Okabe–Ito blue: positive edges, positive activations."""
NEGATIVE = "#D55E00"
"""Okabe–Ito vermillion: negative edges, negative activations."""
NEUTRAL = "#555555"
"""Dark grey: borders, secondary text."""
FONT = "Helvetica,Arial,sans-serif"
"""Font family list used by DOT, matplotlib (first available) and HTML."""
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
"""Categorical colour cycle (Okabe–Ito) for plots with several series."""

NODE_SHAPES: Mapping[str, tuple[str, str, str]] = MappingProxyType({
    # type: (Graphviz shape, extra style, fill colour)
    "feature": ("box", "rounded,filled", "#FFFFFF"),
    "error": ("diamond", "filled", "#E4E4E4"),
    "token": ("house", "filled", "#F2F2F2"),
    "logit": ("octagon", "filled", "#FFF1CC"),
    "supernode": ("box", "rounded,filled,bold", "#E3EEF7"),
    "head": ("ellipse", "filled", "#FFFFFF"),
    "mlp": ("box", "filled", "#EDEDED"),
})
"""Shape, style and fill of each node type (``supernode`` for merged groups)."""
SHAPE_WORDS: Mapping[str, str] = MappingProxyType({
    "feature": "rounded box", "error": "diamond", "token": "house", "logit": "octagon",
    "supernode": "bold rounded box", "head": "ellipse", "mlp": "box",
})
"""How each shape is named in the legend."""
KIND_NAMES: Mapping[str, str] = MappingProxyType({
    "feature": "feature", "error": "error", "token": "token embedding", "logit": "logit",
    "supernode": "supernode", "head": "attention", "mlp": "MLP",
})
"""How each node kind is named in the legend."""


DEFAULT_MAX_EDGES = 120
"""Edges ``circuits render`` draws by default (the strongest by |weight|; the legend says
so): a ~100-node pruned circuit carries thousands of edges, and drawing them all is both
unreadable (a solid mesh) and slow (Graphviz edge routing grows with the edge count:
~18 s for 2,535 edges against ~1.6 s for 120 on a 107-node circuit)."""


@dataclass(frozen=True)
class CircuitStyle:
    """How a circuit figure is drawn (``to_dot`` / ``component_to_dot``)."""

    title: str = ""
    """Title shown above the legend; empty: built from metadata (prompt, method)."""
    font: str = FONT
    """Graphviz ``fontname`` for graph, nodes and edges."""
    font_size: float = 11.0
    """Base font size (points) of node labels; secondary lines are 2 pt smaller."""
    positive_color: str = POSITIVE
    """Colour of positive edges."""
    negative_color: str = NEGATIVE
    """Colour of negative edges."""
    edge_alpha: str = "B3"
    """Two hex digits of opacity appended to edge colours (overlapping edges stay readable)."""
    min_width: float = 0.6
    """Pen width (points) of the weakest drawn edge."""
    max_width: float = 4.5
    """Pen width (points) of edges at or above the clip value."""
    weight_clip: float | None = None
    """|weight| mapped to ``max_width``; None: the ``clip_quantile`` of drawn |weights|."""
    clip_quantile: float = 0.95
    """Quantile of |weight| used as the clip value when ``weight_clip`` is None."""
    min_abs_weight: float = 0.0
    """Edges with |weight| below this are not drawn (after supernode aggregation)."""
    max_desc_chars: int = 26
    """Descriptions longer than this are cut with an ellipsis."""
    show_legend: bool = True
    """Draw the legend (shapes, colours, widths) under the figure."""
    show_layer_labels: bool = True
    """Draw a column of row labels (Emb, L0, …, Logits) on the left."""
    supernodes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Name -> member node keys (str or typed); members are drawn as one node and
    their edges summed. Members absent from the graph are ignored."""
    supernodes_auto: str = ""
    """Non-empty when ``supernodes`` came from ``auto_supernodes``: the method text
    shown in the legend, and supernodes are drawn dashed and tagged "auto"."""
    nodesep: float = 0.12
    """Gap (inches) between nodes side by side in one cell, and between wrapped lines."""
    ranksep: float = 0.45
    """Gap (inches) between rows (layers)."""
    colsep: float = 0.25
    """Gap (inches) between columns (token positions)."""
    page_size: tuple[float, float] = (9.0, 6.0)
    """(width, height) in inches of the page the figure should fit: crowded cells wrap
    onto as many lines as make the figure largest when scaled to fit it."""
    splines: str = "true"
    """Graphviz ``splines`` for edges: ``true`` routes smooth curves around nodes,
    ``curved`` draws simple arcs (faster, may pass under nodes)."""
    max_edges: int | None = None
    """Draw only this many strongest edges by |weight| (display only; the legend
    says "showing N of M edges"); None: all."""

    def __post_init__(self) -> None:
        if not 0 < self.min_width <= self.max_width:
            raise VizError(f"need 0 < min_width <= max_width, got {self.min_width}, {self.max_width}")
        if self.weight_clip is not None and not self.weight_clip > 0:
            raise VizError(f"weight_clip must be > 0 or None, got {self.weight_clip}")
        if not 0 < self.clip_quantile <= 1:
            raise VizError(f"clip_quantile must be in (0, 1], got {self.clip_quantile}")
        if self.max_desc_chars < 4:
            raise VizError(f"max_desc_chars must be >= 4, got {self.max_desc_chars}")
        if self.max_edges is not None and self.max_edges < 0:
            raise VizError(f"max_edges must be >= 0 or None, got {self.max_edges}")
        if len(self.page_size) != 2 or not min(self.page_size) > 0:
            raise VizError(f"page_size must be two positive inches, got {self.page_size}")
        if len(self.edge_alpha) != 2 or any(c not in "0123456789abcdefABCDEF" for c in self.edge_alpha):
            raise VizError(f"edge_alpha must be two hex digits, got {self.edge_alpha!r}")
        # Freeze the mapping so a style can be shared safely.
        groups = {str(k): tuple(str(m) for m in v) for k, v in dict(self.supernodes).items()}
        object.__setattr__(self, "supernodes", MappingProxyType(groups))


def fmt_num(x: float, digits: int = 3) -> str:
    """Fixed, platform-independent number text: ``digits`` significant digits."""
    if not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def fmt_act(x: float) -> str:
    """Activation text for node labels: two decimals below 100, else 3 significant digits."""
    return f"{x:.2f}" if abs(x) < 100 else fmt_num(x)


def clip_value(abs_weights: np.ndarray, style: CircuitStyle) -> float:
    """The |weight| that maps to ``max_width`` (see the module docstring, step 2)."""
    if style.weight_clip is not None:
        return float(style.weight_clip)
    if abs_weights.size == 0:
        return 1.0
    q = float(np.quantile(abs_weights, style.clip_quantile, method="linear"))
    return q if q > 0 else float(abs_weights.max()) or 1.0


def edge_width(abs_weight: float, clip: float, style: CircuitStyle) -> float:
    """Pen width of an edge with this |weight| (linear, clipped)."""
    frac = min(abs_weight / clip, 1.0) if clip > 0 else 1.0
    return style.min_width + (style.max_width - style.min_width) * frac


def edge_color(weight: float, style: CircuitStyle) -> str:
    """Colour (with alpha) of an edge of this signed weight."""
    base = style.positive_color if weight >= 0 else style.negative_color
    return f"{base}{style.edge_alpha}"


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[: limit - 1].rstrip() + "…"


__all__ = [
    "DEFAULT_MAX_EDGES", "FONT", "KIND_NAMES", "NEGATIVE", "NEUTRAL", "NODE_SHAPES", "OKABE_ITO", "POSITIVE",
    "SHAPE_WORDS",
    "CircuitStyle", "clip_value", "edge_color", "edge_width", "fmt_act", "fmt_num", "shorten",
]
