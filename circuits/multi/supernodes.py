"""Automated supernodes: cluster features, check the clusters' stability, collapse graphs.

Algorithm (``find_supernodes``):
1. Take the feature nodes of an ``Aggregate`` (a lone ``Graph`` is aggregated alone with
   position-free keys) present in at least ``min_presence`` of the prompts.
2. Up to three cosine distances (1 − cosine similarity, in [0, 2]; a zero vector has
   similarity 0) between every pair of features:
   a. decoder: the features' decoder rows (``W_dec[feature]`` of its layer's dictionary; a
      cross-layer transcoder's write to its own layer), when dictionaries or vectors are given;
   b. attribution profile: the feature's mean incoming and outgoing edge weights to every
      aggregated node, concatenated (signed);
   c. co-activation: the feature's summed activation in each prompt (a vector over prompts).
3. Combine them as the weighted mean with ``decoder_weight``, ``profile_weight`` and
   ``coactivation_weight`` (a component with weight 0, or without data, is left out).
4. Agglomerative clustering (``scipy.cluster.hierarchy.linkage``, ``linkage`` method) cut
   at distance ``threshold``; clusters of ``min_size``+ features become supernodes, named
   ``S{n}: L{layer}#{feature}`` after the member with the largest mean |influence|,
   numbered in canonical order of their first member.
5. Stability: ``n_bootstrap`` times, resample the prompts with replacement (seeded), recompute
   the profile and co-activation distances (decoder rows do not depend on prompts), recluster
   at the same threshold; report the adjusted Rand index against the full clustering (mean and
   std) and, per supernode, its co-assignment stability: the mean over bootstraps of the
   fraction of its member pairs that stay in one cluster. Features absent from every
   resampled prompt are left out of that bootstrap's scores (they have no data there).

``collapse(graph, groups)`` sums a graph into a supernode graph: with membership matrix M
(supernode × node, 0/1; a node outside every group is its own supernode), C = M A Mᵀ in
float64. Edges inside a group land on C's diagonal (``internal``), so every supernode's
outgoing (column) and incoming (row) sums equal its members' sums exactly, up to float64
summation order. ``Supernodes.for_graph`` maps the groups onto one prompt's graph (all
positions of a member feature) and ``Supernodes.style`` hands them to ``viz.dot.to_dot``,
which draws each group as one node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from attribution.graph import Graph
from attribution.graph.keys import FeatureNode, parse_key
from circuits.multi.aggregate import Aggregate, AggregateConfig, _n_tokens, aggregate, aggregate_key
from circuits.multi.errors import MultiError

LINKAGES = ("average", "complete", "single", "weighted")
"""Linkage methods accepted (those valid on a precomputed distance matrix)."""


@dataclass(frozen=True)
class SupernodeConfig:
    """How features are clustered into supernodes."""

    threshold: float = 0.3
    """Cut height on the combined cosine distance (0 = identical, 1 = orthogonal)."""
    decoder_weight: float = 1.0
    """Weight of the decoder-direction distance (used only when decoders are given)."""
    profile_weight: float = 1.0
    """Weight of the attribution-profile distance (mean in- and out-edge weights)."""
    coactivation_weight: float = 1.0
    """Weight of the co-activation distance (activation per prompt)."""
    linkage: str = "average"
    """Agglomerative linkage: average, complete, single or weighted."""
    min_size: int = 2
    """Smallest cluster that becomes a supernode."""
    min_presence: float = 0.0
    """Cluster only features present in at least this fraction of prompts."""
    n_bootstrap: int = 20
    """Bootstrap resamples of the prompts for the stability check (0: none)."""
    seed: int = 0
    """Seed of the bootstrap resampling."""

    def __post_init__(self) -> None:
        if not (np.isfinite(self.threshold) and 0 <= self.threshold <= 2):
            raise MultiError(f"threshold is a cosine distance in [0, 2], got {self.threshold}")
        ws = (self.decoder_weight, self.profile_weight, self.coactivation_weight)
        if not all(np.isfinite(w) and w >= 0 for w in ws) or sum(ws) == 0:
            raise MultiError(f"distance weights must be >= 0 with a positive sum, got {ws}")
        if self.linkage not in LINKAGES:
            raise MultiError(f"unknown linkage {self.linkage!r}; use one of {LINKAGES}")
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, int) or self.min_size < 2:
            raise MultiError(f"min_size must be an int >= 2, got {self.min_size!r}")
        if not 0 <= self.min_presence <= 1:
            raise MultiError(f"min_presence is a fraction in [0, 1], got {self.min_presence}")
        if isinstance(self.n_bootstrap, bool) or not isinstance(self.n_bootstrap, int) or self.n_bootstrap < 0:
            raise MultiError(f"n_bootstrap must be an int >= 0, got {self.n_bootstrap!r}")


@dataclass(frozen=True)
class Supernodes:
    """Result of ``find_supernodes``."""

    groups: Mapping[str, tuple[str, ...]]
    """Supernode name -> member keys (aggregated key strings, canonical order)."""
    labels: pd.DataFrame
    """One row per clustered feature: ``key``, ``cluster`` (1-based, canonical), ``supernode`` ("" alone)."""
    stability: pd.DataFrame
    """One row per supernode: ``supernode``, ``size``, ``coassignment`` (mean over bootstraps; NaN without)."""
    ari_mean: float
    """Mean adjusted Rand index of the bootstrap clusterings against the full one (NaN without)."""
    ari_std: float
    """Its standard deviation over bootstraps."""
    components: tuple[str, ...]
    """Distances used: a subset of decoder, profile, coactivation."""
    config: SupernodeConfig = field(default_factory=SupernodeConfig)
    """Settings used."""
    aggregate_config: AggregateConfig = field(default_factory=AggregateConfig)
    """Key mapping of the aggregate the groups were found on (for ``for_graph``)."""
    max_length: int = 0
    """Longest prompt of that aggregate (right alignment for ``from_end`` keys)."""

    @property
    def description(self) -> str:
        """Text shown in a figure legend."""
        return f"automatic: agglomerative ({self.config.linkage}) on {'+'.join(self.components)} distance " \
               f"<= {self.config.threshold:.2f}"

    def for_graph(self, graph: Graph) -> dict[str, tuple[str, ...]]:
        """The groups as key strings of one prompt's ``graph``: every node whose aggregated key
        is a member (a position-free feature at all its positions)."""
        g = graph if isinstance(graph, Graph) else graph.graph
        member = {m: name for name, ms in self.groups.items() for m in ms}
        shift = max(self.max_length - _n_tokens(g), 0)
        out: dict[str, list[str]] = {}
        for k in g.nodes_of("feature"):
            name = member.get(str(aggregate_key(k, self.aggregate_config, shift)))
            if name is not None:
                out.setdefault(name, []).append(str(k))
        return {n: tuple(v) for n, v in out.items()}

    def style(self, style=None, graph: Graph | None = None):
        """A ``viz.style.CircuitStyle`` drawing these supernodes (marked automatic); with
        ``graph``, the groups are mapped onto that prompt's graph first (``for_graph``)."""
        from viz.style import CircuitStyle

        groups = self.for_graph(graph) if graph is not None else dict(self.groups)
        return replace(style or CircuitStyle(), supernodes=groups, supernodes_auto=self.description)


