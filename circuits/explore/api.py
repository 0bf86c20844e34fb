"""The explorer's JSON API as pure functions: (graph, parameters) -> JSON-able dict.

No HTTP here; ``circuits.explore.server`` maps routes onto these functions, and the
tests call them directly.

Algorithm:
  1. Parameters arrive as query-string text. ``parse_threshold`` accepts a finite number
     in (0, 1] (the range ``circuits.prune.prune`` accepts; 0 would keep nothing and
     NaN compares false everywhere); ``parse_int`` a bounded integer. Anything else
     raises ``ExploreError(400, ...)``; an unknown node raises ``ExploreError(404, ...)``.
  2. ``summary``: node and edge counts, counts per node type, prompt tokens, layers,
     the graph's metadata and the supernodes a saved subgraph carries.
  3. ``prune_masks``: ``circuits.prune.prune``'s steps 1-5 composed from the library's
     own functions (``propagate``, ``keep_top_share``, ``edge_influence_scores``,
     ``remove_dangling``), with the threshold-free node influence (step 1, the costly
     part) computed once per graph and passed in, steps 3-5 run on the subgraph of the
     nodes step 2 keeps (they never look at other edges), and without
     ``build_result``'s scores (not shown): the kept nodes and edges equal ``prune``'s
     (tested). A selection (``is_selection``: a subgraph the explorer saved, or a graph
     without logit nodes, where every influence is zero) is shown whole instead, with
     ``thresholds_apply: false``.
  4. ``pruned_view``: the kept nodes ordered by influence on the logits (descending;
     ties in table order); one page ``[offset, offset + limit)`` of them is returned
     with the kept edges whose two ends both lie in the page (at most ``max_edges``,
     largest |weight| first), so the browser never receives the whole adjacency. Totals
     of the whole pruned circuit come with every page. All selection is numpy over
     the kept edges' arrays: no Python loop over edges.
  5. ``node_detail``: the node's row (activation, token, label), its top-k incoming
     edges (row ``i`` of ``A[target, source]``) and outgoing edges (column ``i``, read
     from a CSC copy) by |weight|, and the link of its feature dashboard when the run
     has one.
  6. ``save_subgraph``: ``graph.subgraph(keys)`` written atomically into the given folder
     (the server passes ``RUN/explore/``) as (a) a Graph folder ``NAME/`` (so the saved
     subgraph reopens in the explorer), its metadata holding the supernodes, (b)
     Neuronpedia JSON ``NAME.json`` whose ``qParams`` carries ``pinnedIds`` and
     ``supernodes`` as Neuronpedia does (``[label, node_id, ...]`` lists of Neuronpedia
     node ids), and (c) ``NAME.svg`` and ``NAME.pdf`` by the Graphviz renderer, each
     supernode drawn as one node.
  7. Component circuits (``component_circuit.json`` of ``circuits validate`` at the
     component level: heads, MLPs, embed, logits and scored edges) go through
     ``ComponentCircuit``: the same summary / view / detail / save shapes with
     ``level: "component"``. Rows are sub-layers (embed, per layer attention then MLP,
     logits), columns head indices (MLP in the last column). The circuit is already a
     selection, so the thresholds do not apply (``thresholds_apply: false``); nodes are
     paged by |score| (or, unscored, by the summed |score| of their edges).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
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
MAX_PAGE_EDGES = 50000
"""Most edges one pruned-view page may carry (the largest |weight| first)."""
DEFAULT_PAGE_EDGES = 10000
"""Edges per page unless the request asks for another number."""
MAX_SUPERNODES = 500
"""Most supernodes one save request may define."""
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
def supernodes_of(graph) -> list[list[str]]:
    """The supernodes ``[[label, node id, ...], ...]`` a saved subgraph carries in its
    metadata (``metadata["explore"]["supernodes"]``), members absent from it dropped."""
    md = graph.metadata.get("explore") if isinstance(getattr(graph, "metadata", None), dict) else None
    raw = md.get("supernodes") if isinstance(md, dict) else None
    if not isinstance(raw, list):
        return []
    ids = set(graph.nodes["key"].tolist()) if isinstance(graph, Graph) else set(graph.names)
    out = []
    for sn in raw:
        if isinstance(sn, list) and len(sn) >= 2 and all(isinstance(x, str) for x in sn):
            members = [m for m in sn[1:] if m in ids]
            if members:
                out.append([sn[0], *members])
    return out


def summary(graph: Graph, path: str = "") -> dict:
    """Step 2: what the graph is (counts, tokens, layers, metadata, supernodes)."""
    counts = graph.nodes["type"].value_counts().to_dict()
    return {"path": path, "level": "feature", "n_nodes": graph.n_nodes, "n_edges": graph.n_edges,
            "n_layers": graph.n_layers, "layers": sorted({int(x) for x in graph.nodes["layer"].tolist()}),
            "types": {str(k): int(v) for k, v in counts.items()}, "tokens": _tokens(graph),
            "metadata": _json_metadata(graph.metadata), "supernodes": supernodes_of(graph),
            "thresholds_apply": not is_selection(graph)}


def is_selection(graph: Graph) -> bool:
    """True for a graph shown whole, unpruned: a subgraph saved by the explorer (already
    a selection; pruning it again would hide pinned nodes) or one without logit nodes
    (influence on the logits is zero everywhere, so pruning would keep no node at all)."""
    return "explore" in (graph.metadata or {}) or not bool(graph.type_mask("logit").any())


def whole_masks(graph: Graph, influence: np.ndarray | None = None) -> PruneMasks:
    """``PruneMasks`` keeping every node and edge of a selection (``is_selection``);
    pages are still ordered by ``influence`` (zeros: table order) when given."""
    src, tgt, w = graph.edge_arrays()
    infl = np.zeros(graph.n_nodes) if influence is None else np.asarray(influence, dtype=np.float64)
    return PruneMasks(np.ones(graph.n_nodes, dtype=bool), infl, src, tgt, w)


@dataclass(frozen=True)
class PruneMasks:
    """What the explorer needs of one influence pruning (step 3)."""

    node_mask: np.ndarray
    """[N] bool: nodes of the pruned circuit (``PruneResult.node_mask``)."""
    node_influence: np.ndarray
    """[N] float64 influence of every node on the logits (full graph)."""
    edge_src: np.ndarray
    """[E'] full-graph rows of the kept edges' sources (the full graph's CSR order)."""
    edge_tgt: np.ndarray
    """[E'] full-graph rows of the kept edges' targets."""
    edge_weight: np.ndarray
    """[E'] their signed weights."""

    @property
    def n_edges(self) -> int:
        """Edges of the pruned circuit."""
        return int(self.edge_src.size)


def node_influence(graph: Graph) -> np.ndarray:
    """Step 3, threshold-free part: ``prune``'s step 1 (the server caches it per graph)."""
    from circuits.prune.node_influence import normalize_rows, propagate

    return propagate(normalize_rows(graph.adjacency), graph.logit_weight_vector())


def prune_masks(graph: Graph, node_threshold: float, edge_threshold: float,
                influence: np.ndarray | None = None) -> PruneMasks:
    """Step 3: ``circuits.prune.prune``'s kept nodes and edges, its steps 2-5 run on a
    precomputed ``influence`` (step 1).

    Steps 3-5 only ever look at edges between nodes kept by step 2, so they run on
    ``graph.subgraph(step-2 nodes)`` (same relative node and edge order, so the same
    scores and cuts): thousands of nodes instead of the whole graph. The kept rows map
    back through the step-2 node indices, which are increasing, so the kept edges stay
    in the full graph's CSR order."""
    from circuits.prune.influence_prune import (check_fraction, edge_influence_scores, keep_top_share,
                                                remove_dangling)

    node_threshold = check_fraction("node_threshold", node_threshold)
    edge_threshold = check_fraction("edge_threshold", edge_threshold)
    infl = node_influence(graph) if influence is None else influence
    always = graph.type_mask("token") | graph.type_mask("logit")
    step2 = keep_top_share(infl, node_threshold) | always
    rows = np.flatnonzero(step2)
    sub = graph.subgraph(step2)
    everything = np.ones(sub.n_nodes, dtype=bool)
    scores = edge_influence_scores(sub, everything)
    edge_keep = keep_top_share(scores, edge_threshold)
    sub_nodes, edge_keep = remove_dangling(sub, everything, edge_keep)
    src, tgt, w = sub.edge_arrays()
    node_mask = np.zeros(graph.n_nodes, dtype=bool)
    node_mask[rows[sub_nodes]] = True
    return PruneMasks(node_mask, infl, rows[src[edge_keep]], rows[tgt[edge_keep]], w[edge_keep])


def _page_edges(keys: np.ndarray, src: np.ndarray, tgt: np.ndarray, w: np.ndarray, sel: np.ndarray,
                max_edges: int) -> tuple[list[dict], int]:
    """The edges ``sel`` (indices) as JSON rows, at most ``max_edges`` by |weight|."""
    n = int(sel.size)
    if n > max_edges:
        top = np.argpartition(-np.abs(w[sel]), max_edges - 1)[:max_edges]
        sel = np.sort(sel[top])
    return [{"source": str(keys[s]), "target": str(keys[t]), "weight": _py(x)}
            for s, t, x in zip(src[sel].tolist(), tgt[sel].tolist(), w[sel].tolist())], n


def pruned_view(graph: Graph, node_threshold: float, edge_threshold: float, limit: int = 500,
                offset: int = 0, result: PruneMasks | None = None, max_edges: int = DEFAULT_PAGE_EDGES,
                keys: np.ndarray | None = None) -> dict:
    """Step 4: one page of the pruned circuit. ``result`` is the ``PruneMasks`` of these
    thresholds (the server caches them); ``keys`` the key column (cached)."""
    if result is None:
        result = prune_masks(graph, node_threshold, edge_threshold)
    keys = graph.nodes["key"].to_numpy(dtype=object) if keys is None else keys
    kept = np.flatnonzero(result.node_mask)
    infl = result.node_influence
    order = kept[np.argsort(-infl[kept], kind="stable")]
    page = order[offset:offset + limit]
    in_page = np.zeros(graph.n_nodes, dtype=bool)
    in_page[page] = True
    src, tgt, w = result.edge_src, result.edge_tgt, result.edge_weight
    sel = np.flatnonzero(in_page[src] & in_page[tgt])
    rows, n_page_edges = _page_edges(keys, src, tgt, w, sel, max_edges)
    return {"level": "feature", "thresholds_apply": True,
            "node_threshold": float(node_threshold), "edge_threshold": float(edge_threshold),
            "total_nodes": int(kept.size), "total_edges": result.n_edges,
            "offset": int(offset), "limit": int(limit),
            "next_offset": int(offset + len(page)) if offset + len(page) < kept.size else None,
            "prev_offset": max(0, int(offset) - int(limit)) if offset > 0 else None,
            "page_edges": n_page_edges, "edges_truncated": n_page_edges > len(rows),
            "nodes": _node_rows(graph, page, infl), "edges": rows}


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
    """Step 5: a node with its top-k incoming and outgoing edges by |weight|. ``csc`` is
    ``graph.adjacency.tocsc()`` (cached by the server: columns of a CSR matrix are slow)."""
    i = node_index(graph, node_id)
    a = graph.adjacency
    csc = a.tocsc() if csc is None else csc
    keys = graph.nodes["key"].to_numpy(dtype=object)
    in_src, in_w = a.indices[a.indptr[i]:a.indptr[i + 1]], a.data[a.indptr[i]:a.indptr[i + 1]]
    out_tgt, out_w = csc.indices[csc.indptr[i]:csc.indptr[i + 1]], csc.data[csc.indptr[i]:csc.indptr[i + 1]]
    incoming = [{"source": str(keys[in_src[j]]), "weight": _py(in_w[j])} for j in _top(in_src, in_w, k)]
    outgoing = [{"target": str(keys[out_tgt[j]]), "weight": _py(out_w[j])} for j in _top(out_tgt, out_w, k)]
    return {"level": "feature", "node": _node_row(graph, i), "n_incoming": int(in_src.size),
            "n_outgoing": int(out_tgt.size), "incoming": incoming, "outgoing": outgoing,
            "dashboard": dashboard_link(run_root, graph, i)}


# ---------------------------------------------------------------- saving ----
def check_save_request(graph, body) -> tuple[list[str], str]:
    """(node ids, file stem) of a save request ``{"nodes": [...], "name": "..."}``."""
    if not isinstance(body, dict):
        raise ExploreError(400, 'the body must be a JSON object {"nodes": [...], "name": "..."}')
    ids = body.get("nodes")
    if not isinstance(ids, list) or not ids or not all(isinstance(x, str) for x in ids):
        raise ExploreError(400, '"nodes" must be a non-empty list of node id strings')
    if len(ids) > MAX_SAVE_NODES:
        raise ExploreError(413, f"at most {MAX_SAVE_NODES} nodes per save, got {len(ids)}")
    for x in ids:  # every id must name a node (404 otherwise)
        if isinstance(graph, Graph):
            node_index(graph, x)
        else:
            graph.index(x)
    name = body.get("name") or "subgraph"
    if not isinstance(name, str) or not _NAME.match(name) or name.startswith("."):
        raise ExploreError(400, "name must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
    return list(dict.fromkeys(ids)), name


def check_supernodes(body, ids: list[str]) -> list[list[str]]:
    """The request's ``"supernodes"``: ``[[label, node id, ...], ...]`` (Neuronpedia's
    shape, in this graph's node ids). Labels are unique 1-80 character strings; members
    are pinned nodes, each in at most one supernode; a supernode has 1+ members."""
    raw = body.get("supernodes", []) if isinstance(body, dict) else []
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_SUPERNODES:
        raise ExploreError(400, f'"supernodes" must be a list of at most {MAX_SUPERNODES} [label, node id, ...] lists')
    pinned, owner, out = set(ids), {}, []
    for sn in raw:
        if not isinstance(sn, list) or len(sn) < 2 or not all(isinstance(x, str) for x in sn):
            raise ExploreError(400, "each supernode must be a list [label, node id, ...] of strings with 1+ members")
        label = sn[0].strip()
        if not 1 <= len(label) <= 80 or any(o[0] == label for o in out):
            raise ExploreError(400, f"supernode labels must be unique, 1-80 characters; got {sn[0][:80]!r}")
        members = list(dict.fromkeys(sn[1:]))
        for m in members:
            if m not in pinned:
                raise ExploreError(400, f"supernode {label!r}: member {m[:80]!r} is not among the saved nodes")
            if m in owner:
                raise ExploreError(400, f"node {m[:80]!r} is in two supernodes: {owner[m]!r} and {label!r}")
            owner[m] = label
        out.append([label, *members])
    return out


def _render(fn, out_dir: Path, name: str, formats: tuple[str, ...]) -> tuple[dict, str | None]:
    """Graphviz figures ``NAME.<fmt>`` via ``fn(path)`` (atomic); (files, note on failure)."""
    files, note = {}, None
    for fmt in formats:
        try:
            fn(out_dir / f"{name}.{fmt}")
            files[fmt] = f"{name}.{fmt}"
        except Exception as exc:  # Graphviz missing or failing: the JSON is still saved
            note = f"{fmt.upper()} not written: {str(exc).splitlines()[0][:200]}"
            break
    return files, note


def save_subgraph(graph: Graph, body, out_dir: Path, svg: bool = True, source: str = "") -> dict:
    """Step 6: write the Graph folder ``NAME/``, ``NAME.json`` (Neuronpedia) and
    ``NAME.svg`` / ``NAME.pdf`` into ``out_dir``."""
    if not isinstance(graph, Graph):
        return graph.save(body, out_dir, svg=svg, source=source)
    ids, name = check_save_request(graph, body)
    supernodes = check_supernodes(body, ids)
    sub = graph.subgraph([as_key(x) for x in ids])
    sub_md = dict(sub.metadata)
    sub_md["explore"] = {"source": source, "pinned": ids, "supernodes": supernodes}
    sub = Graph(sub.nodes, sub.adjacency, sub.logit_weights, sub_md, sub.dropped_mass)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sub.save(out_dir / name)  # atomic per file; reopens in the explorer as explore/NAME
    files = {"neuronpedia": f"{name}.json"}
    write_neuronpedia_with_supernodes(sub, out_dir / files["neuronpedia"], ids, supernodes)
    note = None
    if svg:
        from viz.render import render
        from viz.style import CircuitStyle

        style = CircuitStyle(supernodes={sn[0]: sn[1:] for sn in supernodes})
        figs, note = _render(lambda p: render(sub, p, style=style), out_dir, name, ("svg", "pdf"))
        files.update(figs)
    return {"level": "feature", "name": name, "graph_dir": name, "n_nodes": sub.n_nodes, "n_edges": sub.n_edges,
            "supernodes": supernodes, "files": files, "note": note}


def write_neuronpedia_with_supernodes(graph: Graph, path: Path, pinned: list[str],
                                      supernodes: list[list[str]]) -> dict:
    """Neuronpedia JSON of ``graph`` with ``qParams.pinnedIds`` and ``qParams.supernodes``
    (``[label, node_id, ...]``, Neuronpedia node ids), validated, written atomically."""
    from attribution.graph.neuronpedia import neuronpedia_ids, to_neuronpedia, validate_neuronpedia
    from viz._atomic import atomic_write_bytes

    np_ids = neuronpedia_ids(graph)
    of = {k: np_ids[i] for i, k in enumerate(graph.nodes["key"].tolist())}
    d = to_neuronpedia(graph, pinned_ids=[of[k] for k in pinned])
    d["qParams"]["supernodes"] = [[sn[0], *[of[m] for m in sn[1:]]] for sn in supernodes]
    validate_neuronpedia(d)
    atomic_write_bytes(Path(path), json.dumps(d, allow_nan=False).encode("utf-8"))
    return d


# ---------------------------------------------------------------- component circuits ----
def _component_place(name: str) -> tuple[str, int, int]:
    """(type, layer, head) of a normalised component name (head -1: not a head)."""
    if name == "embed":
        return "embed", -1, -1
    if name == "logits":
        return "logits", 10 ** 6, -1
    layer, rest = name[1:].split(".", 1)
    return ("mlp", int(layer), -1) if rest == "MLP" else ("head", int(layer), int(rest[1:]))


class ComponentCircuit:
    """A ``component_circuit.json`` record (step 7) behind the explorer's API shapes."""

    def __init__(self, record: dict):
        from viz.components import normalise_name
        from viz.errors import SchemaError

        if not isinstance(record, dict) or not isinstance(record.get("nodes"), list) \
                or not isinstance(record.get("edges"), list):
            raise ExploreError(422, "a component circuit is a JSON object with 'nodes' and 'edges' lists")
        try:
            names, score = [], {}
            for n in record["nodes"]:
                nm = normalise_name(n["name"])
                if nm not in score:
                    names.append(nm)
                score[nm] = n.get("score") if isinstance(n.get("score"), (int, float)) \
                    and not isinstance(n.get("score"), bool) and math.isfinite(n["score"]) else score.get(nm)
            src, tgt, w, port = [], [], [], []
            for e in record["edges"]:
                s, t = normalise_name(e["source"]), normalise_name(e["target"])
                x = e.get("score")
                src.append(s)
                tgt.append(t)
                w.append(float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                         else None)
                port.append(e.get("port") if isinstance(e.get("port"), str) else None)
                for nm in (s, t):
                    if nm not in score:
                        names.append(nm)
                        score[nm] = None
        except (KeyError, TypeError, SchemaError) as exc:
            raise ExploreError(422, f"component circuit: {str(exc).splitlines()[0][:200]}") from None
        self.record = record
        self.names = names
        self.score = score
        self.edges = list(zip(src, tgt, w, port))
        places = [_component_place(n) for n in names]
        layers = [la for (_, la, _) in places if 0 <= la < 10 ** 6]
        given = record.get("n_layers")
        self.n_layers = max([given if isinstance(given, int) and not isinstance(given, bool) and given > 0 else 0,
                             max(layers) + 1 if layers else 0])
        heads = [h for (_, _, h) in places]
        self.n_heads = max(heads) + 1 if max(heads, default=-1) >= 0 else 0
        self.metadata = {k: v for k, v in record.items() if k not in ("nodes", "edges")}
        self.index_of = {n: i for i, n in enumerate(names)}
        # Weight used for ranking: |node score|, else the summed |score| of its edges.
        mass = dict.fromkeys(names, 0.0)
        for s, t, x, _ in self.edges:
            mass[s] += abs(x or 0.0)
            mass[t] += abs(x or 0.0)
        self.rank_weight = np.array([abs(score[n]) if score[n] is not None else mass[n] for n in names])

    # -- layout: rows are sub-layers, columns head indices (MLP last)
    def _row(self, name: str) -> dict:
        ty, layer, head = _component_place(name)
        if ty == "embed":
            layer, row, pos = -1, 0, 0
        elif ty == "logits":
            layer, row, pos = self.n_layers, 2 * self.n_layers + 1, 0
        else:
            row, pos = 2 * layer + (1 if ty == "head" else 2), head if ty == "head" else self.n_heads
        s = self.score[name]
        return {"id": name, "type": ty, "layer": int(layer), "row": int(row), "pos": int(pos),
                "feature": int(head), "token": "", "activation": None, "label": name,
                "score": _py(s) if s is not None else None,
                "influence": float(self.rank_weight[self.index_of[name]])}

    def index(self, node_id) -> int:
        if not isinstance(node_id, str) or node_id not in self.index_of:
            raise ExploreError(404, f"unknown node {str(node_id)[:80]!r} in this component circuit")
        return self.index_of[node_id]

    def summary(self, path: str = "") -> dict:
        rows = ["embed"] + [f"L{la} {part}" for la in range(self.n_layers) for part in ("attn", "MLP")] + ["logits"]
        types: dict[str, int] = {}
        for n in self.names:
            ty = _component_place(n)[0]
            types[ty] = types.get(ty, 0) + 1
        return {"path": path, "level": "component", "n_nodes": len(self.names), "n_edges": len(self.edges),
                "n_layers": self.n_layers, "layers": sorted({self._row(n)["layer"] for n in self.names}),
                "types": types, "tokens": [f"H{h}" for h in range(self.n_heads)] + ["MLP"],
                "row_labels": rows, "metadata": _json_metadata(self.metadata),
                "supernodes": supernodes_of(self), "thresholds_apply": False}

    def view(self, limit: int = 500, offset: int = 0, max_edges: int = DEFAULT_PAGE_EDGES) -> dict:
        order = np.lexsort((np.arange(len(self.names)), -self.rank_weight))
        page = [self.names[i] for i in order[offset:offset + limit].tolist()]
        in_page = set(page)
        sel = [e for e in self.edges if e[0] in in_page and e[1] in in_page]
        n_sel = len(sel)
        if n_sel > max_edges:
            sel = sorted(sel, key=lambda e: -abs(e[2] or 0.0))[:max_edges]
        n = len(self.names)
        return {"level": "component", "thresholds_apply": False, "node_threshold": None, "edge_threshold": None,
                "total_nodes": n, "total_edges": len(self.edges), "offset": int(offset), "limit": int(limit),
                "next_offset": int(offset + len(page)) if offset + len(page) < n else None,
                "prev_offset": max(0, int(offset) - int(limit)) if offset > 0 else None,
                "page_edges": n_sel, "edges_truncated": n_sel > len(sel),
                "scored": all(e[2] is not None for e in self.edges),
                "nodes": [self._row(nm) for nm in page],
                "edges": [{"source": s, "target": t, "weight": x, "port": p} for s, t, x, p in sel]}

    def detail(self, node_id: str, k: int = 10) -> dict:
        self.index(node_id)

        def top(rows):
            return sorted(rows, key=lambda r: (-abs(r["weight"] or 0.0), r.get("source", r.get("target"))))[:k]

        inc = [{"source": s, "weight": x, "port": p} for s, t, x, p in self.edges if t == node_id]
        out = [{"target": t, "weight": x, "port": p} for s, t, x, p in self.edges if s == node_id]
        return {"level": "component", "node": self._row(node_id), "n_incoming": len(inc), "n_outgoing": len(out),
                "incoming": top(inc), "outgoing": top(out), "dashboard": None}

    def subset_record(self, ids: list[str], supernodes: list[list[str]], source: str) -> dict:
        keep = set(ids)
        rec = dict(self.metadata)
        rec["nodes"] = [{"name": n, "score": self.score[n]} for n in self.names if n in keep]
        rec["edges"] = [{"source": s, "target": t, "score": x, "port": p} for s, t, x, p in self.edges
                        if s in keep and t in keep]
        rec["explore"] = {"source": source, "pinned": ids, "supernodes": supernodes}
        return rec

    def save(self, body, out_dir: Path, svg: bool = True, source: str = "") -> dict:
        """Step 6 for a component circuit: ``NAME/component_circuit.json`` (the same
        record, restricted to the pinned nodes; reopens in the explorer) and
        ``NAME.svg`` / ``NAME.pdf`` by ``viz.components``."""
        from viz._atomic import atomic_write_text
        from viz.components import FILENAME, render_component_circuit

        ids, name = check_save_request(self, body)
        supernodes = check_supernodes(body, ids)
        rec = self.subset_record(ids, supernodes, source)
        out_dir = Path(out_dir)
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / name / FILENAME, json.dumps(rec, indent=1, allow_nan=False))
        files = {"component": f"{name}/{FILENAME}"}
        note = None
        if svg:
            figs, note = _render(lambda p: render_component_circuit(rec, p), out_dir, name, ("svg", "pdf"))
            files.update(figs)
        return {"level": "component", "name": name, "graph_dir": name, "n_nodes": len(rec["nodes"]),
                "n_edges": len(rec["edges"]), "supernodes": supernodes, "files": files, "note": note}


__all__ = ["ComponentCircuit", "DEFAULT_PAGE_EDGES", "ExploreError", "MAX_LIMIT", "MAX_PAGE_EDGES", "MAX_TOP_K",
           "PruneMasks", "check_save_request", "check_supernodes", "dashboard_link", "node_detail", "node_index",
           "node_influence", "parse_int", "parse_threshold", "prune_masks", "pruned_view", "save_subgraph",
           "summary", "supernodes_of", "write_neuronpedia_with_supernodes"]
