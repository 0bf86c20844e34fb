"""Aggregate attribution graphs over many prompts into one graph of statistics.

Prompts differ in length and in where their tokens sit, so nodes of different prompts are
matched by an *aggregated key*, a real ``NodeKey`` with the position replaced
(``AggregateConfig.positions``):

- ``"none"`` (default, position-free): a feature is (layer, feature index), an error node
  is its layer, a token embedding is its token id, a logit is its role (below); every
  aggregated key has position 0. Members at several positions of one prompt are summed.
- ``"absolute"``: keys keep their positions; every prompt must have the same length (one
  template). Tokens that differ between prompts (the names of IOI) stay separate nodes.
- ``"from_end"``: positions are right-aligned, ``pos + (L_max − L)`` for a prompt of L
  tokens, so the last tokens of prompts of different lengths share a column; use it when
  the tokens that matter sit at a fixed distance from the end.

Logit roles (``AggregateConfig.logits``): ``"key"`` keeps a custom direction by its name
(``logit_diff``) and a vocabulary logit by its token id; ``"rank"`` names vocabulary logits
by their rank in each graph (``top0``, ``top1``, ...), for top-logit targets whose tokens
differ between prompts.

Algorithm (``aggregate``):
1. Take each prompt's graph (a ``Graph`` or a pruned circuit with ``.graph``; give pruned
   circuits for "active and kept", full graphs for "active"); require one ``n_layers``.
2. Map every node to its aggregated key (above); index the union of keys in canonical
   graph order.
3. Per prompt: a node is *present* when any member node is in the graph; its activation
   and influence on the logits (``circuits.prune.influence`` on that prompt's graph) are
   the sums over its members. An edge between two aggregated nodes is present when any
   stored edge joins their members; its weight is the sum of those edges' weights.
4. Statistics over the P prompts: ``presence`` = fraction of prompts present; ``*_mean``
   and ``*_std`` (population, ddof 0) over all P prompts with an absent node or edge
   counted as 0 (so a mean-weight graph reproduces the summed effect per prompt);
   ``*_mean_present`` over the prompts where it is present; ``weight_cv`` = std / |mean|.
5. Keep the per-prompt matrices ([nodes, P] and [edges, P]) for bootstrap statistics and
   co-activation (``circuits.multi.supernodes``); memory is 8 bytes × (nodes + edges) × P
   per matrix, so aggregate pruned circuits, not full graphs, for big models.

``Aggregate.filter(min_presence)`` keeps nodes present in at least that fraction of prompts
and the edges among them that are as present; ``to_graph`` turns the means into a
``Graph`` (mean weights as the adjacency, mean activations, the presence in the label), so
pruning, ``viz.dot.to_dot`` and ``Graph.save`` all apply; ``save``/``load`` write
``aggregate.json`` (tables) and ``aggregate.safetensors`` (per-prompt matrices), atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from attribution.graph import Graph
from attribution.graph.io import atomic_write_bytes
from attribution.graph.keys import ErrorNode, FeatureNode, LogitNode, NodeKey, TokenNode, parse_key, sort_key
from circuits.multi.errors import MultiError

POSITION_MODES = ("none", "absolute", "from_end")
"""How aggregated keys treat token positions (module docstring)."""
LOGIT_MODES = ("key", "rank")
"""How logit nodes of different prompts are matched (module docstring)."""
AGGREGATE_SCHEMA = "mlx-circuits.aggregate"
"""Schema name written into ``aggregate.json``."""
AGGREGATE_VERSION = 1
"""Version of the aggregate file format."""
JSON_NAME, TENSORS_NAME = "aggregate.json", "aggregate.safetensors"


@dataclass(frozen=True)
class AggregateConfig:
    """How graphs of several prompts are matched and summarised."""

    positions: str = "none"
    """``none`` (position-free keys), ``absolute`` (one template) or ``from_end`` (right-aligned)."""
    logits: str = "key"
    """``key`` (named direction by name, vocabulary logit by id) or ``rank`` (top0, top1, ...)."""
    influence: bool = True
    """Compute each prompt's node influence on the logits (one sparse propagation per graph)."""

    def __post_init__(self) -> None:
        if self.positions not in POSITION_MODES:
            raise MultiError(f"unknown positions mode {self.positions!r}; use one of {POSITION_MODES}")
        if self.logits not in LOGIT_MODES:
            raise MultiError(f"unknown logits mode {self.logits!r}; use one of {LOGIT_MODES}")


