"""The explorer's JSON API as pure functions: (graph, parameters) -> JSON-able dict.

No HTTP here; ``circuits.explore.server`` maps routes onto these functions, and the
tests call them directly.

Algorithm:
  1. Parameters arrive as query-string text. ``parse_threshold`` accepts a finite number
     in (0, 1] (the range ``circuits.prune.prune`` accepts; 0 would keep nothing and
     NaN compares false everywhere); ``parse_int`` a bounded integer. Anything else
     raises ``ExploreError(400, ...)``; an unknown node raises ``ExploreError(404, ...)``.
  2. ``summary``: node and edge counts, counts per node type, prompt tokens, layers
     and the graph's metadata.
  3. ``pruned_view``: ``circuits.prune.prune`` with the given thresholds (the library's
     own pruning, so the explorer shows exactly what ``circuits prune`` keeps). The kept
     nodes are ordered by influence on the logits (descending; ties in table order),
     and one page ``[offset, offset + limit)`` of them is returned with the kept edges
     whose two ends both lie in the page, so the browser never receives the whole
     adjacency. Totals of the whole pruned circuit come with every page.
  4. ``node_detail``: the node's row (activation, token, label), its top-k incoming
     edges (row ``i`` of ``A[target, source]``) and outgoing edges (column ``i``, read
     from a CSC copy) by |weight|, and the link of its feature dashboard when the run
     has one.
  5. ``save_subgraph``: ``graph.subgraph(keys)`` written as Neuronpedia JSON by the
     graph's own writer and as SVG by the Graphviz renderer, atomically, into the
     given folder (the server passes ``RUN/explore/``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from attribution.graph import Graph
from attribution.graph.keys import as_key

MAX_LIMIT = 5000
"""Most nodes one pruned-view page may hold (the browser draws each one)."""
MAX_TOP_K = 200
"""Most edges per direction in a node detail."""
MAX_SAVE_NODES = 20000
"""Most node ids one save request may name."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ExploreError(ValueError):
    """Bad request: ``status`` is the HTTP status, the message one line for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)


# ---------------------------------------------------------------- parameters ----
def parse_threshold(name: str, text, default: float) -> float:
    """A pruning threshold from query text: a finite number in (0, 1]; None -> default."""
    if text is None or text == "":
        return float(default)
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise ExploreError(400, f"{name} must be a number in (0, 1], got {str(text)[:40]!r}") from None
    if not math.isfinite(v) or not 0 < v <= 1:
        raise ExploreError(400, f"{name} must be a number in (0, 1], got {str(text)[:40]!r}")
    return v


def parse_int(name: str, text, default: int, lo: int, hi: int) -> int:
    """An integer in [lo, hi] from query text; None -> default."""
    if text is None or text == "":
        return int(default)
    try:
        v = int(str(text), 10)
    except (TypeError, ValueError):
        raise ExploreError(400, f"{name} must be an integer in [{lo}, {hi}], got {str(text)[:40]!r}") from None
    if not lo <= v <= hi:
        raise ExploreError(400, f"{name} must be an integer in [{lo}, {hi}], got {v}")
    return v


def node_index(graph: Graph, node_id) -> int:
    """Row of a node given as its key string (``feat:1:3:42``); unknown -> 404."""
    if not isinstance(node_id, str) or not node_id or len(node_id) > 200:
        raise ExploreError(400, "node id must be a key string such as 'feat:1:3:42'")
    try:
        return graph.index(as_key(node_id))
    except Exception:  # malformed and absent keys alike: the user named no node of this graph
        raise ExploreError(404, f"unknown node {node_id[:80]!r} in this graph") from None


# ---------------------------------------------------------------- helpers ----
def _py(v):
    """A numpy scalar as a JSON-able Python value (NaN/inf -> None: JSON has no NaN)."""
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


def _node_row(graph: Graph, i: int, influence: float | None = None) -> dict:
    r = graph.nodes.iloc[i]
    d = {"id": str(r["key"]), "type": str(r["type"]), "layer": int(r["layer"]), "pos": int(r["pos"]),
         "feature": int(r["feature"]), "token": str(r["token"]), "activation": _py(r["activation"]),
         "label": str(r["label"])}
    if influence is not None:
        d["influence"] = _py(influence)
    return d


def _node_rows(graph: Graph, idx: np.ndarray, influence: np.ndarray) -> list[dict]:
    """``_node_row`` for many rows at once (column slices, not one ``iloc`` per node)."""
    t = graph.nodes.iloc[idx]
    cols = zip(t["key"].tolist(), t["type"].tolist(), t["layer"].tolist(), t["pos"].tolist(), t["feature"].tolist(),
               t["token"].tolist(), t["activation"].tolist(), t["label"].tolist(), influence[idx].tolist())
    return [{"id": str(k), "type": str(ty), "layer": int(la), "pos": int(po), "feature": int(fe), "token": str(to),
             "activation": _py(ac), "label": str(lb), "influence": _py(inf)}
            for k, ty, la, po, fe, to, ac, lb, inf in cols]


def _tokens(graph: Graph) -> list[str]:
    toks = graph.metadata.get("tokens")
    n_pos = int(graph.nodes["pos"].max()) + 1 if graph.n_nodes else 0
    if isinstance(toks, list) and all(isinstance(t, str) for t in toks) and len(toks) >= n_pos:
        return list(toks)
    out = [str(p) for p in range(n_pos)]
    tok = graph.nodes[graph.nodes["type"] == "token"]
    for p, t in zip(tok["pos"].tolist(), tok["token"].tolist()):
        out[int(p)] = str(t) or str(p)
    return out


def _json_metadata(md: dict) -> dict:
    """Metadata with non-JSON leaves (numpy scalars, NaN) made JSON-safe."""
    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (str, bool)) or x is None or isinstance(x, int):
            return x
        v = _py(x)
        return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)

    return clean(md)


# ---------------------------------------------------------------- endpoints ----
def summary(graph: Graph, path: str = "") -> dict:
    """Step 2: what the graph is (counts, tokens, layers, metadata)."""
    counts = graph.nodes["type"].value_counts().to_dict()
    return {"path": path, "n_nodes": graph.n_nodes, "n_edges": graph.n_edges, "n_layers": graph.n_layers,
            "layers": sorted({int(x) for x in graph.nodes["layer"].tolist()}),
            "types": {str(k): int(v) for k, v in counts.items()}, "tokens": _tokens(graph),
            "metadata": _json_metadata(graph.metadata)}


def pruned_view(graph: Graph, node_threshold: float, edge_threshold: float, limit: int = 500,
                offset: int = 0, result=None) -> dict:
    """Step 3: one page of the pruned circuit. ``result`` is an already computed
    ``prune(graph, node_threshold, edge_threshold)`` (the server caches them)."""
    from circuits.prune import prune

    if result is None:
        result = prune(graph, node_threshold, edge_threshold)
    kept = np.flatnonzero(result.node_mask)
    infl = result.node_influence
    order = kept[np.argsort(-infl[kept], kind="stable")]
    page = order[offset:offset + limit]
    # Kept edges in full-graph rows: the pruned graph's rows map back through ``kept``.
    src, tgt, w = result.graph.edge_arrays()
    src_full, tgt_full = kept[src], kept[tgt]
    in_page = np.zeros(graph.n_nodes, dtype=bool)
    in_page[page] = True
    sel = np.flatnonzero(in_page[src_full] & in_page[tgt_full])
    keys = graph.nodes["key"].to_numpy(dtype=object)
    edges = [{"source": str(keys[s]), "target": str(keys[t]), "weight": _py(x)}
             for s, t, x in zip(src_full[sel].tolist(), tgt_full[sel].tolist(), w[sel].tolist())]
    return {"node_threshold": float(node_threshold), "edge_threshold": float(edge_threshold),
            "total_nodes": int(kept.size), "total_edges": int(result.graph.n_edges),
            "offset": int(offset), "limit": int(limit), "next_offset": int(offset + len(page))
            if offset + len(page) < kept.size else None,
            "nodes": _node_rows(graph, page, infl), "edges": edges}


def dashboard_link(run_root: Path | None, graph: Graph, i: int) -> str | None:
    """Relative URL (``dashboards/feature_<site>_<id>.html``) of a feature's dashboard
    page in ``run_root``, or None. Page names follow ``viz.dashboard.page_name`` with a
    site of this node's layer (``L{layer}.<anything>``)."""
    if run_root is None or graph.nodes["type"].iat[i] != "feature":
        return None
    d = Path(run_root) / "dashboards"
    if not d.is_dir() or d.is_symlink():
        return None
    layer, feat = int(graph.nodes["layer"].iat[i]), int(graph.nodes["feature"].iat[i])
    hits = sorted(p.name for p in d.glob(f"feature_L{layer}.*_{feat}.html") if p.is_file() and not p.is_symlink())
    return f"dashboards/{hits[0]}" if hits else None