# ---------------------------------------------------------------------- distances (step 2)
def _cosine_distance(mat) -> np.ndarray:
    """[F, F] 1 − cosine similarity of the rows of a dense or sparse matrix (zero rows: similarity 0)."""
    if sp.issparse(mat):
        mat = sp.csr_matrix(mat, dtype=np.float64)
        norms = np.sqrt(np.asarray(mat.multiply(mat).sum(axis=1)).ravel())
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        unit = sp.diags(inv) @ mat
        sim = np.asarray((unit @ unit.T).todense())
    else:
        mat = np.asarray(mat, dtype=np.float64)
        norms = np.linalg.norm(mat, axis=1)
        unit = np.divide(mat, norms[:, None], out=np.zeros_like(mat), where=norms[:, None] > 0)
        sim = unit @ unit.T
    d = 1.0 - np.clip(sim, -1.0, 1.0)
    np.fill_diagonal(d, 0.0)
    return d


def _profile_matrix(agg: Aggregate, rows: np.ndarray) -> sp.csr_matrix:
    """[F, 2N] mean incoming (row of A) and outgoing (column of A) edge weights (step 2b)."""
    n = agg.n_nodes
    mean = agg.edge_weight.mean(axis=1) if agg.n_prompts else np.zeros(agg.n_edges)
    a = sp.csr_matrix((mean, (agg.edge_index[:, 1], agg.edge_index[:, 0])), shape=(n, n))
    return sp.hstack([a[rows], sp.csr_matrix(a.T)[rows]], format="csr")