NODE_STAT_COLUMNS = ("presence", "n_present", "activation_mean", "activation_std", "activation_mean_present",
                     "influence_mean", "influence_std", "influence_mean_present")
EDGE_STAT_COLUMNS = ("presence", "n_present", "weight_mean", "weight_std", "weight_mean_present", "weight_cv")


@dataclass(frozen=True, eq=False)
class Aggregate:
    """Graphs of P prompts summarised per aggregated node and edge (module docstring)."""

    keys: tuple[NodeKey, ...]
    """Aggregated node keys in canonical graph order (row i of every node array)."""
    edge_index: np.ndarray
    """[E, 2] int64 (source row, target row) of every aggregated edge, sorted by (target, source)."""
    node_present: np.ndarray
    """[N, P] bool: node i present in prompt p."""
    node_activation: np.ndarray
    """[N, P] float64: summed member activation per prompt (0 where absent)."""
    node_influence: np.ndarray
    """[N, P] float64: summed member influence per prompt (0 where absent or not computed)."""
    edge_present: np.ndarray
    """[E, P] bool: edge e present in prompt p."""
    edge_weight: np.ndarray
    """[E, P] float64: summed member edge weight per prompt (0 where absent)."""
    logit_weight: np.ndarray
    """[N, P] float64: each prompt's logit weight on the logit rows (0 elsewhere)."""
    token_text: tuple[str, ...]
    """Per node: the token text of token and logit nodes (first prompt holding it), else ""."""
    config: AggregateConfig = field(default_factory=AggregateConfig)
    """How the prompts were matched."""
    metadata: dict = field(default_factory=dict)
    """``n_layers``, ``prompts`` (per-prompt metadata['prompt']), ``lengths``, ``target``."""

    # ------------------------------------------------------------------ sizes
    @property
    def n_prompts(self) -> int:
        """Number of prompts P."""
        return int(self.node_present.shape[1])

    @property
    def n_nodes(self) -> int:
        """Number of aggregated nodes N."""
        return len(self.keys)

    @property
    def n_edges(self) -> int:
        """Number of aggregated edges E."""
        return int(self.edge_index.shape[0])

    @property
    def n_layers(self) -> int:
        """Dictionary layers of the prompts' graphs."""
        return int(self.metadata["n_layers"])

    def index(self, key) -> int:
        """Row of an aggregated key (typed or string)."""
        k = parse_key(key)
        try:
            return self._positions[k]
        except KeyError:
            raise MultiError(f"node {k} is not in this aggregate; keys are aggregated ({self.config.positions!r} "
                             "positions), see Aggregate.nodes['key']") from None

    @property
    def _positions(self) -> dict:
        cache = self.__dict__.get("_pos_cache")
        if cache is None:
            cache = {k: i for i, k in enumerate(self.keys)}
            object.__setattr__(self, "_pos_cache", cache)
        return cache

    # ------------------------------------------------------------------ tables
    @property
    def nodes(self) -> pd.DataFrame:
        """One row per aggregated node: key fields, token text and the statistics of step 4."""
        act = _stats(self.node_activation, self.node_present)
        inf = _stats(self.node_influence, self.node_present)
        t = pd.DataFrame({
            "key": [str(k) for k in self.keys], "type": [k.kind for k in self.keys],
            "layer": [(-1 if isinstance(k, TokenNode) else self.n_layers if isinstance(k, LogitNode) else k.layer)
                      for k in self.keys],
            "pos": [k.pos for k in self.keys],
            "feature": [k.feature if isinstance(k, FeatureNode) else -1 for k in self.keys],
            "token_id": [k.token_id if isinstance(k, (TokenNode, LogitNode)) else -1 for k in self.keys],
            "token": list(self.token_text),
            "presence": act["presence"], "n_present": act["n_present"],
            "activation_mean": act["mean"], "activation_std": act["std"],
            "activation_mean_present": act["mean_present"],
            "influence_mean": inf["mean"], "influence_std": inf["std"], "influence_mean_present": inf["mean_present"],
        })
        return t

    @property
    def edges(self) -> pd.DataFrame:
        """One row per aggregated edge: ``source``, ``target`` (key strings) and step 4's statistics."""
        s = _stats(self.edge_weight, self.edge_present)
        names = np.array([str(k) for k in self.keys], dtype=object)
        mean = s["mean"]
        cv = np.divide(s["std"], np.abs(mean), out=np.full_like(mean, np.nan), where=mean != 0)
        return pd.DataFrame({
            "source": names[self.edge_index[:, 0]] if self.n_edges else np.array([], dtype=object),
            "target": names[self.edge_index[:, 1]] if self.n_edges else np.array([], dtype=object),
            "presence": s["presence"], "n_present": s["n_present"], "weight_mean": mean, "weight_std": s["std"],
            "weight_mean_present": s["mean_present"], "weight_cv": cv})

    def edge_cv(self) -> float:
        """Coefficient of variation of edge weights over prompts, pooled: the |mean|-weighted
        mean of std/|mean| over edges with a non-zero mean (= Σ std / Σ |mean|); NaN without edges."""
        s = _stats(self.edge_weight, self.edge_present)
        den = float(np.abs(s["mean"]).sum())
        return float(s["std"].sum() / den) if den > 0 else float("nan")

    # ------------------------------------------------------------------ derived aggregates
    def select(self, node_mask: np.ndarray, edge_mask: np.ndarray | None = None) -> Aggregate:
        """The aggregate restricted to ``node_mask`` [N] and (optionally) ``edge_mask`` [E];
        edges touching a removed node are removed."""
        node_mask = np.asarray(node_mask, dtype=bool)
        if node_mask.shape != (self.n_nodes,):
            raise MultiError(f"node mask must have shape ({self.n_nodes},), got {node_mask.shape}")
        keep_e = node_mask[self.edge_index[:, 0]] & node_mask[self.edge_index[:, 1]] if self.n_edges else \
            np.zeros(0, dtype=bool)
        if edge_mask is not None:
            keep_e &= np.asarray(edge_mask, dtype=bool)
        new_row = np.cumsum(node_mask) - 1
        idx = np.flatnonzero(node_mask)
        return Aggregate(
            tuple(self.keys[i] for i in idx), new_row[self.edge_index[keep_e]].reshape(-1, 2).astype(np.int64),
            self.node_present[idx], self.node_activation[idx], self.node_influence[idx],
            self.edge_present[keep_e], self.edge_weight[keep_e], self.logit_weight[idx],
            tuple(self.token_text[i] for i in idx), self.config, dict(self.metadata))

    def filter(self, min_presence: float = 0.5, keep_logits: bool = True) -> Aggregate:
        """Nodes present in at least ``min_presence`` of the prompts (logit nodes always, unless
        ``keep_logits=False``) and the edges among them with the same presence."""
        if not 0.0 <= float(min_presence) <= 1.0:
            raise MultiError(f"min_presence is a fraction of prompts in [0, 1], got {min_presence}")
        # count, not fraction, so 0.5 of 8 prompts means 4 exactly (no float rounding at the boundary)
        need = float(min_presence) * self.n_prompts - 1e-9
        keep = self.node_present.sum(axis=1) >= need
        if keep_logits:
            keep |= np.array([isinstance(k, LogitNode) for k in self.keys], dtype=bool)
        return self.select(keep, self.edge_present.sum(axis=1) >= need)

    def resample(self, prompts: Sequence[int]) -> Aggregate:
        """The aggregate of a multiset of its prompts (columns ``prompts``, repeats allowed),
        for bootstrap statistics; nodes and edges are kept even when absent from all."""
        p = np.asarray(prompts, dtype=np.int64)
        if p.size == 0 or p.min() < 0 or p.max() >= self.n_prompts:
            raise MultiError(f"prompt indices must be in [0, {self.n_prompts}) and non-empty")
        md = dict(self.metadata)
        return Aggregate(self.keys, self.edge_index, self.node_present[:, p], self.node_activation[:, p],
                         self.node_influence[:, p], self.edge_present[:, p], self.edge_weight[:, p],
                         self.logit_weight[:, p], self.token_text, self.config, md)

    # ------------------------------------------------------------------ conversions
    def to_graph(self, descriptions: Mapping | None = None) -> Graph:
        """A ``Graph`` of the means: adjacency = mean edge weights, activation = mean activation,
        logit weights = mean logit weights, label = ``in k/P prompts`` (after
        ``descriptions[key]`` when given); metadata records the aggregation
        (``metadata['aggregate']``)."""
        n = self.n_nodes
        s = _stats(self.edge_weight, self.edge_present)
        adj = sp.csr_matrix((s["mean"], (self.edge_index[:, 1], self.edge_index[:, 0])) if self.n_edges else
                            (np.zeros(0), (np.zeros(0, int), np.zeros(0, int))), shape=(n, n), dtype=np.float64)
        act = _stats(self.node_activation, self.node_present)
        is_logit = np.array([isinstance(k, LogitNode) for k in self.keys], dtype=bool)
        lw = self.logit_weight.mean(axis=1)[is_logit]
        md = dict(self.metadata)
        md["aggregate"] = {"n_prompts": self.n_prompts, "positions": self.config.positions,
                           "logits": self.config.logits, "statistic": "mean over prompts, absent = 0"}
        if "prompt" not in md:
            md["prompt"] = f"aggregate of {self.n_prompts} prompts"
        desc = {str(parse_key(k)): str(v) for k, v in (descriptions or {}).items()}
        labels = []
        for k, c in zip(self.keys, act["n_present"]):
            text = desc.get(str(k), "")
            if not isinstance(k, (TokenNode, LogitNode)):
                text = (text + " · " if text else "") + f"in {int(c)}/{self.n_prompts} prompts"
            labels.append(text)
        probs = np.where(is_logit, self.logit_weight.mean(axis=1), 0.0)
        return Graph.from_keys(list(self.keys), adj, act["mean"], lw, md, token=list(self.token_text),
                               logit_prob=probs, label=labels)

    def to_dot(self, style=None, supernodes=None, descriptions=None) -> str:
        """DOT text of ``to_graph()`` (``viz.dot.to_dot``); ``supernodes`` (a ``Supernodes``
        result or a mapping name -> member keys) draws each group as one node."""
        from dataclasses import replace

        from viz.dot import to_dot
        from viz.style import CircuitStyle

        style = style or CircuitStyle()
        if supernodes is not None:
            groups = getattr(supernodes, "groups", supernodes)
            note = getattr(supernodes, "description", "")
            style = replace(style, supernodes={str(k): tuple(v) for k, v in groups.items()}, supernodes_auto=note)
        if not style.title:
            how = "position-free keys" if self.config.positions == "none" else f"{self.config.positions} positions"
            style = replace(style, title=f"aggregate of {self.n_prompts} prompts ({how})")
        # the node label carries the presence, so descriptions are merged into it (a label
        # takes precedence over to_dot's descriptions)
        return to_dot(self.to_graph(descriptions), style)

    # ------------------------------------------------------------------ files
    def save(self, directory) -> None:
        """Write ``aggregate.json`` and ``aggregate.safetensors`` into ``directory`` (atomic renames)."""
        from safetensors.numpy import save as st_save

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {name: np.ascontiguousarray(getattr(self, name)) for name in _TENSOR_FIELDS}
        for name in ("node_present", "edge_present"):
            tensors[name] = tensors[name].astype(np.uint8)
        blob = st_save(tensors)
        doc = {"schema": AGGREGATE_SCHEMA, "version": AGGREGATE_VERSION,
               "config": {"positions": self.config.positions, "logits": self.config.logits,
                          "influence": self.config.influence},
               "metadata": self.metadata, "keys": [str(k) for k in self.keys], "token_text": list(self.token_text),
               "tensors_sha256": hashlib.sha256(blob).hexdigest(),
               "nodes": _records(self.nodes), "edges": _records(self.edges)}
        atomic_write_bytes(d / TENSORS_NAME, blob)
        # the JSON is written last: it names the tensors' digest, so a torn pair is detected on load
        atomic_write_bytes(d / JSON_NAME, json.dumps(doc, indent=1, sort_keys=True, allow_nan=False).encode())

    @classmethod
    def load(cls, directory) -> Aggregate:
        """Read an aggregate written by ``save``; a missing, foreign or corrupt file raises ``MultiError``."""
        from safetensors.numpy import load as st_load

        d = Path(directory)
        try:
            doc = json.loads((d / JSON_NAME).read_text())
            blob = (d / TENSORS_NAME).read_bytes()
        except (OSError, ValueError) as exc:
            raise MultiError(f"cannot read the aggregate in {d}: {exc}; write it with Aggregate.save") from None
        if (not isinstance(doc, dict) or doc.get("schema") != AGGREGATE_SCHEMA
                or doc.get("version") != AGGREGATE_VERSION):
            raise MultiError(f"{d / JSON_NAME} is not a {AGGREGATE_SCHEMA} v{AGGREGATE_VERSION} file; rewrite it")
        if hashlib.sha256(blob).hexdigest() != doc.get("tensors_sha256"):
            raise MultiError(f"{d / TENSORS_NAME} does not match {JSON_NAME} (digest differs); rewrite both with save")
        t = st_load(blob)
        return cls(tuple(parse_key(k) for k in doc["keys"]), t["edge_index"], t["node_present"].astype(bool),
                   t["node_activation"], t["node_influence"], t["edge_present"].astype(bool), t["edge_weight"],
                   t["logit_weight"], tuple(doc["token_text"]), AggregateConfig(**doc["config"]), doc["metadata"])