def _top(idx: np.ndarray, w: np.ndarray, k: int) -> list[int]:
    order = np.lexsort((idx, -np.abs(w)))  # |weight| descending, ties by node row
    return order[:k].tolist()


def node_detail(graph: Graph, node_id: str, k: int = 10, csc=None, run_root: Path | None = None) -> dict:
    """Step 4: a node with its top-k incoming and outgoing edges by |weight|. ``csc`` is
    ``graph.adjacency.tocsc()`` (cached by the server: columns of a CSR matrix are slow)."""
    i = node_index(graph, node_id)
    a = graph.adjacency
    csc = a.tocsc() if csc is None else csc
    keys = graph.nodes["key"].to_numpy(dtype=object)
    in_src, in_w = a.indices[a.indptr[i]:a.indptr[i + 1]], a.data[a.indptr[i]:a.indptr[i + 1]]
    out_tgt, out_w = csc.indices[csc.indptr[i]:csc.indptr[i + 1]], csc.data[csc.indptr[i]:csc.indptr[i + 1]]
    incoming = [{"source": str(keys[in_src[j]]), "weight": _py(in_w[j])} for j in _top(in_src, in_w, k)]
    outgoing = [{"target": str(keys[out_tgt[j]]), "weight": _py(out_w[j])} for j in _top(out_tgt, out_w, k)]
    return {"node": _node_row(graph, i), "n_incoming": int(in_src.size), "n_outgoing": int(out_tgt.size),
            "incoming": incoming, "outgoing": outgoing, "dashboard": dashboard_link(run_root, graph, i)}