def decoder_vectors(dictionaries, keys: Sequence) -> np.ndarray:
    """[F, d] decoder rows of feature ``keys`` (typed or strings) from per-layer dictionaries
    (``W_dec`` [width, d_out], matched by ``out_site.layer``) or one cross-layer transcoder
    (``decoder(i)`` [width, n_layers − i, d_out]; the write to its own layer i is used)."""
    keys = [parse_key(k) for k in keys]
    if isinstance(dictionaries, (list, tuple)) and len(dictionaries) == 1 and hasattr(dictionaries[0], "in_sites"):
        dictionaries = dictionaries[0]  # build_graph takes a CLT alone or in a list
    if any(not isinstance(k, FeatureNode) for k in keys):
        raise MultiError("decoder vectors exist for feature nodes only; pass feature keys")
    if hasattr(dictionaries, "decoder") and hasattr(dictionaries, "in_sites"):  # CrossLayerDictionary
        cache = {}
        rows = []
        for k in keys:
            if k.layer not in cache:
                cache[k.layer] = np.asarray(dictionaries.decoder(k.layer)[:, 0, :], dtype=np.float64)
            rows.append(cache[k.layer][k.feature])
        return np.stack(rows) if rows else np.zeros((0, 1))
    by_layer = {}
    for d in (dictionaries.values() if isinstance(dictionaries, Mapping) else dictionaries):
        site = getattr(d, "out_site", None)
        if site is None:
            raise MultiError("a dictionary has no out_site layer; pass decoder vectors as a mapping key -> vector")
        by_layer[site.layer] = d
    cache = {}
    rows = []
    for k in keys:
        if k.layer not in by_layer:
            raise MultiError(f"no dictionary writes layer {k.layer} (have {sorted(by_layer)}); pass the graph's "
                             "dictionaries")
        if k.layer not in cache:
            cache[k.layer] = np.asarray(by_layer[k.layer].W_dec, dtype=np.float64)
        if k.feature >= cache[k.layer].shape[0]:
            raise MultiError(f"feature {k} is beyond the layer-{k.layer} dictionary's width "
                             f"{cache[k.layer].shape[0]}; pass the dictionaries the graphs were built with")
        rows.append(cache[k.layer][k.feature])
    return np.stack(rows) if rows else np.zeros((0, 1))


def _decoder_matrix(decoders, keys: list[str]) -> np.ndarray | None:
    if decoders is None:
        return None
    if isinstance(decoders, Mapping) and decoders and all(isinstance(k, (str, tuple)) for k in decoders) \
            and not hasattr(next(iter(decoders.values())), "W_dec"):
        vecs = {str(parse_key(k)): np.asarray(v, dtype=np.float64).ravel() for k, v in decoders.items()}
        missing = [k for k in keys if k not in vecs]
        if missing:
            raise MultiError(f"no decoder vector for {len(missing)} features (first {missing[0]}); give one per "
                             "clustered feature or pass the dictionaries")
        dims = {vecs[k].shape[0] for k in keys}
        if len(dims) > 1:
            raise MultiError(f"decoder vectors have different lengths {sorted(dims)}; give one width")
        return np.stack([vecs[k] for k in keys]) if keys else np.zeros((0, 1))
    return decoder_vectors(decoders, keys)


def _distance(agg: Aggregate, rows: np.ndarray, dec_d: np.ndarray | None, cfg: SupernodeConfig):
    """Combined distance (step 3) and the names of the components used."""
    parts, used = [], []
    if dec_d is not None and cfg.decoder_weight > 0:
        parts.append((cfg.decoder_weight, dec_d))
        used.append("decoder")
    if cfg.profile_weight > 0 and agg.n_edges:
        parts.append((cfg.profile_weight, _cosine_distance(_profile_matrix(agg, rows))))
        used.append("profile")
    if cfg.coactivation_weight > 0:
        parts.append((cfg.coactivation_weight, _cosine_distance(agg.node_activation[rows])))
        used.append("coactivation")
    if not parts:
        raise MultiError("no distance component is available (no decoders, no edges, co-activation weight 0); "
                         "pass decoders or raise a weight")
    total = sum(w for w, _ in parts)
    return sum(w * d for w, d in parts) / total, tuple(used)


