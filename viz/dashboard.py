"""Static offline feature dashboards: one HTML page per feature plus a searchable index.

Record schema (a plain dict per feature; only the first five keys are required)::

    feature            int | str      feature id
    site               str            where the dictionary reads, e.g. "L3.mlp_in"
    density            float          firing frequency in [0, 1]
    mean_activation    float          mean activation when firing
    max_activation     float          largest activation seen
    histogram          {"counts": [n, ...], "edges": [x0, ..., xn]}   activation histogram
    top_examples       [{"tokens": [str], "activations": [float]}, ...]
    quantile_examples  [{"name": "q50-75", "examples": [example, ...]}, ...]
    logit_effects      {"promoted": [[token, value], ...], "suppressed": [[token, value], ...]}
    neighbours         [{"feature": id, "cosine": float}, ...]   nearest decoder directions
    label              str            human or automatic description

Algorithm:
1. ``check_record`` validates every present key (types, lengths, finite numbers).
2. ``feature_page`` renders the record: header with label and stats, the histogram as
   inline SVG, top and quantile examples with per-token highlighting (opacity scaled by
   ``max_activation``), logit effects and neighbours (linked when they have pages).
3. ``index_page`` lists all features in one table that an inline script filters by a
   search box and sorts by clicking a header (numbers by ``data-value``).
4. ``write_dashboards`` writes every page and ``index.html`` atomically.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from viz._atomic import atomic_write_text
from viz.errors import SchemaError
from viz.html import Raw, esc, fmt, histogram_svg, page, table_html, token_spans

REQUIRED = ("feature", "site", "density", "mean_activation", "max_activation")
"""Keys every record must have."""


def _finite(rec: Mapping, key: str) -> float:
    try:
        x = float(rec[key])
    except (TypeError, ValueError):
        raise SchemaError(f"feature {rec.get('feature')!r}: {key} must be a number, got {rec[key]!r}") from None
    if not math.isfinite(x):
        raise SchemaError(f"feature {rec.get('feature')!r}: {key} must be finite, got {x}")
    return x


def _check_example(fid, ex, where: str) -> None:
    if not isinstance(ex, Mapping) or "tokens" not in ex or "activations" not in ex:
        raise SchemaError(f"feature {fid!r}: each {where} entry needs 'tokens' and 'activations'")
    if len(ex["tokens"]) != len(ex["activations"]):
        raise SchemaError(f"feature {fid!r}: {where} example has {len(ex['tokens'])} tokens and "
                          f"{len(ex['activations'])} activations")
    if not np.isfinite(np.asarray(ex["activations"], dtype=np.float64)).all():
        raise SchemaError(f"feature {fid!r}: {where} activations must be finite")


def check_record(rec: Mapping) -> Mapping:
    """Validate one record against the schema (step 1); return it unchanged."""
    if not isinstance(rec, Mapping):
        raise SchemaError(f"a feature record must be a dict, got {type(rec).__name__}")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise SchemaError(f"feature record lacks keys {missing}; required: {list(REQUIRED)}")
    fid = rec["feature"]
    for k in REQUIRED[2:]:
        _finite(rec, k)
    if not 0.0 <= float(rec["density"]) <= 1.0:
        raise SchemaError(f"feature {fid!r}: density must be in [0, 1], got {rec['density']}")
    hist = rec.get("histogram")
    if hist is not None and (not isinstance(hist, Mapping)
                             or len(hist.get("edges", ())) != len(hist.get("counts", ())) + 1):
        raise SchemaError(f"feature {fid!r}: histogram needs counts and edges with len(edges) == len(counts) + 1")
    for ex in rec.get("top_examples", ()):
        _check_example(fid, ex, "top_examples")
    for group in rec.get("quantile_examples", ()):
        if not isinstance(group, Mapping) or "examples" not in group:
            raise SchemaError(f"feature {fid!r}: quantile_examples entries need 'name' and 'examples'")
        for ex in group["examples"]:
            _check_example(fid, ex, "quantile_examples")
    for side in ("promoted", "suppressed"):
        for pair in rec.get("logit_effects", {}).get(side, ()):
            if len(pair) != 2:
                raise SchemaError(f"feature {fid!r}: logit_effects[{side!r}] entries are [token, value]")
    for nb in rec.get("neighbours", ()):
        if not isinstance(nb, Mapping) or "feature" not in nb or "cosine" not in nb:
            raise SchemaError(f"feature {fid!r}: neighbours entries need 'feature' and 'cosine'")
    return rec


def page_name(site: str, feature) -> str:
    """File name of a feature's page: ``feature_<site>_<id>.html`` with unsafe characters as ``_``."""
    return "feature_" + re.sub(r"[^A-Za-z0-9_.-]", "_", f"{site}_{feature}") + ".html"


