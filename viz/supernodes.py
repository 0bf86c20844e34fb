"""Supernodes: groups of features drawn as one node, by hand or automatically.

``resolve_groups`` (hand-made groups, ``CircuitStyle.supernodes``):
1. Map every member key (typed or string) to its row in the graph; members that are
   not in the graph are skipped, a node in two groups is an error.
2. Return node row -> group name; ``dot.to_dot`` then draws each group as one node
   and sums the signed weights of all edges between the same pair of drawn nodes
   (edges inside a group disappear).

``auto_supernodes`` (automatic grouping, after circuit-tracer's missing feature):
1. Take one vector per feature node: decoder vectors (``vectors``) or activation
   patterns over a set of samples (``coactivation``); features without one stay alone.
2. Cosine similarity between all pairs (zero vectors have similarity 0).
3. Link pairs with similarity >= ``threshold`` and take connected components
   (single linkage) in canonical node order; keep components of 2+ features.
4. Name each group ``auto N: <label>`` after its most active member, and record the
   method and threshold so the figure labels the grouping as automatic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from attribution.graph import Graph, as_key
from viz.errors import VizError
from viz.style import CircuitStyle, shorten


def resolve_groups(graph: Graph, groups: Mapping[str, Sequence[str]]) -> dict[int, str]:
    """Node row -> group name for the members present in ``graph`` (step 1-2)."""
    out: dict[int, str] = {}
    for name, members in groups.items():
        for m in members:
            key = as_key(m)
            if key not in graph:
                continue  # a pruned circuit may have lost some members
            i = graph.index(key)
            if i in out and out[i] != name:
                raise VizError(f"node {key} is in two supernodes: {out[i]!r} and {name!r}")
            out[i] = name
    return out


@dataclass(frozen=True)
class AutoSupernodes:
    """Result of ``auto_supernodes``."""

    groups: Mapping[str, tuple[str, ...]]
    """Group name -> member key strings (canonical order), groups of 2+ features."""
    method: str
    """``decoder cosine`` or ``co-activation cosine``."""
    threshold: float
    """Similarity threshold used."""

    @property
    def description(self) -> str:
        """Text shown in the figure legend."""
        return f"automatic: {self.method} >= {self.threshold:.2f}"

    def apply(self, style: CircuitStyle | None = None) -> CircuitStyle:
        """``style`` (default ``CircuitStyle()``) with these groups as supernodes, marked automatic."""
        return replace(style or CircuitStyle(), supernodes=dict(self.groups), supernodes_auto=self.description)


def _feature_matrix(graph: Graph, data, name: str) -> tuple[list[int], np.ndarray]:
    """Rows of the feature nodes that have a vector, and the [n, d] matrix (step 1)."""
    feats = np.flatnonzero(graph.type_mask("feature")).tolist()
    if isinstance(data, Mapping):
        vecs = {graph.index(as_key(k)): np.asarray(v, dtype=np.float64).ravel()
                for k, v in data.items() if as_key(k) in graph}
        rows = [i for i in feats if i in vecs]
        if not rows:
            return [], np.zeros((0, 1))
        dims = {vecs[i].shape[0] for i in rows}
        if len(dims) != 1:
            raise VizError(f"{name} vectors have different lengths: {sorted(dims)}")
        return rows, np.stack([vecs[i] for i in rows])
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != len(feats):
        raise VizError(f"{name} array must be [n_feature_nodes={len(feats)}, d] in graph order, "
                       f"got shape {arr.shape}")
    return feats, arr


def _components(sim: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected components of ``sim >= threshold`` (step 3), each sorted, ordered by first member."""
    n = sim.shape[0]
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in zip(*np.nonzero(np.triu(sim >= threshold, k=1))):
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return [c for _, c in sorted(comps.items()) if len(c) >= 2]


def auto_supernodes(graph: Graph, vectors=None, coactivation=None, threshold: float = 0.8) -> AutoSupernodes:
    """Group the graph's feature nodes by cosine similarity (see the module docstring).

    ``vectors``: decoder vectors, a mapping key -> [d] or an array [n_feature_nodes, d]
    in the order of ``graph.nodes_of("feature")``. ``coactivation``: activation patterns,
    same forms with [n_samples] per feature. Give exactly one."""
    if (vectors is None) == (coactivation is None):
        raise VizError("give exactly one of vectors= (decoder vectors) or coactivation= (activation patterns)")
    if not -1.0 <= threshold <= 1.0:
        raise VizError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    method = "decoder cosine" if vectors is not None else "co-activation cosine"
    rows, mat = _feature_matrix(graph, vectors if vectors is not None else coactivation, method)
    if not np.isfinite(mat).all():
        raise VizError(f"{method}: vectors must be finite")
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    unit = np.divide(mat, norms, out=np.zeros_like(mat), where=norms > 0)
    comps = _components(unit @ unit.T, threshold) if rows else []
    table = graph.nodes
    groups: dict[str, tuple[str, ...]] = {}
    for n, comp in enumerate(comps, start=1):
        members = [rows[j] for j in comp]
        top = max(members, key=lambda i: (abs(float(table["activation"].iat[i])), -i))
        label = str(table["label"].iat[top]) or f"L{table['layer'].iat[top]} #{table['feature'].iat[top]}"
        groups[f"auto {n}: {shorten(label, 20)}"] = tuple(str(table["key"].iat[i]) for i in members)
    return AutoSupernodes(groups, method, float(threshold))


__all__ = ["AutoSupernodes", "auto_supernodes", "resolve_groups"]
