"""The feature browser's JSON API as pure functions: (model, dictionaries, parameters) -> dict.

No HTTP here; ``circuits.explore.feature_routes`` maps routes onto these functions and
holds the lazily loaded model, and the tests call them directly.

Algorithm:
  1. A feature is named ``L<layer>/<index>`` (``3:120``, ``L3/120`` and ``l3:120`` are
     read too); ``parse_feature`` checks the layer carries a dictionary and the index is
     inside its width (unknown: ``ExploreError(404)``; malformed: 400).
  2. ``build_catalogue``: labels and statistics read from the run's
     ``dashboards/index.html`` when present (``read_dashboard_index``; the table
     ``viz.dashboard.index_page`` writes), and the top ``n_tokens`` promoted and
     suppressed tokens of a feature from ``sae.features.logit_effects`` (the direct path
     W_dec · final-norm gain · W_U), computed for one feature when a card or a result
     page first shows it, and for every feature (chunked, never [width, vocab] at once)
     only when the first top-token search needs them all.
  3. ``search``: an id query returns that feature; otherwise every feature is scored by
     its label (exact 50, prefix 40, substring 30, all words 20) and its promoted top
     tokens (exact 10, substring 5, plus up to 1 for a higher rank); the best score
     counts, ties go to (layer, index). An empty query lists all features. One page
     ``[offset, offset + limit)`` is returned with the total.
  4. ``feature_card``: label, statistics and dashboard link from the index, and the
     feature's logit effects from the catalogue.
  5. ``token_activations``: the text is tokenised by the model (BOS kept), bounded by
     ``MAX_TEXT_CHARS`` and ``MAX_TOKENS``; one clean forward of the replacement model
     (``ReplacementModel.clean``: the model's own residual stream read at each
     dictionary's input, encoded) gives every chosen feature's activation per token.
     One request names at most ``MAX_FEATURES`` features, one row each (the compare view
     is the same call with several features).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from circuits.explore.api import ExploreError

MAX_TEXT_CHARS = 2000
"""Longest text (characters) one activation or steering request may carry."""
MAX_TOKENS = 256
"""Most tokens a text may tokenise to (each is one heatmap cell and one forward position)."""
MAX_FEATURES = 16
"""Most features one activation request may name (one heatmap row each)."""
MAX_PAGE = 100
"""Most search results per page."""
MAX_QUERY = 200
"""Longest search query (characters)."""
MAX_INDEX_BYTES = 64 << 20
"""A dashboards/index.html larger than this is not parsed (labels are then absent)."""
_ID = re.compile(r"^\s*[Ll]?(\d{1,6})\s*[/:]\s*(\d{1,9})\s*$")
_SITE_LAYER = re.compile(r"^L(\d+)\.")


def feature_id(layer: int, feature: int) -> str:
    """The canonical name of a feature: ``L<layer>/<index>``."""
    return f"L{int(layer)}/{int(feature)}"


def parse_id(text) -> tuple[int, int] | None:
    """(layer, index) of ``L3/120`` / ``3:120``, or None when ``text`` is not an id."""
    if not isinstance(text, str):
        return None
    m = _ID.match(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_feature(widths: dict[int, int], layer, feature) -> tuple[int, int]:
    """(layer, index) checked against ``widths`` (layer -> dictionary width); step 1."""
    for name, v in (("layer", layer), ("feature", feature)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ExploreError(400, f"{name} must be an integer, got {str(v)[:40]!r}")
    if layer not in widths:
        raise ExploreError(404, f"no dictionary on layer {layer}; layers with one: {sorted(widths)}")
    if not 0 <= feature < widths[layer]:
        raise ExploreError(404, f"feature {feature} is out of range for layer {layer} (width {widths[layer]})")
    return layer, feature


def parse_feature(widths: dict[int, int], spec) -> tuple[int, int]:
    """A feature from ``"L3/120"`` or ``{"layer": 3, "feature": 120}`` (step 1)."""
    if isinstance(spec, dict):
        return check_feature(widths, spec.get("layer"), spec.get("feature"))
    lf = parse_id(spec)
    if lf is None:
        raise ExploreError(400, f"feature must look like 'L3/120' (layer/index), got {str(spec)[:40]!r}")
    return check_feature(widths, *lf)


def parse_features(widths: dict[int, int], specs) -> list[tuple[int, int]]:
    """A non-empty list of at most ``MAX_FEATURES`` distinct features, in the given order."""
    if not isinstance(specs, list) or not specs:
        raise ExploreError(400, "'features' must be a non-empty list such as [\"L0/3\", \"L1/7\"]")
    if len(specs) > MAX_FEATURES:
        raise ExploreError(400, f"too many features: {len(specs)} (at most {MAX_FEATURES} per request)")
    out = [parse_feature(widths, s) for s in specs]
    return list(dict.fromkeys(out))


# ------------------------------------------------------------ dashboards index ----
class _IndexParser(HTMLParser):
    """Rows of the ``#features`` table of ``viz.dashboard.index_page``."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows: list[tuple[list[str], str | None]] = []
        self._in_table = self._in_cell = False
        self._row: list[str] | None = None
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "features":
            self._in_table = True
        elif self._in_table and tag == "tr":
            self._row, self._href = [], None
        elif self._in_table and tag == "td" and self._row is not None:
            self._row.append("")
            self._in_cell = True
        elif self._in_table and tag == "a" and self._row is not None and self._href is None:
            self._href = a.get("href")

    def handle_endtag(self, tag):
        if tag == "table" and self._in_table:
            self._in_table = False
        elif tag == "td":
            self._in_cell = False
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.rows.append((self._row, self._href))
            self._row = None

    def handle_data(self, data):
        if self._in_cell and self._row:
            self._row[-1] += data