def _examples(title: str, examples: Sequence[Mapping], scale: float) -> str:
    if not examples:
        return ""
    rows = "".join(f'<div class="tokens">{token_spans(ex["tokens"], ex["activations"], scale)}</div>'
                   for ex in examples)
    return f"<h3>{esc(title)}</h3>{rows}"


def _effects(rec: Mapping) -> str:
    eff = rec.get("logit_effects") or {}
    if not eff:
        return ""
    cols = []
    for side, cls in (("promoted", "pos"), ("suppressed", "neg")):
        rows = [(Raw(f'<span class="{cls}">{esc(repr(str(t)))}</span>'), float(v)) for t, v in eff.get(side, ())]
        cols.append(f"<div><h3>{esc(side)} tokens</h3>{table_html(['token', 'logit effect'], rows, (0,))}</div>")
    return f'<h2>Logit effects</h2><div class="grid2">{"".join(cols)}</div>'


def _neighbours(rec: Mapping, known: set[str]) -> str:
    nbs = rec.get("neighbours") or []
    if not nbs:
        return ""
    rows = []
    for nb in nbs:
        name = page_name(rec["site"], nb["feature"])
        cell = Raw(f'<a href="{esc(name)}">{esc(nb["feature"])}</a>') if name in known else str(nb["feature"])
        rows.append((cell, float(nb["cosine"])))
    return "<h2>Nearest features (decoder cosine)</h2>" + table_html(["feature", "cosine"], rows, (0,))


def feature_page(rec: Mapping, known_pages: Sequence[str] = ()) -> str:
    """HTML of one feature's dashboard (step 2); ``known_pages`` are file names that exist
    (neighbours with a page get a link)."""
    check_record(rec)
    fid, site = rec["feature"], rec["site"]
    scale = abs(float(rec["max_activation"])) or 1.0
    label = str(rec.get("label", "") or "")
    stats = table_html(["density", "mean activation", "max activation"],
                       [(float(rec["density"]), float(rec["mean_activation"]), float(rec["max_activation"]))])
    hist = rec.get("histogram")
    hist_html = (f'<h2>Activation histogram</h2><div class="figure">{histogram_svg(hist["counts"], hist["edges"])}'
                 "</div>" if hist else "")
    top = rec.get("top_examples")
    quant = "".join(_examples(str(g.get("name", "")), g["examples"], scale) for g in rec.get("quantile_examples", ()))
    body = (f'<p><a href="index.html">← all features</a></p>'
            f"<h1>Feature {esc(fid)} <span class=\"muted\">@ {esc(site)}</span></h1>"
            f'<p class="label">{esc(label) if label else "<span class=muted>(no label)</span>"}</p>'
            f"{stats}{hist_html}"
            f'{"<h2>Top activations</h2>" + _examples("", top, scale) if top else ""}'
            f'{"<h2>Examples by activation quantile</h2>" + quant if quant else ""}'
            f"{_effects(rec)}{_neighbours(rec, set(known_pages))}")
    return page(f"Feature {fid} @ {site}", body)


