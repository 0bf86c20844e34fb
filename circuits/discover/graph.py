"""The component graph: nodes, edges and the index arrays the masking core gathers with.

Nodes: ``"embed"`` (the token embedding), every attention head and every MLP
(``circuits.organisms.patching.Component``) and ``"logits"``. Edges: every
upstream -> downstream pair that communicates through the residual stream:
embed and the components of earlier layers into each head; those plus the
heads of the same layer into each MLP; everything into the logits.

A downstream head's input is one port (``qkv="joint"``: the head reads one
residual stream for its query, key and value) or three (``qkv="separate"``:
ports q, k, v, each with its own mask, like ACDC / auto-circuit).

Node names (``parse_node``): the canonical forms are ``L1H2`` (head), ``L0.mlp``,
``embed`` and ``logits``; ``L1.H2`` / ``L0.MLP`` (the figures' spelling), any
letter case, and ``emb``/``embedding`` for the token embedding are read too.

Algorithm (``ComponentGraph``):
  1. Upstream order (the "stack" the core builds while running): embed, then
     per layer its heads (0..H-1) then its MLP. So the upstreams of layer l's
     heads are the first 1 + l(H+1) stack entries, of its MLP the first
     1 + l(H+1) + H, of the logits all of them.
  2. Edges are numbered downstream by downstream in forward order (layer,
     then port, then head; MLP; finally logits), upstream in stack order.
  3. ``head_index[l]`` [U_l, P*H], ``mlp_index[l]`` [U_l+H], ``logit_index``
     [U] hold edge numbers, so ``mask[head_index[l]]`` is the mask slice a
     layer needs (a gather, hence differentiable in the mask).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from circuits.errors import DiscoveryError
from circuits.organisms.patching import Component

Node = Component | str
"""A graph node: a ``Component`` (head or MLP), ``"embed"`` or ``"logits"``."""

EMBED, LOGITS = "embed", "logits"
QKV_MODES = ("joint", "separate")
EMBED_ALIASES = ("embed", "emb", "embedding", "embeddings")
"""Spellings of the token-embedding node (any letter case)."""
_HEAD = re.compile(r"l(\d+)\.?h(\d+)", re.IGNORECASE)
_MLP = re.compile(r"l(\d+)\.?mlp", re.IGNORECASE)


def node_name(node: Node) -> str:
    """``L1H2``, ``L0.mlp``, ``embed`` or ``logits``."""
    return str(node)


def display_name(node: Node | str) -> str:
    """The figures' spelling of a node: ``L1.H2``, ``L0.MLP``, ``embed``, ``logits``."""
    node = parse_node(node) if isinstance(node, str) else node
    if isinstance(node, Component):
        return f"L{node.layer}.H{node.head}" if node.kind == "head" else f"L{node.layer}.MLP"
    return str(node)


def parse_node(text: str) -> Node:
    """Inverse of ``node_name``; also reads ``L1.H2``, ``L0.MLP``, ``EMB``/``embedding``
    and any letter case (module docstring). Raises ``DiscoveryError`` on anything else."""
    if isinstance(text, Component):
        return text
    if not isinstance(text, str):
        raise DiscoveryError(f"a component name is a string such as L0.H2, L1.MLP or EMB; "
                             f"got {type(text).__name__} {text!r}")
    key = text.strip()
    low = key.lower()
    if low in EMBED_ALIASES:
        return EMBED
    if low == LOGITS:
        return LOGITS
    m = _HEAD.fullmatch(key)
    if m:
        return Component(int(m[1]), "head", int(m[2]))
    m = _MLP.fullmatch(key)
    if m:
        return Component(int(m[1]), "mlp")
    raise DiscoveryError(f"cannot read component name {text!r}; write L<layer>.H<head> (or "
                         "L<layer>H<head>), L<layer>.MLP, EMB or logits")


@dataclass(frozen=True)
class Edge:
    """One upstream -> downstream edge (``port`` q/k/v for a separate-port head input)."""

    upstream: Node
    """Writer: embed, a head or an MLP."""
    downstream: Node
    """Reader: a head, an MLP or the logits."""
    port: Literal["q", "k", "v"] | None = None
    """Which head input, when head inputs are split per q/k/v; None otherwise."""

    def __str__(self) -> str:
        tail = f".{self.port}" if self.port else ""
        return f"{self.upstream}->{self.downstream}{tail}"


