"""The node set of an exact attribution graph, in a fixed index order.

Order: token nodes (one per position), active feature nodes (by layer,
position, feature), error nodes (by layer, position), logit nodes. For each
feature the write vector is activation × decoder row (a CLT feature writes to
every target layer j >= its source layer); an error node writes its error
vector; a token node writes resid_pre[0] at its position.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from attribution.graph.keys import ErrorNode, FeatureNode, TokenNode


@dataclass(frozen=True, eq=False)
class LayerFeatures:
    """Active features of one unit layer."""

    layer: int
    pos: np.ndarray
    """[F_l] int64 positions."""
    feature: np.ndarray
    """[F_l] int64 latent indices."""
    act: np.ndarray
    """[F_l] float32 activations."""
    offset: int
    """Global index of the first one."""


@dataclass(frozen=True, eq=False)
class NodeSet:
    """All nodes of one graph with their global indices (see module docstring)."""

    n_tokens: int
    features: dict
    """layer -> LayerFeatures."""
    layers: list
    """Unit layers, ascending."""
    n_logits: int

    @property
    def n_features(self) -> int:
        return sum(len(f.pos) for f in self.features.values())

    @property
    def error_offset(self) -> int:
        return self.n_tokens + self.n_features

    @property
    def logit_offset(self) -> int:
        return self.error_offset + len(self.layers) * self.n_tokens

    @property
    def n_nodes(self) -> int:
        return self.logit_offset + self.n_logits

    def error_index(self, layer: int, pos: int) -> int:
        return self.error_offset + self.layers.index(layer) * self.n_tokens + pos

    def layer_of(self, n_layers: int) -> np.ndarray:
        """[N] graph layer of each node (tokens −1, logits n_layers)."""
        out = np.empty(self.n_nodes, dtype=np.int64)
        out[: self.n_tokens] = -1
        for f in self.features.values():
            out[f.offset: f.offset + len(f.pos)] = f.layer
        for k, l in enumerate(self.layers):
            s = self.error_offset + k * self.n_tokens
            out[s: s + self.n_tokens] = l
        out[self.logit_offset:] = n_layers
        return out

    def source_keys(self, tokens: list) -> list:
        """Keys of tokens, features and errors, in index order."""
        keys: list = [TokenNode(p, int(t)) for p, t in enumerate(tokens)]
        for f in self.features.values():
            keys += [FeatureNode(f.layer, int(p), int(a)) for p, a in zip(f.pos, f.feature)]
        keys += [ErrorNode(l, p) for l in self.layers for p in range(self.n_tokens)]
        return keys


def make_node_set(state, layers: list, threshold: float, n_logits: int) -> NodeSet:
    """Active features (|activation| > threshold) of a clean state."""
    t = int(state.tokens.shape[1])
    feats, off = {}, t
    for l in layers:
        a = np.asarray(state.acts[l], dtype=np.float32)
        pos, feat = np.nonzero(np.abs(a) > threshold)
        feats[l] = LayerFeatures(l, pos.astype(np.int64), feat.astype(np.int64), a[pos, feat], off)
        off += len(pos)
    return NodeSet(t, feats, list(layers), n_logits)


def flat_take(x: mx.array, pos: np.ndarray, feat: np.ndarray, width: int) -> mx.array:
    """x[:, pos, feat] for x [B,T,m] -> [B,F]."""
    b = x.shape[0]
    idx = mx.array((pos * width + feat).astype(np.int32))
    return mx.take(x.reshape(b, -1), idx, axis=1)


__all__ = ["LayerFeatures", "NodeSet", "flat_take", "make_node_set"]