def _float(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_dashboard_index(dashboards: Path) -> dict[tuple[int, int], dict]:
    """(layer, index) -> {label, site, page, density?} from ``dashboards/index.html`` (step 2).

    Sites name the layer (``L3.mlp_in``); rows whose site or id cannot be read are
    skipped. A missing, oversized or symbolic-link index gives {}."""
    index = Path(dashboards) / "index.html"
    if not index.is_file() or index.is_symlink() or Path(dashboards).is_symlink() \
            or index.stat().st_size > MAX_INDEX_BYTES:
        return {}
    p = _IndexParser()
    p.feed(index.read_text(encoding="utf-8", errors="replace"))
    out = {}
    for cells, href in p.rows:
        if len(cells) < 3:
            continue
        m = _SITE_LAYER.match(cells[1].strip())
        if not m or not cells[0].strip().isdigit():
            continue
        page = None
        if href and "/" not in href and "\\" not in href and href.endswith(".html") \
                and (Path(dashboards) / href).is_file():
            page = href
        rec = {"label": cells[2].strip(), "site": cells[1].strip(), "page": page}
        for k, name in ((3, "density"), (4, "mean_activation"), (5, "max_activation")):
            if len(cells) > k:
                rec[name] = _float(cells[k].strip())
        out[(int(m.group(1)), int(cells[0]))] = rec
    return out


# ------------------------------------------------------------------ catalogue ----
@dataclass
class Catalogue:
    """What search and cards read: per-feature top tokens (computed when first needed)
    and the dashboard index. Not thread-safe: callers serialise access (the server
    holds its compute lock), since filling it runs MLX."""

    widths: dict[int, int]
    """Layer -> dictionary width."""
    sites: dict[int, str]
    """Layer -> the site its encoder reads."""
    model: object = None
    """The model whose unembedding the logit effects go through."""
    decoders: dict = field(default_factory=dict)
    """Layer -> [width, d_model] decoder rows of that layer's features (own layer for a CLT)."""
    n_tokens: int = 10
    """Promoted / suppressed tokens kept per feature."""
    vocab: list = field(default_factory=list)
    """Token strings by id (spaced as they read in a text)."""
    dashboards: dict = field(default_factory=dict)
    """(layer, index) -> dashboard index row (``read_dashboard_index``)."""
    top: dict = field(default_factory=dict)
    """(layer, index) -> (promoted ids, effects, suppressed ids, effects), filled on demand."""
    token_index: dict | None = None
    """Lower-cased stripped token string -> [(layer, index, rank)] of promoted tokens;
    None until the first top-token search (it needs every feature's effects)."""

    def effects(self, layer: int, f: int) -> tuple:
        """The top tokens of one feature: one [1, d] x [d, vocab] product when not cached."""
        from sae.features import logit_effects

        if (layer, f) not in self.top:
            t = logit_effects(self.model, self.decoders[layer][f:f + 1], n=self.n_tokens)
            self.top[(layer, f)] = (t.promoted_ids[0], t.promoted[0], t.suppressed_ids[0], t.suppressed[0])
        return self.top[(layer, f)]

    def tokens_index(self) -> dict:
        """Step 2 for every feature (chunked by ``logit_effects``), built on first use."""
        from sae.features import logit_effects

        if self.token_index is None:
            index: dict = {}
            for l, W in self.decoders.items():
                t = logit_effects(self.model, W, n=self.n_tokens)
                for f in range(t.promoted_ids.shape[0]):
                    self.top[(l, f)] = (t.promoted_ids[f], t.promoted[f], t.suppressed_ids[f], t.suppressed[f])
                    for r, i in enumerate(t.promoted_ids[f]):
                        key = _tok(self.vocab, int(i)).strip().lower()
                        if key:
                            index.setdefault(key, []).append((l, f, r))
            self.token_index = index
        return self.token_index


def _tok(vocab, i: int) -> str:
    return vocab[i] if 0 <= i < len(vocab) else f"<{i}>"


def build_catalogue(model, units: dict, dashboards: Path | None = None, n_tokens: int = 10) -> Catalogue:
    """Step 2 (the cheap part): widths, sites, vocabulary and dashboard index of ``units``
    (layer -> Unit); logit effects are computed when a card, a page or a token search
    first needs them."""
    from attribution.replacement.units import write_vectors
    from sae.features.tokens import vocab_strings

    # A CLT feature writes to several layers; its own layer's decoder row is the one
    # whose direct logit path is read (the nearest the unembedding of its own writes).
    cat = Catalogue({l: int(u.width) for l, u in units.items()}, {l: str(u.in_site) for l, u in units.items()},
                    model=model, decoders={l: write_vectors(u, u) for l, u in units.items()}, n_tokens=n_tokens)
    cat.vocab = list(vocab_strings(model))
    if dashboards is not None:
        cat.dashboards = read_dashboard_index(dashboards)
    return cat


def _effects(cat: Catalogue, layer: int, f: int) -> dict:
    pi, pv, si, sv = cat.effects(layer, f)
    return {"promoted": [[_tok(cat.vocab, int(i)), float(v)] for i, v in zip(pi, pv)],
            "suppressed": [[_tok(cat.vocab, int(i)), float(v)] for i, v in zip(si, sv)]}


def _summary(cat: Catalogue, layer: int, f: int, score: float, match: str) -> dict:
    d = cat.dashboards.get((layer, f), {})
    return {"id": feature_id(layer, f), "layer": layer, "feature": f, "label": d.get("label", ""),
            "top_tokens": [_tok(cat.vocab, int(i)) for i in cat.effects(layer, f)[0][:5]],
            "dashboard": d.get("page") is not None, "score": round(float(score), 4), "match": match}


def _label_score(label: str, q: str, words: list[str]) -> float:
    lab = label.lower()
    if not lab:
        return 0.0
    if lab == q:
        return 50.0
    if lab.startswith(q):
        return 40.0
    if q in lab:
        return 30.0
    if words and all(w in lab for w in words):
        return 20.0
    return 0.0


def search(cat: Catalogue, query, limit: int = 20, offset: int = 0) -> dict:
    """Step 3: features matching ``query`` by id, label or top tokens, ranked and paged."""
    query = "" if query is None else str(query)
    if len(query) > MAX_QUERY:
        raise ExploreError(400, f"query is {len(query)} characters; at most {MAX_QUERY}")
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise ExploreError(400, f"limit must be in [1, {MAX_PAGE}] and offset >= 0")
    q = query.strip().lower()
    scores: dict[tuple[int, int], tuple[float, str]] = {}
    lf = parse_id(query)
    if lf is not None:
        if lf[0] in cat.widths and 0 <= lf[1] < cat.widths[lf[0]]:
            scores[lf] = (100.0, "id")
    elif not q:
        total = sum(cat.widths.values())
        items, skip = [], offset
        for l in sorted(cat.widths):
            w = cat.widths[l]
            if skip >= w:
                skip -= w
                continue
            for f in range(skip, min(w, skip + limit - len(items))):
                items.append(_summary(cat, l, f, 0.0, "all"))
            skip = 0
            if len(items) >= limit:
                break
        return {"query": query, "total": total, "offset": offset, "limit": limit, "items": items}
    else:
        words = q.split()
        for key, row in cat.dashboards.items():
            s = _label_score(str(row.get("label", "")), q, words)
            if s and key[0] in cat.widths and 0 <= key[1] < cat.widths[key[0]]:
                scores[key] = (s, "label")
        n = max(cat.n_tokens, 1)
        for tok, hits in cat.tokens_index().items():
            if tok == q:
                base = 10.0
            elif len(q) >= 2 and q in tok:
                base = 5.0
            else:
                continue
            for l, f, r in hits:
                s = base + (n - r) / n
                if s > scores.get((l, f), (0.0, ""))[0]:
                    scores[(l, f)] = (s, "token")
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1][0], kv[0]))
    page = ranked[offset:offset + limit]
    return {"query": query, "total": len(ranked), "offset": offset, "limit": limit,
            "items": [_summary(cat, l, f, s, m) for (l, f), (s, m) in page]}


