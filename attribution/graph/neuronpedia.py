"""Export to the Neuronpedia attribution-graph JSON schema, and a validator for it.

The dict has top-level keys ``metadata``, ``qParams``, ``nodes`` and ``links``
(``{source, target, weight}``), following circuit-tracer's export. Node ids:

- feature   ``{layer}_{feature}_{pos}``
- error     ``{layer}_-1_{pos}``
- embedding ``E_{token_id}_{pos}``
- logit     ``{n_layers+1}_{token_id}_{pos}``; a custom-direction logit (token_id -1)
  gets a virtual index ``base + j`` instead of a token id, where j counts custom logits
  in table order and ``base`` is ``metadata['vocab_size']`` when known, else 10**9.

Node fields: ``node_id``, ``feature`` (features: Cantor pairing of (layer, feature), as
circuit-tracer does without a known dictionary width; errors -1; embeddings the
position; logits the (virtual) token id), ``layer`` (string; ``"E"`` for embeddings),
``ctx_idx``, ``feature_type``, ``token_prob``, ``is_target_logit`` (the first logit),
``run_idx``, ``reverse_ctx_idx``, ``jsNodeId``, ``clerp``, ``influence``, ``activation``.

``validate_neuronpedia`` checks required keys and types, id formats against
``feature_type``/``layer``/``ctx_idx``, unique ids, and that links join known ids.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attribution.graph.errors import NeuronpediaError
from attribution.graph.graph import Graph
from attribution.graph.io import atomic_write_bytes
from attribution.graph.keys import ErrorNode, FeatureNode, LogitNode, NodeKey, TokenNode

VIRTUAL_LOGIT_BASE = 10**9
"""Virtual token-id base for custom-direction logits when ``vocab_size`` is unknown."""
FEATURE_TYPES = {"error": "mlp reconstruction error", "token": "embedding", "logit": "logit",
                 "feature": "cross layer transcoder"}
_EMBED_RE = re.compile(r"^E_(\d+)_(\d+)$")
_LAYERED_RE = re.compile(r"^(\d+)_(-?\d+)_(\d+)$")


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def neuronpedia_id(key: NodeKey, n_layers: int, virtual_index: int | None = None) -> str:
    """Neuronpedia node id of ``key``; custom logits need their ``virtual_index``."""
    if isinstance(key, FeatureNode):
        return f"{key.layer}_{key.feature}_{key.pos}"
    if isinstance(key, ErrorNode):
        return f"{key.layer}_-1_{key.pos}"
    if isinstance(key, TokenNode):
        return f"E_{key.token_id}_{key.pos}"
    if key.name:
        if virtual_index is None:
            raise NeuronpediaError(f"custom logit {key} needs a virtual index")
        return f"{n_layers + 1}_{virtual_index}_{key.pos}"
    return f"{n_layers + 1}_{key.token_id}_{key.pos}"


def parse_neuronpedia_id(node_id: str, n_layers: int) -> NodeKey:
    """Inverse of ``neuronpedia_id``. A custom logit comes back as
    ``LogitNode(pos, virtual_index)``; ``Graph``-level mapping is ``neuronpedia_ids``."""
    m = _EMBED_RE.match(node_id)
    if m:
        return TokenNode(int(m.group(2)), int(m.group(1)))
    m = _LAYERED_RE.match(node_id)
    if not m:
        raise NeuronpediaError(f"malformed Neuronpedia node id {node_id!r}")
    layer, idx, pos = map(int, m.groups())
    if layer == n_layers + 1 and idx >= 0:
        return LogitNode(pos, idx)
    if layer < n_layers:
        return ErrorNode(layer, pos) if idx == -1 else FeatureNode(layer, pos, idx)
    raise NeuronpediaError(f"node id {node_id!r}: layer {layer} is not < {n_layers} nor the logit layer")


def neuronpedia_ids(graph: Graph) -> list[str]:
    """Neuronpedia id of every node, in table order."""
    base = graph.metadata.get("vocab_size", VIRTUAL_LOGIT_BASE)
    ids, j = [], 0
    for k in graph.keys:
        virtual = None
        if isinstance(k, LogitNode) and k.name:
            virtual, j = base + j, j + 1
        ids.append(neuronpedia_id(k, graph.n_layers, virtual))
    return ids


def _node_dict(graph: Graph, i: int, node_id: str, row: dict, influence, target_logit: bool) -> dict:
    k = graph.keys[i]
    infl = None if influence is None else float(influence[i])
    layer = "E" if isinstance(k, TokenNode) else str(int(row["layer"]) + (1 if isinstance(k, LogitNode) else 0))
    d = {"node_id": node_id, "layer": layer, "ctx_idx": int(row["pos"]), "feature_type": FEATURE_TYPES[k.kind],
         "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
         "clerp": row["label"], "influence": infl, "activation": None}
    if isinstance(k, FeatureNode):
        d.update(feature=_cantor(k.layer, k.feature), activation=float(row["activation"]),
                 jsNodeId=f"{k.layer}_{k.feature}-0")
    elif isinstance(k, ErrorNode):
        d.update(feature=-1, jsNodeId=f"{k.layer}_-1-{k.pos}")
    elif isinstance(k, TokenNode):
        d.update(feature=k.pos, jsNodeId=f"E_{k.token_id}-{k.pos}")
    else:
        vocab = int(node_id.split("_")[1])
        p = float(row["logit_prob"])
        what = f'direction "{k.name}"' if k.name else f'"{row["token"]}"'
        d.update(feature=vocab, token_prob=p, is_target_logit=target_logit, jsNodeId=f"L_{vocab}-{k.pos}",
                 clerp=row["label"] or f"Output {what} (p={p:.3f})")
    return d


def _prompt_tokens(graph: Graph) -> list[str]:
    toks = graph.metadata.get("tokens")
    if isinstance(toks, list) and all(isinstance(t, str) for t in toks):
        return toks
    rows = graph.nodes[graph.nodes["type"] == "token"].sort_values("pos")
    return rows["token"].tolist()


def to_neuronpedia(
    graph: Graph,
    *,
    slug: str | None = None,
    scan: str | None = None,
    influence: Sequence[float] | np.ndarray | None = None,
    node_threshold: float | None = None,
    pinned_ids: Sequence[str] = (),
) -> dict:
    """The Neuronpedia dict of ``graph`` (all its nodes and edges).

    ``slug`` defaults to ``metadata['slug']`` or ``"mlx-circuits-graph"``; ``scan`` to
    ``metadata['scan']`` or ``metadata['model']``; ``influence`` is an optional [N] array
    written into each node's ``influence`` field (e.g. a pruning's cumulative influence)."""
    md = graph.metadata
    if influence is not None:
        influence = np.asarray(influence, dtype=np.float64)
        if influence.shape != (graph.n_nodes,):
            raise NeuronpediaError(f"influence must have shape ({graph.n_nodes},), got {influence.shape}")
    ids = neuronpedia_ids(graph)
    records = graph.nodes.to_dict("records")
    first_logit = next((i for i, k in enumerate(graph.keys) if isinstance(k, LogitNode)), -1)
    nodes = [_node_dict(graph, i, ids[i], records[i], influence, i == first_logit) for i in range(graph.n_nodes)]
    src, tgt, w = graph.edge_arrays()
    links = [{"source": ids[s], "target": ids[t], "weight": x}
             for s, t, x in zip(src.tolist(), tgt.tolist(), w.tolist())]
    dictionaries = md.get("dictionaries")
    metadata = {
        "slug": slug or md.get("slug") or "mlx-circuits-graph",
        "scan": scan or md.get("scan") or str(md.get("model", "mlx-circuits")),
        "transcoder_list": [d for d in dictionaries if isinstance(d, str)] if isinstance(dictionaries, list) else [],
        "prompt_tokens": _prompt_tokens(graph),
        "prompt": str(md.get("prompt", "")),
        "node_threshold": node_threshold,
        "schema_version": 1,
    }
    qparams = {"pinnedIds": list(pinned_ids), "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": nodes, "links": links}


def write_neuronpedia(graph: Graph, path, **kwargs) -> None:
    """Validate ``to_neuronpedia(graph, **kwargs)`` and write it as JSON (atomic rename)."""
    d = to_neuronpedia(graph, **kwargs)
    validate_neuronpedia(d)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(d, allow_nan=False).encode("utf-8"))


_REQUIRED = {
    "metadata": {"slug": str, "scan": str, "prompt_tokens": list, "prompt": str},
    "qParams": {"pinnedIds": list, "supernodes": list, "linkType": str, "clickedId": str, "sg_pos": str},
}
_NODE_FIELDS = {"node_id": str, "feature": int, "layer": str, "ctx_idx": int, "feature_type": str, "jsNodeId": str}
_OPTIONAL_NODE_FIELDS = {"token_prob": (int, float), "is_target_logit": bool, "clerp": str,
                         "influence": (int, float, type(None)), "activation": (int, float, type(None))}


def _check_node(n, problems: list[str]) -> tuple[str, int | None, str] | None:
    """Check one node dict; return (node_id, numeric layer or None, kind) when usable."""
    if not isinstance(n, dict):
        problems.append(f"node is not an object: {n!r:.80}")
        return None
    for f, t in _NODE_FIELDS.items():
        if not isinstance(n.get(f), t) or isinstance(n.get(f), bool) and t is int:
            problems.append(f"node {n.get('node_id')!r}: field {f!r} missing or not {t.__name__}")
            return None
    for f, t in _OPTIONAL_NODE_FIELDS.items():
        if f in n and not isinstance(n[f], t):
            problems.append(f"node {n['node_id']!r}: field {f!r} has type {type(n[f]).__name__}")
    nid, ftype = n["node_id"], n["feature_type"]
    if ftype == "embedding":
        m = _EMBED_RE.match(nid)
        ok = bool(m) and n["layer"] == "E" and int(m.group(2)) == n["ctx_idx"]
        kind, layer = "embedding", None
    else:
        m = _LAYERED_RE.match(nid)
        ok = bool(m) and n["layer"] == m.group(1) and int(m.group(3)) == n["ctx_idx"]
        if m and ftype == "mlp reconstruction error":
            ok = ok and m.group(2) == "-1"
        elif m:
            ok = ok and int(m.group(2)) >= 0
        kind = ftype if ftype in ("logit", "mlp reconstruction error") else "feature"
        layer = int(m.group(1)) if m else None
    if not ok:
        problems.append(f"node id {nid!r} does not match feature_type {ftype!r}, layer {n['layer']!r}, "
                        f"ctx_idx {n['ctx_idx']!r}")
        return None
    return nid, layer, kind


def validate_neuronpedia(d: dict) -> None:
    """Raise ``NeuronpediaError`` listing the problems if ``d`` is not a valid graph dict."""
    problems: list[str] = []
    if not isinstance(d, dict):
        raise NeuronpediaError(f"a Neuronpedia graph is a JSON object, got {type(d).__name__}")
    missing = [k for k in ("metadata", "qParams", "nodes", "links") if k not in d]
    if missing:
        raise NeuronpediaError(f"missing top-level keys {missing}")
    for section, fields in _REQUIRED.items():
        sec = d[section]
        for f, t in fields.items():
            if not isinstance(sec, dict) or not isinstance(sec.get(f), t):
                problems.append(f"{section}.{f} missing or not {t.__name__}")
    if not isinstance(d["nodes"], list) or not isinstance(d["links"], list):
        raise NeuronpediaError("'nodes' and 'links' must be lists")
    checked = [c for c in (_check_node(n, problems) for n in d["nodes"]) if c is not None]
    ids = [c[0] for c in checked]
    if len(set(ids)) != len(ids):
        problems.append("duplicate node ids")
    inner = [c[1] for c in checked if c[2] in ("feature", "mlp reconstruction error")]
    logit_layers = {c[1] for c in checked if c[2] == "logit"}
    if len(logit_layers) > 1 or (logit_layers and inner and min(logit_layers) <= max(inner)):
        problems.append(f"logit layer(s) {sorted(logit_layers)} must be one value above every feature layer")
    known = {n.get("node_id") for n in d["nodes"] if isinstance(n, dict)}  # report bad nodes once
    for link in d["links"]:
        if not isinstance(link, dict) or not {"source", "target", "weight"} <= set(link):
            problems.append(f"link lacks source/target/weight: {link!r:.80}")
        elif link["source"] not in known or link["target"] not in known:
            problems.append(f"link {link['source']!r} -> {link['target']!r} names an unknown node")
        elif not isinstance(link["weight"], (int, float)) or not math.isfinite(link["weight"]):
            problems.append(f"link {link['source']!r} -> {link['target']!r} has a non-finite weight")
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise NeuronpediaError("invalid Neuronpedia graph: " + "; ".join(problems[:10]) + more)


__all__ = [
    "VIRTUAL_LOGIT_BASE",
    "neuronpedia_id",
    "neuronpedia_ids",
    "parse_neuronpedia_id",
    "to_neuronpedia",
    "validate_neuronpedia",
    "write_neuronpedia",
]