_TENSOR_FIELDS = ("edge_index", "node_present", "node_activation", "node_influence", "edge_present", "edge_weight",
                  "logit_weight")


def _records(df: pd.DataFrame) -> list[dict]:
    # NaN (a CV of a zero-mean edge) is not JSON: written as null
    return json.loads(df.to_json(orient="records"))


def _stats(values: np.ndarray, present: np.ndarray) -> dict[str, np.ndarray]:
    """Step 4: presence, mean/std over all prompts (absent = 0) and mean over present prompts."""
    p = values.shape[1] if values.ndim == 2 else 0
    n_present = present.sum(axis=1) if p else np.zeros(values.shape[0], dtype=np.int64)
    mean = values.mean(axis=1) if p else np.zeros(values.shape[0])
    std = values.std(axis=1) if p else np.zeros(values.shape[0])
    mean_present = np.divide(values.sum(axis=1), n_present, out=np.zeros(values.shape[0]), where=n_present > 0)
    return {"presence": n_present / max(p, 1), "n_present": n_present.astype(np.int64), "mean": mean, "std": std,
            "mean_present": mean_present}


def _as_graph(obj, i: int) -> Graph:
    g = obj if isinstance(obj, Graph) else getattr(obj, "graph", None)
    if not isinstance(g, Graph):
        raise MultiError(f"item {i} is a {type(obj).__name__}, not a Graph or a pruned circuit with .graph; "
                         "pass build_graph/prune results")
    return g