SORT_SEARCH_JS = """
(function () {
  var table = document.getElementById('features');
  var body = table.tBodies[0];
  document.getElementById('search').addEventListener('input', function (e) {
    var q = e.target.value.toLowerCase();
    for (var i = 0; i < body.rows.length; i++) {
      var r = body.rows[i];
      r.style.display = r.textContent.toLowerCase().indexOf(q) >= 0 ? '' : 'none';
    }
  });
  var ths = table.tHead.rows[0].cells;
  for (var c = 0; c < ths.length; c++) {
    (function (col) {
      ths[col].addEventListener('click', function () {
        var asc = ths[col].dataset.dir !== 'asc';
        ths[col].dataset.dir = asc ? 'asc' : 'desc';
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[col], y = b.cells[col];
          var u = x.dataset.value !== undefined ? parseFloat(x.dataset.value) : x.textContent;
          var v = y.dataset.value !== undefined ? parseFloat(y.dataset.value) : y.textContent;
          if (typeof u === 'string' && u !== '' && v !== '' && !isNaN(Number(u)) && !isNaN(Number(v))) {
            u = Number(u); v = Number(v);  // numeric ids sort as numbers, not text
          }
          var d = (typeof u === 'number') ? u - v : String(u).localeCompare(String(v));
          return asc ? d : -d;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    })(c);
  }
  document.body.dataset.indexReady = '1';
})();
"""


def index_page(records: Sequence[Mapping], title: str = "Feature dashboards") -> str:
    """HTML of the index: one row per feature with a link, searchable and sortable (step 3)."""
    rows = []
    for rec in records:
        check_record(rec)
        link = Raw(f'<a href="{esc(page_name(rec["site"], rec["feature"]))}">{esc(rec["feature"])}</a>')
        rows.append((link, str(rec["site"]), str(rec.get("label", "") or ""), float(rec["density"]),
                     float(rec["mean_activation"]), float(rec["max_activation"])))
    table = table_html(["feature", "site", "label", "density", "mean act.", "max act."], rows, (0, 1, 2),
                       table_id="features")
    body = (f"<h1>{esc(title)}</h1><p class=\"muted\">{len(rows)} features · click a column header to sort</p>"
            f'<input id="search" class="search" type="search" placeholder="search id, site, label…">{table}')
    return page(title, body, SORT_SEARCH_JS)


def write_dashboards(records: Sequence[Mapping], directory: str | os.PathLike,
                     title: str = "Feature dashboards") -> list[Path]:
    """Write one page per record and ``index.html`` into ``directory`` (step 4); returns
    the paths written, index last."""
    directory = Path(directory)
    names = [page_name(check_record(r)["site"], r["feature"]) for r in records]
    if len(set(names)) != len(names):
        raise SchemaError("two records have the same (site, feature)")
    out = [atomic_write_text(directory / n, feature_page(r, names)) for n, r in zip(names, records)]
    out.append(atomic_write_text(directory / "index.html", index_page(records, title)))
    return out


def token_heatmap_html(tokens: Sequence[str], activations, feature_names: Sequence[str]) -> Raw:
    """HTML fragment: one row per feature, the text's tokens highlighted by that feature's
    activations ([n_features, n_tokens]; each row scaled by its own max |activation|)."""
    a = np.asarray(activations, dtype=np.float64)
    if a.ndim != 2 or a.shape != (len(feature_names), len(tokens)):
        raise SchemaError(f"activations must be [n_features={len(feature_names)}, n_tokens={len(tokens)}], "
                          f"got {a.shape}")
    rows = []
    for name, row in zip(feature_names, a):
        scale = float(np.abs(row).max()) or 1.0
        rows.append(f'<tr><th class="text">{esc(name)}</th><td class="text"><div class="tokens">'
                    f"{token_spans(tokens, row.tolist(), scale)}</div></td><td>{esc(fmt(float(row.max())))}</td></tr>")
    return Raw(f'<table class="data token-heatmap"><thead><tr><th class="text">feature</th><th class="text">text</th>'
               f'<th>max</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


__all__ = ["REQUIRED", "check_record", "feature_page", "index_page", "page_name", "token_heatmap_html",
           "write_dashboards"]