def _cluster(dist: np.ndarray, cfg: SupernodeConfig) -> np.ndarray:
    """[F] cluster ids 1.. in order of each cluster's first member (step 4)."""
    f = dist.shape[0]
    if f == 0:
        return np.zeros(0, dtype=np.int64)
    if f == 1:
        return np.ones(1, dtype=np.int64)
    sym = (dist + dist.T) / 2  # exact symmetry for squareform; float noise would trip its check
    np.fill_diagonal(sym, 0.0)
    z = linkage(squareform(np.maximum(sym, 0.0), checks=False), method=cfg.linkage)
    raw = fcluster(z, t=cfg.threshold, criterion="distance")
    _, first = np.unique(raw, return_index=True)
    order = {c: i + 1 for i, c in enumerate(raw[np.sort(first)])}
    return np.array([order[c] for c in raw], dtype=np.int64)


def adjusted_rand_index(a: Sequence[int], b: Sequence[int]) -> float:
    """Hubert–Arabie adjusted Rand index of two labelings of the same items; 1.0 when both
    put every item alone or all together (the index is undefined there and they agree)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise MultiError(f"labelings have different lengths {a.shape} and {b.shape}")
    n = a.size
    if n < 2:
        return 1.0
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = sp.coo_matrix((np.ones(n), (ai, bi))).toarray()

    def comb2(x):
        return (x * (x - 1) / 2).sum()

    index = comb2(table)
    ra, rb = comb2(table.sum(axis=1)), comb2(table.sum(axis=0))
    expected = ra * rb / (n * (n - 1) / 2)
    top = (ra + rb) / 2
    if top == expected:
        return 1.0 if index == top else 0.0
    return float((index - expected) / (top - expected))


def find_supernodes(source, config: SupernodeConfig | None = None, decoders=None) -> Supernodes:
    """Cluster the features of an ``Aggregate`` (or a lone ``Graph``) into supernodes (module
    docstring). ``decoders``: the dictionaries the graphs were built with, or a mapping
    aggregated feature key -> decoder vector, or None to leave that distance out."""
    cfg = config or SupernodeConfig()
    agg = source if isinstance(source, Aggregate) else aggregate([source])
    # step 1
    is_feat = np.array([isinstance(k, FeatureNode) for k in agg.keys], dtype=bool)
    presence = agg.node_present.mean(axis=1) if agg.n_prompts else np.zeros(agg.n_nodes)
    rows = np.flatnonzero(is_feat & (presence >= cfg.min_presence - 1e-12))
    keys = [str(agg.keys[i]) for i in rows]
    dec = _decoder_matrix(decoders, keys)
    dec_d = _cosine_distance(dec) if dec is not None else None
    # steps 2-4
    dist, used = _distance(agg, rows, dec_d, cfg)
    labels = _cluster(dist, cfg)
    infl = np.abs(agg.node_influence[rows]).mean(axis=1) if agg.n_prompts else np.zeros(rows.size)
    groups: dict[str, tuple[str, ...]] = {}
    name_of = np.array([""] * rows.size, dtype=object)
    members_of: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if idx.size < cfg.min_size:
            continue
        top = idx[np.argmax(infl[idx])]  # argmax keeps the first on ties: canonical order
        k = agg.keys[rows[top]]
        name = f"S{len(groups) + 1}: L{k.layer}#{k.feature}"
        groups[name] = tuple(keys[i] for i in idx)
        name_of[idx] = name
        members_of.append(idx)
    # step 5
    rng = np.random.default_rng(cfg.seed)
    aris, co = [], [[] for _ in members_of]
    for _ in range(cfg.n_bootstrap if agg.n_prompts else 0):
        sample = rng.integers(0, agg.n_prompts, size=agg.n_prompts)
        agg_b = agg.resample(sample)
        # a feature absent from every resampled prompt has no profile or co-activation there:
        # it says nothing about the clustering, so it is left out of this bootstrap's scores
        seen = agg_b.node_present[rows].any(axis=1)
        d_b, _ = _distance(agg_b, rows, dec_d, cfg)
        lab_b = _cluster(d_b, cfg)
        aris.append(adjusted_rand_index(labels[seen], lab_b[seen]))
        for j, idx in enumerate(members_of):
            idx = idx[seen[idx]]
            m = idx.size
            if m >= 2:
                same = lab_b[idx][:, None] == lab_b[idx][None, :]
                co[j].append((same.sum() - m) / (m * (m - 1)))
    stability = pd.DataFrame({"supernode": list(groups), "size": [len(v) for v in groups.values()],
                              "coassignment": [float(np.mean(c)) if c else float("nan") for c in co]})
    table = pd.DataFrame({"key": keys, "cluster": labels, "supernode": name_of.astype(str)})
    return Supernodes(groups, table, stability, float(np.mean(aris)) if aris else float("nan"),
                      float(np.std(aris)) if aris else float("nan"), used, cfg, agg.config,
                      max(agg.metadata.get("lengths", [0]) or [0]))


# ---------------------------------------------------------------------- collapse
@dataclass(frozen=True, eq=False)
class SupernodeGraph:
    """A graph with each group summed into one node (``collapse``)."""

    nodes: pd.DataFrame
    """One row per collapsed node: ``id`` (supernode name or the node's key), ``type``
    (``supernode`` or the node's type), ``size``, ``layer_min``, ``layer_max``, ``activation``
    (members' sum), ``members`` (tuple of key strings)."""
    adjacency: sp.csr_matrix
    """[M, M] float64 summed weights ``C[target, source]``; the diagonal holds a group's internal edges."""
    membership: sp.csr_matrix
    """[M, N] 0/1: collapsed node × original node."""

    def index(self, node_id: str) -> int:
        """Row of a collapsed node by its ``id``."""
        hits = np.flatnonzero(self.nodes["id"].to_numpy() == node_id)
        if not hits.size:
            raise MultiError(f"no collapsed node {node_id!r}; see SupernodeGraph.nodes['id']")
        return int(hits[0])

    def weight(self, source: str, target: str) -> float:
        """Summed weight from ``source`` to ``target`` (ids)."""
        return float(self.adjacency[self.index(target), self.index(source)])

    def edges(self) -> pd.DataFrame:
        """``source``, ``target`` (ids), ``weight``, ``internal`` (source == target) of every non-zero entry."""
        c = self.adjacency.tocoo()
        ids = self.nodes["id"].to_numpy(dtype=object)
        return pd.DataFrame({"source": ids[c.col], "target": ids[c.row], "weight": c.data, "internal": c.row == c.col})


def collapse(graph, groups: Mapping[str, Sequence]) -> SupernodeGraph:
    """Sum ``graph`` (a ``Graph``, circuit or ``Aggregate``'s mean graph) into supernodes
    ``groups`` (name -> member keys; members missing from the graph are skipped, a node in
    two groups is an error); see the module docstring."""
    if isinstance(graph, Aggregate):
        graph = graph.to_graph()
    g = graph if isinstance(graph, Graph) else getattr(graph, "graph", None)
    if not isinstance(g, Graph):
        raise MultiError(f"cannot collapse a {type(graph).__name__}; pass a Graph, circuit or Aggregate")
    groups = getattr(groups, "groups", groups)
    owner: dict[int, str] = {}
    for name, members in groups.items():
        for m in members:
            key = parse_key(m)
            if key not in g:
                continue  # a pruned circuit may have lost members
            i = g.index(key)
            if owner.get(i, name) != name:
                raise MultiError(f"node {key} is in two groups, {owner[i]!r} and {name!r}; make the groups disjoint")
            owner[i] = name
    t = g.nodes
    ids: list[str] = []
    row_of: dict[str, int] = {}
    col = np.empty(g.n_nodes, dtype=np.int64)
    for i, key in enumerate(t["key"].tolist()):
        ident = owner.get(i, key)
        if ident not in row_of:
            row_of[ident] = len(ids)
            ids.append(ident)
        col[i] = row_of[ident]
    m = len(ids)
    member = sp.csr_matrix((np.ones(g.n_nodes), (col, np.arange(g.n_nodes))), shape=(m, g.n_nodes))
    a = sp.csr_matrix(g.adjacency, dtype=np.float64)
    c = sp.csr_matrix(member @ a @ member.T)
    c.sum_duplicates()
    layers, acts, types = t["layer"].to_numpy(), t["activation"].to_numpy(), t["type"].tolist()
    rows = []
    for j, ident in enumerate(ids):
        idx = np.flatnonzero(col == j)
        rows.append({"id": ident, "type": "supernode" if ident in groups else types[idx[0]], "size": int(idx.size),
                     "layer_min": int(layers[idx].min()), "layer_max": int(layers[idx].max()),
                     "activation": float(acts[idx].sum()), "members": tuple(t["key"].iat[i] for i in idx)})
    return SupernodeGraph(pd.DataFrame(rows), c, member)


__all__ = ["LINKAGES", "SupernodeConfig", "SupernodeGraph", "Supernodes", "adjusted_rand_index", "collapse",
           "decoder_vectors", "find_supernodes"]
