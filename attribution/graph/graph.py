"""The attribution ``Graph``: a node table plus a sparse adjacency of direct effects.

Conventions (circuit-tracer's):
1. ``adjacency`` is a ``scipy.sparse.csr_matrix`` A with ``A[target, source]`` = the
   direct effect of ``source`` on ``target``: rows are targets, columns sources.
   Memory grows with the edges kept, never with N².
2. Every edge goes strictly upward in ``layer`` (tokens -1 < dictionary layers <
   logits ``n_layers``), so the graph is a DAG by construction and the canonical
   node order is a topological order. Validation enforces this.
3. ``dropped_mass[t]`` is the |weight| of target t's edges dropped when the rows
   were sparsified (see ``sparsify``); ``subgraph`` keeps it as it was.
4. ``logit_weights`` are the weights (probabilities) of the logit nodes, in the
   table's logit order; they are non-negative and sum to at most 1.
5. ``metadata`` is a JSON-compatible dict (normalised through a JSON round trip so
   saving and loading are exact); it must hold ``n_layers`` and gets ``schema`` and
   ``version``. Suggested keys: model, dictionaries, prompt, tokens, method, ablation.

Construction validates everything; ``Graph.from_keys`` sorts nodes into canonical
order first, for builders that produce nodes in another order. A graph is immutable by
convention: the adjacency may share the caller's arrays, so do not modify them (or
``nodes``) afterwards; derive new graphs with ``subgraph`` or ``dataclasses.replace``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from attribution.graph.errors import GraphValidationError, NodeKeyError
from attribution.graph.keys import NODE_TYPES, NodeKey, as_key
from attribution.graph.nodes import canonical_order, check_node_table, make_node_table

GRAPH_SCHEMA = "mlx-circuits.graph"
"""Schema name written into metadata, ``graph.json`` and ``graph.safetensors``."""
GRAPH_VERSION = 1
"""Version of the on-disk and in-memory graph schema this code writes and reads."""


def _normalize_metadata(metadata: dict) -> dict:
    if not isinstance(metadata, dict):
        raise GraphValidationError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:  # the JSON round trip makes save/load exact (tuples become lists, etc.)
        md = json.loads(json.dumps(metadata, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise GraphValidationError(f"metadata must be JSON-serialisable with finite floats: {exc}") from None
    n_layers = md.get("n_layers")
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 0:
        raise GraphValidationError(f"metadata['n_layers'] must be an int >= 0, got {n_layers!r}")
    if md.setdefault("schema", GRAPH_SCHEMA) != GRAPH_SCHEMA:
        raise GraphValidationError(f"metadata schema {md['schema']!r} is not {GRAPH_SCHEMA!r}")
    if md.setdefault("version", GRAPH_VERSION) != GRAPH_VERSION:
        raise GraphValidationError(f"metadata version {md['version']!r}; this code reads {GRAPH_VERSION}")
    return md


def _check_adjacency(adj, layers: np.ndarray, keys: np.ndarray) -> sp.csr_matrix:
    n = len(layers)
    if not sp.issparse(adj):
        raise GraphValidationError(f"adjacency must be a scipy sparse matrix, got {type(adj).__name__}")
    adj = sp.csr_matrix(adj)
    if adj.shape != (n, n):
        raise GraphValidationError(f"adjacency shape {adj.shape} does not match {n} nodes")
    if adj.dtype not in (np.float32, np.float64):
        raise GraphValidationError(f"adjacency dtype must be float32 or float64, got {adj.dtype}")
    if not adj.has_canonical_format or (adj.data == 0).any():
        adj = adj.copy()  # never mutate the caller's matrix
        adj.sum_duplicates()
        adj.eliminate_zeros()
    # Rebuild through the (data, indices, indptr) constructor so index dtypes are the ones
    # scipy picks on load too: that keeps save/load bitwise exact.
    adj = sp.csr_matrix((adj.data, adj.indices, adj.indptr), shape=adj.shape)
    if not np.isfinite(adj.data).all():
        raise GraphValidationError("adjacency has non-finite weights")
    targets = np.repeat(np.arange(n), np.diff(adj.indptr))
    bad = np.flatnonzero(layers[adj.indices] >= layers[targets])
    if bad.size:
        raise GraphValidationError(
            f"{bad.size} edges do not go strictly upward in layer (first: {keys[adj.indices[bad[0]]]} -> "
            f"{keys[targets[bad[0]]]}); is the matrix transposed? A[target, source] is expected")
    return adj


def _check_vector(name: str, v, n: int) -> np.ndarray:
    v = np.array(v, dtype=np.float64).reshape(-1)  # a copy: the graph owns its arrays
    if v.shape != (n,):
        raise GraphValidationError(f"{name} must have {n} entries, got {v.shape[0]}")
    if not np.isfinite(v).all() or (v < 0).any():
        raise GraphValidationError(f"{name} must be finite and non-negative")
    return v


@dataclass(frozen=True, eq=False)
class Graph:
    """An attribution graph; see the module docstring for the conventions."""

    nodes: pd.DataFrame
    """Node table (see ``attribution.graph.nodes``), one row per node, canonical order."""
    adjacency: sp.csr_matrix
    """[N, N] sparse direct effects, ``A[target, source]``."""
    logit_weights: np.ndarray
    """[n_logits] float64 weights of the logit nodes, in table order; sum <= 1."""
    metadata: dict
    """JSON-compatible provenance; must contain ``n_layers`` (schema and version are added)."""
    dropped_mass: np.ndarray | None = None
    """[N] float64 |weight| per target dropped by sparsification (None -> zeros)."""

    def __post_init__(self) -> None:
        md = _normalize_metadata(self.metadata)
        table, keys = check_node_table(self.nodes, md["n_layers"])
        adj = _check_adjacency(self.adjacency, table["layer"].to_numpy(), table["key"].to_numpy(dtype=object))
        n_logits = int((table["type"] == "logit").sum())
        w = _check_vector("logit_weights", self.logit_weights, n_logits)
        if w.sum() > 1 + 1e-6:
            raise GraphValidationError(f"logit_weights sum to {w.sum():.6g} > 1")
        n = len(keys)
        dm = np.zeros(n) if self.dropped_mass is None else _check_vector("dropped_mass", self.dropped_mass, n)
        for name, value in (("metadata", md), ("nodes", table), ("adjacency", adj),
                            ("logit_weights", w), ("dropped_mass", dm)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_keys", tuple(keys))

    @classmethod
    def from_keys(
        cls,
        keys: Sequence[NodeKey],
        adjacency,
        activation: Sequence[float] | np.ndarray,
        logit_weights: Sequence[float] | np.ndarray,
        metadata: dict,
        *,
        token: Sequence[str] | None = None,
        logit_prob: Sequence[float] | np.ndarray | None = None,
        label: Sequence[str] | None = None,
        dropped_mass: Sequence[float] | np.ndarray | None = None,
    ) -> Graph:
        """Build a graph from nodes in any order; rows, columns and per-node arrays are
        permuted into canonical order. ``adjacency`` rows/columns follow ``keys``;
        ``logit_weights`` follows the order in which logit keys appear in ``keys``."""
        n_layers = _normalize_metadata(metadata)["n_layers"]
        table = make_node_table(keys, n_layers, activation, token, logit_prob, label)
        order = canonical_order([as_key(k) for k in keys], n_layers)
        if not sp.issparse(adjacency):
            raise GraphValidationError("adjacency must be a scipy sparse matrix")
        if adjacency.shape != (len(keys), len(keys)):
            raise GraphValidationError(f"adjacency shape {adjacency.shape} does not match {len(keys)} keys")
        adj = sp.csr_matrix(adjacency)[order][:, order]
        dm = None if dropped_mass is None else np.asarray(dropped_mass, dtype=np.float64)[order]
        return cls(table.iloc[order], adj, logit_weights, metadata, dm)

    def __repr__(self) -> str:
        counts = self.nodes["type"].value_counts().to_dict()
        parts = ", ".join(f"{t}={counts.get(t, 0)}" for t in NODE_TYPES)
        return f"Graph({parts}, edges={self.n_edges}, n_layers={self.n_layers})"

    # ---------------------------------------------------------------- lookup
    @property
    def keys(self) -> tuple[NodeKey, ...]:
        """Typed keys of all nodes, in table order."""
        return self._keys

    @cached_property
    def _positions(self) -> dict[NodeKey, int]:
        return {k: i for i, k in enumerate(self.keys)}

    @property
    def n_nodes(self) -> int:
        """Number of nodes N."""
        return len(self.keys)

    @property
    def n_edges(self) -> int:
        """Number of stored (non-zero) edges."""
        return int(self.adjacency.nnz)

    @property
    def n_layers(self) -> int:
        """Number of dictionary layers (``metadata['n_layers']``)."""
        return int(self.metadata["n_layers"])

    def __len__(self) -> int:
        return self.n_nodes

    def __contains__(self, key) -> bool:
        try:
            return as_key(key) in self._positions
        except NodeKeyError:
            return False

    def index(self, key: NodeKey | str) -> int:
        """Row of ``key`` (typed or string form) in the node table and adjacency."""
        k = as_key(key)
        try:
            return self._positions[k]
        except KeyError:
            raise NodeKeyError(f"node {k} is not in this graph") from None

    def type_mask(self, node_type: str) -> np.ndarray:
        """[N] bool mask of the nodes of one type."""
        if node_type not in NODE_TYPES:
            raise GraphValidationError(f"unknown node type {node_type!r}; one of {NODE_TYPES}")
        return (self.nodes["type"] == node_type).to_numpy()

    def nodes_of(self, node_type: str) -> list[NodeKey]:
        """Typed keys of all nodes of one type, in table order."""
        return [self.keys[i] for i in np.flatnonzero(self.type_mask(node_type))]

    def logit_weight_vector(self) -> np.ndarray:
        """[N] float64: the logit weights placed on the logit rows, 0 elsewhere."""
        w = np.zeros(self.n_nodes)
        w[self.type_mask("logit")] = self.logit_weights
        return w

    def weight(self, source: NodeKey | str, target: NodeKey | str) -> float:
        """Direct effect of ``source`` on ``target`` (0.0 when there is no edge)."""
        return float(self.adjacency[self.index(target), self.index(source)])

    # ---------------------------------------------------------------- edges
    def edge_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source_rows, target_rows, weights) of all stored edges, CSR order."""
        a = self.adjacency
        targets = np.repeat(np.arange(self.n_nodes), np.diff(a.indptr))
        return a.indices.astype(np.int64), targets, a.data

    def edges(self) -> pd.DataFrame:
        """All edges as a DataFrame with columns ``source``, ``target`` (key strings), ``weight``."""
        src, tgt, w = self.edge_arrays()
        keys = self.nodes["key"].to_numpy(dtype=object)
        return pd.DataFrame({"source": keys[src], "target": keys[tgt], "weight": w})

    def iter_edges(self) -> Iterator[tuple[NodeKey, NodeKey, float]]:
        """Yield ``(source_key, target_key, weight)`` for every stored edge."""
        src, tgt, w = self.edge_arrays()
        for s, t, x in zip(src.tolist(), tgt.tolist(), w.tolist()):
            yield self.keys[s], self.keys[t], x

    # ---------------------------------------------------------------- derived graphs
    def _keep_mask(self, keep) -> np.ndarray:
        arr = keep if isinstance(keep, np.ndarray) else None
        if arr is not None and arr.dtype == bool:
            if arr.shape != (self.n_nodes,):
                raise GraphValidationError(f"keep mask must have shape ({self.n_nodes},), got {arr.shape}")
            return arr
        mask = np.zeros(self.n_nodes, dtype=bool)
        mask[[self.index(k) for k in keep]] = True
        return mask

    def subgraph(self, keep: np.ndarray | Iterable[NodeKey | str]) -> Graph:
        """The induced subgraph on a [N] bool mask or an iterable of keys.

        Node order stays canonical; edges touching removed nodes are removed (not
        added to ``dropped_mass``); removed logit nodes take their weights with them."""
        mask = self._keep_mask(keep)
        idx = np.flatnonzero(mask)
        adj = self.adjacency[idx][:, idx]
        logit_keep = mask[self.type_mask("logit")]
        return Graph(self.nodes.iloc[idx], adj, self.logit_weights[logit_keep], self.metadata,
                     self.dropped_mass[idx])

    def to_networkx(self):
        """A ``networkx.DiGraph``: node ids are key strings, attributes are the table
        columns (Python types) plus ``node_key`` (typed) and ``dropped_mass``; edges run
        source -> target with a ``weight`` attribute; ``graph['metadata']`` is a copy."""
        import networkx as nx

        g = nx.DiGraph()
        g.graph["metadata"] = json.loads(json.dumps(self.metadata))
        cols = {c: self.nodes[c].tolist() for c in self.nodes.columns}
        dm = self.dropped_mass.tolist()
        for i, k in enumerate(self.keys):
            attrs = {c: cols[c][i] for c in cols if c != "key"}
            g.add_node(cols["key"][i], node_key=k, dropped_mass=dm[i], **attrs)
        src, tgt, w = self.edge_arrays()
        keys = cols["key"]
        g.add_weighted_edges_from((keys[s], keys[t], x) for s, t, x in zip(src.tolist(), tgt.tolist(), w.tolist()))
        return g

    # ---------------------------------------------------------------- comparison, files
    def equals(self, other: Graph) -> bool:
        """Exact equality: equal tables and metadata, bitwise-equal arrays (same dtypes)."""
        def same(a: np.ndarray, b: np.ndarray) -> bool:
            return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()

        if not isinstance(other, Graph):
            return False
        a, b = self.adjacency, other.adjacency
        return (self.metadata == other.metadata
                and self.nodes.equals(other.nodes) and list(self.nodes.dtypes) == list(other.nodes.dtypes)
                and a.shape == b.shape and same(a.indptr, b.indptr) and same(a.indices, b.indices)
                and same(a.data, b.data) and same(self.logit_weights, other.logit_weights)
                and same(self.dropped_mass, other.dropped_mass))

    def save(self, directory) -> None:
        """Write ``graph.json`` + ``graph.safetensors`` into ``directory`` (atomic renames)."""
        from attribution.graph.io import save_graph

        save_graph(self, directory)

    @classmethod
    def load(cls, directory) -> Graph:
        """Read a graph written by ``save``; raises ``GraphFileError``/``GraphSchemaError``."""
        from attribution.graph.io import load_graph

        return load_graph(directory)

    def to_neuronpedia(self, **kwargs) -> dict:
        """Neuronpedia attribution-graph dict; see ``neuronpedia.to_neuronpedia`` for options."""
        from attribution.graph.neuronpedia import to_neuronpedia

        return to_neuronpedia(self, **kwargs)

    def write_neuronpedia(self, path, **kwargs) -> None:
        """Write ``to_neuronpedia(**kwargs)`` as JSON to ``path`` (atomic rename)."""
        from attribution.graph.neuronpedia import write_neuronpedia

        write_neuronpedia(self, path, **kwargs)


__all__ = ["GRAPH_SCHEMA", "GRAPH_VERSION", "Graph"]
