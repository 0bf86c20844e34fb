"""One self-contained offline HTML report.

``write_report(path, sections, title)``:
1. Each ``Section`` has a title, an optional note and a list of items; an item is
   rendered by its type:
   - ``str``: an escaped paragraph;
   - ``pandas.DataFrame``: an escaped table (numbers to 4 significant digits);
   - a matplotlib ``Figure``: inlined as SVG;
   - a ``Graph`` or circuit (has ``.graph``): drawn with ``to_dot`` and ``dot``, inlined
     as SVG (a note replaces it when Graphviz is missing);
   - ``Svg(text)``: SVG text, inlined (prolog and ``<script>`` removed);
   - ``pathlib.Path``: ``.svg`` inlined, ``.png``/``.jpg`` embedded as base64 ``data:`` URIs;
   - ``Links({text: href})``: a list of links (relative paths or http(s) only);
   - ``Heading(text)``: a sub-heading; ``Note(text)``: a muted paragraph (provenance);
   - ``Raw``: trusted HTML that viz built (e.g. ``token_heatmap_html``).
2. A section's ``status`` says whether it holds results: ``""`` (it does),
   ``"missing"`` (nothing found; the note says how to make it) or ``"unreadable"``
   (its files are corrupt; the note names them). The status shows in the table of
   contents and under the heading, so a report never drops a section silently.
3. Everything is escaped with ``html.escape``; no external resources are referenced.
   The whole page is built in memory before anything is written, so a failure
   leaves no partial file.
4. ``standard_sections`` builds the usual order (circuit, metrics tables, faithfulness,
   predicted vs. measured, co-activation, dashboards) from whichever inputs are given.
5. The page is written atomically.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from viz._atomic import atomic_write_text
from viz.errors import GraphvizNotFoundError, VizError
from viz.html import Raw, esc, fmt, page

_PROLOG = re.compile(r"<\?xml[^>]*\?>|<!DOCTYPE[^>]*>|<!--.*?-->", re.DOTALL)
_SCRIPT = re.compile(r"<script\b.*?</script\s*>", re.DOTALL | re.IGNORECASE)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class Svg:
    """SVG text to inline."""

    text: str
    """The SVG document or fragment."""


@dataclass(frozen=True)
class Links:
    """A list of links (e.g. to feature dashboards)."""

    links: Mapping[str, str]
    """Link text -> href (relative path or http(s) URL)."""


@dataclass(frozen=True)
class Heading:
    """A sub-heading inside a section (e.g. one run directory's results)."""

    text: str
    """The heading text (escaped)."""


@dataclass(frozen=True)
class Note:
    """A muted paragraph (provenance, caveats)."""

    text: str
    """The note text (escaped)."""


STATUSES = ("", "missing", "unreadable")
"""Accepted ``Section.status`` values (module docstring, step 2)."""
_STATUS_TEXT = {"missing": "not found", "unreadable": "unreadable"}


@dataclass(frozen=True)
class Section:
    """One report section."""

    title: str
    """Section heading."""
    items: Sequence[object] = field(default_factory=tuple)
    """Items rendered in order (see the module docstring for the accepted types)."""
    note: str = ""
    """Optional text under the heading (e.g. the ablation used, or why the section is empty)."""
    status: str = ""
    """``""`` (holds results), ``"missing"`` or ``"unreadable"`` (module docstring, step 2)."""


def clean_svg(text: str) -> str:
    """SVG text ready to inline: XML prolog, DOCTYPE, comments and scripts removed."""
    return _SCRIPT.sub("", _PROLOG.sub("", text)).strip()


def _figure_svg(fig) -> str:
    from viz.plots import plot_context

    buf = io.StringIO()
    with plot_context():
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return clean_svg(buf.getvalue())


def _df_html(df: pd.DataFrame) -> str:
    head = "".join(f'<th class="text">{esc(c)}</th>' for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for v in rec:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f"<td>{esc(fmt(float(v)) if num and isinstance(v, float) else fmt(v))}</td>" if num
                         else f'<td class="text">{esc(v)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _path_html(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".svg":
        return f'<div class="figure">{clean_svg(path.read_text(encoding="utf-8"))}</div>'
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(suffix)
    if mime is None:
        raise VizError(f"cannot embed {path.name}: use .svg, .png or .jpg")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<div class="figure"><img alt="{esc(path.name)}" src="data:{mime};base64,{data}"></div>'


def _links_html(links: Links) -> str:
    items = []
    for text, href in links.links.items():
        href = str(href)
        m = _SCHEME.match(href)
        if any(ord(ch) < 33 for ch in href) or (m and m[1].lower() not in ("http", "https")):
            raise VizError(f"refusing link {href!r}: use a relative path or an http(s) URL")
        items.append(f'<li><a href="{esc(href)}">{esc(text)}</a></li>')
    return f'<ul class="links">{"".join(items)}</ul>'


def _circuit_html(obj) -> str:
    from viz.render import render_svg

    try:
        return f'<div class="figure">{clean_svg(render_svg(obj))}</div>'
    except GraphvizNotFoundError as exc:
        return f'<p class="muted">Circuit figure not drawn: {esc(exc)}</p>'


def render_item(item: object) -> str:
    """HTML of one section item (step 1)."""
    if isinstance(item, Raw):
        return str(item)
    if isinstance(item, str):
        return f"<p>{esc(item)}</p>"
    if isinstance(item, pd.DataFrame):
        return _df_html(item)
    if isinstance(item, Svg):
        return f'<div class="figure">{clean_svg(item.text)}</div>'
    if isinstance(item, Links):
        return _links_html(item)
    if isinstance(item, Heading):
        return f"<h3>{esc(item.text)}</h3>"
    if isinstance(item, Note):
        return f'<p class="muted">{esc(item.text)}</p>'
    if isinstance(item, Path):
        return _path_html(item)
    if hasattr(item, "savefig"):
        return f'<div class="figure">{_figure_svg(item)}</div>'
    from attribution.graph import Graph

    if isinstance(item, Graph) or isinstance(getattr(item, "graph", None), Graph):
        return _circuit_html(item)
    raise VizError(f"cannot put a {type(item).__name__} into a report section")


def report_html(sections: Sequence[Section], title: str = "mlx-circuits report") -> str:
    """The report as one HTML string (table of contents, then the sections)."""
    toc, body = [], []
    for i, s in enumerate(sections, start=1):
        if not isinstance(s, Section):
            raise VizError(f"sections must be Section objects, got {type(s).__name__}")
        if s.status not in STATUSES:
            raise VizError(f"section status must be one of {STATUSES}, got {s.status!r}")
        flag = f" ({_STATUS_TEXT[s.status]})" if s.status else ""
        toc.append(f'<li><a href="#s{i}">{esc(s.title)}</a>{esc(flag)}</li>')
        note = ""
        if s.status:
            note = f'<p class="muted"><strong>{esc(_STATUS_TEXT[s.status].capitalize())}:</strong> {esc(s.note)}</p>'
        elif s.note:
            note = f'<p class="muted">{esc(s.note)}</p>'
        body.append(f'<section id="s{i}"><h2>{esc(s.title)}</h2>{note}'
                    f'{"".join(render_item(it) for it in s.items)}</section>')
    return page(title, f"<h1>{esc(title)}</h1><ol>{''.join(toc)}</ol>{''.join(body)}")


def write_report(path: str | os.PathLike, sections: Sequence[Section], title: str = "mlx-circuits report") -> Path:
    """Write the self-contained report to ``path`` atomically; returns the path."""
    return atomic_write_text(path, report_html(sections, title))


def standard_sections(circuit=None, tables: Mapping[str, pd.DataFrame] | None = None, faithfulness=None,
                      scatter=None, coactivation=None, dashboards: Mapping[str, str] | None = None,
                      ablation: str = "") -> list[Section]:
    """Sections in the usual order from whichever inputs are given (step 3): ``circuit``
    (Graph/circuit/SVG/Path), ``tables`` (title -> DataFrame, e.g. dictionary quality,
    graph scores, validation, benchmarks), ``faithfulness`` / ``scatter`` /
    ``coactivation`` (Figure, Path or Svg; co-activation may also be a ``Raw`` heatmap),
    ``dashboards`` (text -> href). ``ablation`` is noted under the circuit and curves."""
    note = f"ablation: {ablation}" if ablation else ""
    out = []
    if circuit is not None:
        out.append(Section("Circuit", [circuit], note))
    for name, df in (tables or {}).items():
        out.append(Section(name, [df]))
    if faithfulness is not None:
        out.append(Section("Faithfulness curves", [faithfulness], note))
    if scatter is not None:
        out.append(Section("Predicted vs. measured effects", [scatter], note))
    if coactivation is not None:
        out.append(Section("Feature co-activation", [coactivation]))
    if dashboards:
        out.append(Section("Feature dashboards", [Links(dashboards)]))
    return out


__all__ = ["Heading", "Links", "Note", "STATUSES", "Section", "Svg", "clean_svg", "render_item", "report_html",
           "standard_sections", "write_report"]