def check_save_request(graph: Graph, body) -> tuple[list[str], str]:
    """(node ids, file stem) of a save request ``{"nodes": [...], "name": "..."}``."""
    if not isinstance(body, dict):
        raise ExploreError(400, 'the body must be a JSON object {"nodes": [...], "name": "..."}')
    ids = body.get("nodes")
    if not isinstance(ids, list) or not ids or not all(isinstance(x, str) for x in ids):
        raise ExploreError(400, '"nodes" must be a non-empty list of node id strings')
    if len(ids) > MAX_SAVE_NODES:
        raise ExploreError(413, f"at most {MAX_SAVE_NODES} nodes per save, got {len(ids)}")
    for x in ids:
        node_index(graph, x)
    name = body.get("name") or "subgraph"
    if not isinstance(name, str) or not _NAME.match(name) or name.startswith("."):
        raise ExploreError(400, "name must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
    return list(dict.fromkeys(ids)), name


def save_subgraph(graph: Graph, body, out_dir: Path, svg: bool = True) -> dict:
    """Step 5: write ``NAME.json`` (Neuronpedia) and ``NAME.svg`` into ``out_dir``."""
    ids, name = check_save_request(graph, body)
    sub = graph.subgraph([as_key(x) for x in ids])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"neuronpedia": f"{name}.json"}
    sub.write_neuronpedia(out_dir / files["neuronpedia"], pinned_ids=[])
    note = None
    if svg:
        from viz.render import render

        try:
            render(sub, out_dir / f"{name}.svg")
            files["svg"] = f"{name}.svg"
        except Exception as exc:  # Graphviz missing or failing: the JSON is still saved
            note = f"SVG not written: {str(exc).splitlines()[0][:200]}"
    return {"name": name, "n_nodes": sub.n_nodes, "n_edges": sub.n_edges, "files": files, "note": note}


__all__ = ["ExploreError", "MAX_LIMIT", "MAX_TOP_K", "check_save_request", "dashboard_link", "node_detail",
           "node_index", "parse_int", "parse_threshold", "pruned_view", "save_subgraph", "summary"]