def _n_tokens(g: Graph) -> int:
    """Prompt length: ``metadata['tokens']`` when recorded, else one past the largest position."""
    toks = g.metadata.get("tokens")
    if isinstance(toks, list) and toks:
        return len(toks)
    return int(g.nodes["pos"].max()) + 1 if g.n_nodes else 0


def aggregate_key(key: NodeKey, cfg: AggregateConfig, shift: int = 0, rank: int = 0) -> NodeKey:
    """The aggregated key of one node (module docstring); ``shift`` is ``L_max − L`` for
    ``from_end``, ``rank`` the logit's rank among its graph's logits for ``logits="rank"``."""
    if cfg.positions == "none":
        pos = 0
    elif cfg.positions == "absolute":
        pos = key.pos
    else:
        pos = key.pos + shift
    if isinstance(key, FeatureNode):
        return FeatureNode(key.layer, pos, key.feature)
    if isinstance(key, ErrorNode):
        return ErrorNode(key.layer, pos)
    if isinstance(key, TokenNode):
        return TokenNode(pos, key.token_id)
    if cfg.logits == "rank" and not key.name:
        return LogitNode(pos, -1, f"top{rank}")
    return LogitNode(pos, key.token_id, key.name)


def aggregate(graphs: Sequence, config: AggregateConfig | None = None) -> Aggregate:
    """Aggregate the graphs (or pruned circuits) of several prompts; see the module docstring."""
    cfg = config or AggregateConfig()
    gs = [_as_graph(g, i) for i, g in enumerate(graphs)]
    if not gs:
        raise MultiError("no graphs to aggregate; pass one graph (or pruned circuit) per prompt")
    n_layers = {g.n_layers for g in gs}
    if len(n_layers) != 1:
        raise MultiError(f"graphs have different layer counts {sorted(n_layers)}; aggregate graphs of one model")
    n_layers = n_layers.pop()
    lengths = [_n_tokens(g) for g in gs]
    if cfg.positions == "absolute" and len(set(lengths)) > 1:
        raise MultiError(f"positions='absolute' needs prompts of one length, got lengths {sorted(set(lengths))}; "
                         "use positions='none' or 'from_end'")
    l_max = max(lengths)
    # steps 1-2: aggregated key of every node of every graph
    per_graph: list[list[NodeKey]] = []
    for g, n_tok in zip(gs, lengths):
        rank = {k: r for r, k in enumerate(g.nodes_of("logit"))}
        per_graph.append([aggregate_key(k, cfg, l_max - n_tok, rank.get(k, 0)) for k in g.keys])
    union = sorted(dict.fromkeys(k for ks in per_graph for k in ks),
                   key=lambda k: (sort_key(k, n_layers), _logit_order(k)))
    row = {k: i for i, k in enumerate(union)}
    n, p_count = len(union), len(gs)
    present = np.zeros((n, p_count), dtype=bool)
    act = np.zeros((n, p_count))
    infl = np.zeros((n, p_count))
    lw = np.zeros((n, p_count))
    text = [""] * n
    edge_maps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for p, (g, ks) in enumerate(zip(gs, per_graph)):
        rows = np.array([row[k] for k in ks], dtype=np.int64)
        # step 3: sums over the members of each aggregated node
        present[rows, p] = True
        np.add.at(act[:, p], rows, g.nodes["activation"].to_numpy(dtype=np.float64))
        if cfg.influence and g.n_edges:
            from circuits.prune import influence

            np.add.at(infl[:, p], rows, influence(g))
        np.add.at(lw[:, p], rows, g.logit_weight_vector())
        for r, k, tok in zip(rows.tolist(), g.keys, g.nodes["token"].tolist()):
            if not text[r] and isinstance(k, (TokenNode, LogitNode)) and tok:
                text[r] = str(tok)
        src, tgt, w = g.edge_arrays()
        code = rows[tgt] * n + rows[src]  # (target, source) of the aggregated edge, one int
        uniq, inv = np.unique(code, return_inverse=True)
        edge_maps.append((uniq, np.bincount(inv, weights=w.astype(np.float64), minlength=uniq.size), p))
    all_codes = np.unique(np.concatenate([m[0] for m in edge_maps])) if edge_maps else np.zeros(0, np.int64)
    e_present = np.zeros((all_codes.size, p_count), dtype=bool)
    e_weight = np.zeros((all_codes.size, p_count))
    for uniq, sums, p in edge_maps:
        at = np.searchsorted(all_codes, uniq)
        e_present[at, p] = True
        e_weight[at, p] = sums
    edge_index = np.stack([all_codes % n, all_codes // n], axis=1).astype(np.int64) if all_codes.size else \
        np.zeros((0, 2), dtype=np.int64)
    targets = {json.dumps(g.metadata.get("target"), sort_keys=True) for g in gs}
    md = {"n_layers": n_layers, "lengths": lengths,
          "prompts": [g.metadata.get("prompt", "") if isinstance(g.metadata.get("prompt", ""), str) else ""
                      for g in gs]}
    if len(targets) == 1 and gs[0].metadata.get("target") is not None:
        md["target"] = gs[0].metadata["target"]
    for k in ("model", "dictionaries_digest", "method"):
        vals = {json.dumps(g.metadata.get(k), sort_keys=True) for g in gs}
        if len(vals) == 1 and gs[0].metadata.get(k) is not None:
            md[k] = gs[0].metadata[k]
    return Aggregate(tuple(union), edge_index, present, act, infl, e_present, e_weight, lw, tuple(text), cfg,
                     json.loads(json.dumps(md, default=str)))


def _logit_order(k: NodeKey) -> tuple:
    # sort_key leaves logits in their given order; a union of several graphs needs a fixed one
    if isinstance(k, LogitNode):
        return (k.pos, len(k.name), k.name, k.token_id)  # top2 before top10
    return ()


__all__ = ["AGGREGATE_SCHEMA", "AGGREGATE_VERSION", "Aggregate", "AggregateConfig", "LOGIT_MODES", "POSITION_MODES",
           "aggregate", "aggregate_key"]