def feature_card(cat: Catalogue, layer: int, f: int, dashboard_url: str = "/run/dashboards/") -> dict:
    """Step 4: everything the browser shows about one (checked) feature."""
    d = cat.dashboards.get((layer, f), {})
    page = d.get("page")
    stats = {k: d.get(k) for k in ("density", "mean_activation", "max_activation") if d.get(k) is not None}
    return {"id": feature_id(layer, f), "layer": layer, "feature": f, "site": cat.sites.get(layer),
            "width": cat.widths[layer], "label": d.get("label", ""), "stats": stats,
            "dashboard": None if page is None else dashboard_url + page,
            "logit_effects": _effects(cat, layer, f)}


# ---------------------------------------------------------------- activations ----
def tokenize(model, text, what: str = "text") -> list[int]:
    """Token ids of ``text`` (BOS kept) within the bounds (step 5)."""
    if not isinstance(text, str) or not text.strip():
        raise ExploreError(400, f"'{what}' must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise ExploreError(400, f"'{what}' is {len(text)} characters; at most {MAX_TEXT_CHARS}")
    if "\x00" in text:
        raise ExploreError(400, f"'{what}' contains a NUL character")
    ids = [int(i) for i in model.encode(text)]
    if not ids:
        raise ExploreError(400, f"'{what}' tokenises to no tokens")
    if len(ids) > MAX_TOKENS:
        raise ExploreError(400, f"'{what}' is {len(ids)} tokens; at most {MAX_TOKENS}")
    return ids


def token_activations(rm, ids: list[int], features: list[tuple[int, int]]) -> dict:
    """Step 5: per-token activations of checked ``features`` on token ids ``ids``."""
    state = rm.clean([ids])
    rows = []
    for layer, f in features:
        a = np.asarray(state.acts[layer][:, f], dtype=np.float64)
        if not np.isfinite(a).all():
            raise ExploreError(422, f"{feature_id(layer, f)} has non-finite activations on this text")
        rows.append({"id": feature_id(layer, f), "layer": layer, "feature": f,
                     "activations": [float(x) for x in a], "max": float(a.max()), "min": float(a.min())})
    return {"tokens": rm.model.to_str_tokens(ids), "ids": list(ids), "features": rows}


__all__ = ["Catalogue", "MAX_FEATURES", "MAX_PAGE", "MAX_QUERY", "MAX_TEXT_CHARS", "MAX_TOKENS", "build_catalogue",
           "check_feature", "feature_card", "feature_id", "parse_feature", "parse_features", "parse_id",
           "read_dashboard_index", "search", "token_activations", "tokenize"]