class ComponentGraph:
    """Nodes, edges and gather indices of one model shape (see module docstring)."""

    def __init__(self, n_layers: int, n_heads: int, qkv: str = "joint") -> None:
        if qkv not in QKV_MODES:
            raise DiscoveryError(f"qkv must be one of {QKV_MODES}, got {qkv!r}")
        self.n_layers, self.n_heads, self.qkv = n_layers, n_heads, qkv
        self.ports: tuple = ("q", "k", "v") if qkv == "separate" else (None,)
        self.upstream: list[Node] = [EMBED]
        for layer in range(n_layers):
            self.upstream += [Component(layer, "head", h) for h in range(n_heads)]
            self.upstream.append(Component(layer, "mlp"))
        self.edges: list[Edge] = []
        self.head_index: list[np.ndarray] = []
        self.mlp_index: list[np.ndarray] = []
        for layer in range(n_layers):
            u = self.n_upstream_of_heads(layer)
            cols = []
            for port in self.ports:
                for h in range(n_heads):
                    cols.append(self._add(self.upstream[:u], Component(layer, "head", h), port))
            self.head_index.append(np.stack(cols, axis=1))
            self.mlp_index.append(self._add(self.upstream[:u + n_heads], Component(layer, "mlp")))
        self.logit_index = self._add(self.upstream, LOGITS)
        self.edge_upstream = np.array([self.upstream_pos[e.upstream] for e in self.edges])
        """[n_edges] stack position of each edge's upstream node."""

    def _add(self, ups: list, down: Node, port=None) -> np.ndarray:
        start = len(self.edges)
        self.edges += [Edge(u, down, port) for u in ups]
        return np.arange(start, len(self.edges), dtype=np.int32)

    def n_upstream_of_heads(self, layer: int) -> int:
        """Stack entries before layer ``layer``'s heads: embed + l * (H + 1)."""
        return 1 + layer * (self.n_heads + 1)

    @property
    def n_edges(self) -> int:
        """Number of edges."""
        return len(self.edges)

    @property
    def n_nodes(self) -> int:
        """Number of upstream (maskable) nodes: embed, heads, MLPs."""
        return len(self.upstream)

    @cached_property
    def upstream_pos(self) -> dict:
        """Node -> its stack position."""
        return {n: i for i, n in enumerate(self.upstream)}

    @cached_property
    def edge_pos(self) -> dict:
        """Edge (or its string) -> edge number."""
        out: dict = {}
        for i, e in enumerate(self.edges):
            out[e] = i
            out[str(e)] = i
        return out

    def edge_id(self, edge: Edge | str) -> int:
        """Edge number of an ``Edge`` or its string (``L0H1->L1H2`` / ``...->L1H2.q``; node
        names in any spelling of ``parse_node``)."""
        if edge in self.edge_pos:
            return self.edge_pos[edge]
        if isinstance(edge, str) and "->" in edge:
            up, _, down = (t.strip() for t in edge.partition("->"))
            port = None
            if down[-2:] in (".q", ".k", ".v"):
                down, port = down[:-2], down[-1]
            try:
                key = Edge(parse_node(up), parse_node(down), port)
            except DiscoveryError:
                key = None
            if key in self.edge_pos:
                return self.edge_pos[key]
        raise DiscoveryError(f"no edge {edge} in this graph (qkv={self.qkv!r}); edges look "
                             f"like {self.edges[0]} ... {self.edges[-1]}")

    def valid_names(self, limit: int = 64) -> str:
        """The maskable node names, in the figures' spelling, for error messages: all of
        them up to ``limit``, else the patterns with this graph's ranges."""
        names = [display_name(u) for u in self.upstream]
        if len(names) <= limit:
            return ", ".join(names)
        return (f"embed, L<l>.H<h> and L<l>.MLP with l < {self.n_layers} and "
                f"h < {self.n_heads} ({len(names)} names)")

    def node_id(self, node: Node | str) -> int:
        """Stack position of an upstream node (or its name, any spelling of ``parse_node``)."""
        try:
            key = parse_node(node) if isinstance(node, str) else node
        except DiscoveryError:
            key = None
        if key not in self.upstream_pos:
            raise DiscoveryError(f"unknown component {node!r} for this {self.n_layers}-layer, "
                                 f"{self.n_heads}-head model; valid names: {self.valid_names()}")
        return self.upstream_pos[key]

    def nodes_mask(self, nodes) -> np.ndarray:
        """A {0,1} float32 [n_nodes] node mask with ones on ``nodes`` (names or nodes)."""
        m = np.zeros(self.n_nodes, dtype=np.float32)
        for n in nodes:
            m[self.node_id(n)] = 1.0
        return m

    def edges_to_mask(self, edges) -> np.ndarray:
        """A {0,1} float32 [n_edges] mask with ones on ``edges``."""
        m = np.zeros(self.n_edges, dtype=np.float32)
        for e in edges:
            m[self.edge_id(e)] = 1.0
        return m

    def nodes_to_edge_mask(self, node_mask) -> np.ndarray:
        """Edge mask from an [n_nodes] node mask: each edge takes its upstream's value."""
        return np.asarray(node_mask, dtype=np.float32)[self.edge_upstream]

    def induced_edges(self, nodes) -> np.ndarray:
        """[n_edges] bool: edges whose upstream is in ``nodes`` + embed and downstream in
        ``nodes`` + logits (the edges of a node circuit; embed and logits always belong)."""
        keep = {parse_node(n) if isinstance(n, str) else n for n in nodes} | {EMBED, LOGITS}
        return np.array([e.upstream in keep and e.downstream in keep for e in self.edges])
