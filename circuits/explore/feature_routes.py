"""HTTP routes of the feature browser and steering playground (merged into the server's table).

Algorithm:
  1. ``ROUTES`` maps (method, path) to handlers ``handler(h, route, query)`` in the form
     ``circuits.explore.server`` dispatches; a handler answers with ``h._json`` and
     raises ``ExploreError`` for bad input (the server turns it into a JSON error).
  2. The model and dictionaries are loaded on the first feature or steering request
     and kept in a ``FeatureState`` attached to the server's ``ExploreState`` (one per
     run, created under a lock). The model is the ``model`` input of the run's
     ``run.json`` (written by ``circuits demo`` / ``circuits train``), else the
     ``model`` the saved dictionaries' ``index.json`` records; the dictionaries are
     ``RUN/dictionaries`` in any format ``sae.open_dictionaries`` reads. A run without
     them gets a 409 naming what is missing and the command that makes it.
  3. MLX work from the server's threads runs under one lock (one forward at a time:
     the requests are heavy and MLX evaluation is not meant to be interleaved).
  4. Routes: GET ``/api/features/info``; GET ``/api/features/search?q=&limit=&offset=``;
     GET ``/api/features/feature?id=L3/120``; POST ``/api/features/activations`` with
     ``{"text": ..., "features": ["L3/120", ...]}``; POST ``/api/steer`` with
     ``{"prompt": ..., "interventions": [...], "max_new_tokens": n}``. POST bodies are
     read through the server's size-limited ``_body``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from circuits.explore import features_api as fa
from circuits.explore import steer_api as sa
from circuits.explore.api import ExploreError, parse_int

_ATTACH = threading.Lock()
_MAKE_RUN = ("make one with `circuits demo --out DIR` (model, dictionaries, dashboards) or "
             "`circuits train --model M --out DIR`, then `circuits serve --run DIR`")


def _one_line(exc: Exception) -> str:
    s = str(exc).strip()
    return (s.splitlines()[0] if s else type(exc).__name__)[:300]


class FeatureState:
    """The run's model, dictionaries and feature catalogue, loaded on first use (step 2)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._load_lock = threading.Lock()
        self.compute = threading.Lock()
        """Held around every MLX computation (step 3)."""
        self._loaded = None
        self._catalogue = None

    def model_path(self) -> Path:
        """Where the run's model lives (step 2), or a 409 naming what is missing."""
        from circuits.pipeline.manifest import ManifestError, load_manifest

        try:
            man = load_manifest(self.root)
        except ManifestError as exc:
            raise ExploreError(409, f"run.json cannot be read: {_one_line(exc)}") from None
        cands = []
        if man is not None and man.inputs.get("model") is not None:
            cands.append(Path(man.inputs["model"]))
        index = self.root / "dictionaries" / "index.json"
        if index.is_file():
            try:
                meta = json.loads(index.read_text(encoding="utf-8")).get("metadata") or {}
                if isinstance(meta.get("model"), str):
                    cands.append(Path(meta["model"]))
            except (ValueError, AttributeError, OSError):
                pass
        for p in cands:
            if p.is_dir():
                return p
        if cands:
            raise ExploreError(409, f"the run's model {str(cands[0])[:200]} is not a directory here "
                                    "(moved or deleted?); re-run the command that made the run")
        raise ExploreError(409, "this run names no model (no run.json with a 'model' input); " + _MAKE_RUN)

    def loaded(self):
        """(model, ReplacementModel) of the run, loaded once."""
        if self._loaded is not None:
            return self._loaded
        with self._load_lock:
            if self._loaded is not None:
                return self._loaded
            dicts_dir = self.root / "dictionaries"
            if not dicts_dir.is_dir():
                raise ExploreError(409, "this run has no dictionaries/ folder; " + _MAKE_RUN)
            path = self.model_path()
            from attribution import load_model
            from attribution.replacement import ReplacementModel
            from sae import open_dictionaries

            with self.compute:
                try:
                    model = load_model(path)
                except Exception as exc:
                    raise ExploreError(409, f"the run's model {str(path)[:200]} cannot be loaded: "
                                            f"{_one_line(exc)}") from None
                try:
                    dicts = open_dictionaries(dicts_dir, model=model)
                    rm = ReplacementModel(model, dicts)
                except Exception as exc:
                    raise ExploreError(409, f"the run's dictionaries/ cannot be used with its model: "
                                            f"{_one_line(exc)}; " + _MAKE_RUN) from None
            self._loaded = (model, rm)
            return self._loaded

    def widths(self) -> dict[int, int]:
        return {l: int(u.width) for l, u in self.loaded()[1].units.items()}

    def catalogue(self) -> fa.Catalogue:
        """The search catalogue (widths, vocabulary, dashboard index), built once; it fills
    in logit effects later, under ``compute``."""
        if self._catalogue is not None:
            return self._catalogue
        model, rm = self.loaded()
        with self._load_lock:
            if self._catalogue is None:
                with self.compute:
                    self._catalogue = fa.build_catalogue(model, rm.units, self.root / "dashboards")
            return self._catalogue


