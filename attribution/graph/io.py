"""Saving and loading a ``Graph`` as a directory (never pickle).

Layout of ``directory``:
- ``graph.safetensors``: ``adjacency.indptr``, ``adjacency.indices``, ``adjacency.data``
  (the CSR arrays, dtypes kept), ``nodes.<col>`` for the numeric node columns,
  ``dropped_mass`` and ``logit_weights``; safetensors metadata holds schema/version.
- ``graph.json`` (sorted keys): ``schema``, ``version``, ``metadata``, ``n_nodes``,
  ``n_edges``, the string node columns under ``nodes``, and ``tensors_sha256``, the
  SHA-256 of ``graph.safetensors``.

Steps of ``save_graph``:
1. Serialise the tensors to bytes and hash them.
2. Write each file to a temporary name in the directory, fsync, then ``os.replace``:
   the tensors first, the JSON (which names the tensors' hash) last, so a reader sees
   either a consistent pair or a hash mismatch, never a silently mixed pair.

Steps of ``load_graph``:
1. Read and parse ``graph.json``; check schema and version.
2. Read ``graph.safetensors``; check its hash against the JSON and its tensor names.
3. Rebuild the node table and CSR matrix and validate them through ``Graph``.
Every failure raises ``GraphFileError`` (or ``GraphSchemaError``) naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from attribution.graph.errors import GraphError, GraphFileError, GraphSchemaError
from attribution.graph.graph import GRAPH_SCHEMA, GRAPH_VERSION, Graph
from attribution.graph.nodes import FLOAT_COLUMNS, INT_COLUMNS, NODE_COLUMNS, STR_COLUMNS

JSON_NAME = "graph.json"
TENSORS_NAME = "graph.safetensors"
_TENSOR_NAMES = (
    ["adjacency.indptr", "adjacency.indices", "adjacency.data", "dropped_mass", "logit_weights"]
    + [f"nodes.{c}" for c in INT_COLUMNS + FLOAT_COLUMNS]
)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _tensors(graph: Graph) -> dict[str, np.ndarray]:
    a = graph.adjacency
    out = {
        "adjacency.indptr": a.indptr, "adjacency.indices": a.indices, "adjacency.data": a.data,
        "dropped_mass": graph.dropped_mass, "logit_weights": graph.logit_weights,
    }
    for c in INT_COLUMNS + FLOAT_COLUMNS:
        out[f"nodes.{c}"] = graph.nodes[c].to_numpy()
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_graph(graph: Graph, directory) -> None:
    """Write ``graph`` into ``directory`` (created if missing); see the module docstring."""
    from safetensors.numpy import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blob = save(_tensors(graph), metadata={"schema": GRAPH_SCHEMA, "version": str(GRAPH_VERSION)})
    doc = {
        "schema": GRAPH_SCHEMA,
        "version": GRAPH_VERSION,
        "metadata": graph.metadata,
        "n_nodes": graph.n_nodes,
        "n_edges": graph.n_edges,
        "nodes": {c: graph.nodes[c].tolist() for c in STR_COLUMNS},
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
    }
    atomic_write_bytes(directory / TENSORS_NAME, blob)
    atomic_write_bytes(directory / JSON_NAME, json.dumps(doc, sort_keys=True, indent=1).encode("utf-8"))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise GraphFileError(f"{path} is missing; is this a directory written by Graph.save?")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GraphFileError(f"{path} is not readable JSON (corrupt or truncated): {exc}") from None
    if not isinstance(doc, dict):
        raise GraphFileError(f"{path} must hold a JSON object")
    if doc.get("schema") != GRAPH_SCHEMA:
        raise GraphSchemaError(f"{path}: schema {doc.get('schema')!r}, expected {GRAPH_SCHEMA!r}")
    if doc.get("version") != GRAPH_VERSION:
        raise GraphSchemaError(
            f"{path}: version {doc.get('version')!r}, this code reads version {GRAPH_VERSION}; "
            "upgrade mlx-circuits or re-create the graph")
    for field in ("metadata", "nodes", "n_nodes", "tensors_sha256"):
        if field not in doc:
            raise GraphFileError(f"{path} lacks the field {field!r}")
    return doc


def _read_tensors(path: Path, sha256: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if not path.is_file():
        raise GraphFileError(f"{path} is missing; is this a directory written by Graph.save?")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise GraphFileError(f"{path} does not match the hash recorded in {JSON_NAME} (corrupt or mixed files)")
    try:
        tensors = load(blob)
    except (SafetensorError, ValueError, OSError) as exc:
        raise GraphFileError(f"{path} is not a readable safetensors file: {exc}") from None
    missing = [n for n in _TENSOR_NAMES if n not in tensors]
    if missing:
        raise GraphFileError(f"{path} lacks tensors {missing}")
    return tensors


def load_graph(directory) -> Graph:
    """Read a graph written by ``save_graph``; see the module docstring."""
    directory = Path(directory)
    if not directory.is_dir():
        raise GraphFileError(f"graph directory {directory} does not exist")
    doc = _read_json(directory / JSON_NAME)
    t = _read_tensors(directory / TENSORS_NAME, doc["tensors_sha256"])
    n = doc["n_nodes"]
    try:
        cols = {c: t[f"nodes.{c}"] for c in INT_COLUMNS + FLOAT_COLUMNS}
        cols.update({c: doc["nodes"][c] for c in STR_COLUMNS})
        if any(len(v) != n for v in cols.values()):
            raise GraphFileError(f"{directory}: node columns do not all have n_nodes={n} entries")
        table = pd.DataFrame({c: cols[c] for c in NODE_COLUMNS})
        adj = sp.csr_matrix((t["adjacency.data"], t["adjacency.indices"], t["adjacency.indptr"]), shape=(n, n))
        return Graph(table, adj, t["logit_weights"], doc["metadata"], t["dropped_mass"])
    except GraphFileError:
        raise
    except (GraphError, KeyError, TypeError, ValueError) as exc:
        raise GraphFileError(f"{directory} holds an invalid graph: {exc}") from None


__all__ = ["JSON_NAME", "TENSORS_NAME", "atomic_write_bytes", "load_graph", "save_graph"]