def state_of(h) -> FeatureState:
    """The ``FeatureState`` of the handler's server, attached on first use."""
    st = h.server.state
    with _ATTACH:
        fs = getattr(st, "_features", None)
        if fs is None:
            fs = FeatureState(st.root)
            st._features = fs
        return fs


# ---------------------------------------------------------------- handlers ----
def _info(h, route, q) -> None:
    fs = state_of(h)
    model, rm = fs.loaded()
    cat = fs.catalogue()
    h._json(200, {"model": Path(str(getattr(model, "path", "model"))).name,
                  "layers": [{"layer": l, "width": cat.widths[l], "site": cat.sites[l]} for l in sorted(cat.widths)],
                  "features": sum(cat.widths.values()), "dashboards": len(cat.dashboards),
                  "limits": {"text_chars": fa.MAX_TEXT_CHARS, "tokens": fa.MAX_TOKENS,
                             "features": fa.MAX_FEATURES, "page": fa.MAX_PAGE,
                             "new_tokens": sa.MAX_NEW_TOKENS, "interventions": sa.MAX_INTERVENTIONS},
                  "modes": list(sa.MODES)})


def _search(h, route, q) -> None:
    limit = parse_int("limit", q.get("limit"), 20, 1, fa.MAX_PAGE)
    offset = parse_int("offset", q.get("offset"), 0, 0, 10 ** 9)
    query = q.get("q", "")
    if len(query) > fa.MAX_QUERY:
        raise ExploreError(400, f"q is {len(query)} characters; at most {fa.MAX_QUERY}")
    fs = state_of(h)
    cat = fs.catalogue()
    with fs.compute:  # a page's top tokens (or a first token search) run MLX
        out = fa.search(cat, query, limit, offset)
    h._json(200, out)


def _feature(h, route, q) -> None:
    fs = state_of(h)
    if q.get("id") is None:
        raise ExploreError(400, "missing ?id= (a feature such as L3/120)")
    cat = fs.catalogue()
    layer, f = fa.parse_feature(cat.widths, q["id"])
    with fs.compute:
        out = fa.feature_card(cat, layer, f)
    h._json(200, out)


def _activations(h, route, q) -> None:
    body = h._body()
    if not isinstance(body, dict):
        raise ExploreError(400, "the body must be a JSON object {\"text\": ..., \"features\": [...]}")
    fs = state_of(h)
    model, rm = fs.loaded()
    feats = fa.parse_features(fs.widths(), body.get("features"))
    ids = fa.tokenize(model, body.get("text"))
    with fs.compute:
        out = fa.token_activations(rm, ids, feats)
    h._json(200, out)


def _steer(h, route, q) -> None:
    from attribution.replacement.errors import SteeringError

    body = h._body()
    fs = state_of(h)
    model, rm = fs.loaded()
    ids, ivs, n = sa.parse_steer_request(model, fs.widths(), body)
    with fs.compute:
        try:
            out = sa.steer_generate(rm, ids, ivs, n)
        except SteeringError as exc:
            raise ExploreError(400, _one_line(exc)) from None
    h._json(200, out)


ROUTES = {("GET", "/api/features/info"): _info, ("GET", "/api/features/search"): _search,
          ("GET", "/api/features/feature"): _feature, ("POST", "/api/features/activations"): _activations,
          ("POST", "/api/steer"): _steer}
"""(method, path) -> handler, merged into ``circuits.explore.server``'s route table."""

__all__ = ["FeatureState", "ROUTES", "state_of"]
