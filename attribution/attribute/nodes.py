"""The node set of an exact attribution graph, in a fixed index order.

Order: token nodes (one per position), active feature nodes (by layer,
position, feature), error nodes (by layer, position), logit nodes. For each
feature the write vector is activation × decoder row (a CLT feature writes to
every target layer j >= its source layer); an error node writes its error
vector; a token node writes resid_pre[0] at its position.

``feature_rows`` regroups one layer's features for the batched contraction of
``exact``: a feature's edge into a target is G[pos] · (act · W_dec[feature]),
where G is the target's gradient at the write site, so only the gradient at the
feature's own position is needed. Features are cut into rows of at most K that
share one position:
  1. count the features per position; K = the 90th percentile of the non-zero
     counts rounded up to a multiple of 8 (so padding stays small while the
     rare crowded position, e.g. the first token, only adds rows);
  2. each position with c features gives ceil(c / K) rows, padded with
     feature 0, activation 0 and node index −1;
  3. rows are in ascending position, so the rows of a prompt prefix [0, P) are
     a prefix of the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

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
class FeatureRows:
    """One layer's active features in position-sharing rows (module docstring)."""

    pos: np.ndarray
    """[R] int64 position of each row, ascending."""
    feature: np.ndarray
    """[R, K] int32 latent indices (padding: 0)."""
    act: np.ndarray
    """[R, K] float32 activations (padding: 0)."""
    node: np.ndarray
    """[R, K] int64 global node index (padding: −1)."""

    def prefix(self, n_pos: int) -> int:
        """Number of rows whose position is < ``n_pos``."""
        return int(np.searchsorted(self.pos, n_pos, side="left"))


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

    @cached_property
    def pos_of(self) -> np.ndarray:
        """[N] int64 position of each node (logits: the last position)."""
        out = np.empty(self.n_nodes, dtype=np.int64)
        out[: self.n_tokens] = np.arange(self.n_tokens)
        for f in self.features.values():
            out[f.offset: f.offset + len(f.pos)] = f.pos
        out[self.error_offset: self.logit_offset] = np.tile(np.arange(self.n_tokens), len(self.layers))
        out[self.logit_offset:] = self.n_tokens - 1
        return out

    @cached_property
    def latent_of(self) -> np.ndarray:
        """[N] int64 latent index of each feature node (−1 elsewhere)."""
        out = np.full(self.n_nodes, -1, dtype=np.int64)
        for f in self.features.values():
            out[f.offset: f.offset + len(f.pos)] = f.feature
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


def feature_rows(f: LayerFeatures, n_tokens: int) -> FeatureRows:
    """``f`` regrouped into position-sharing rows (module docstring, steps 1-3)."""
    order = np.lexsort((f.feature, f.pos))  # make_node_set's order already; kept explicit
    pos, feat, act = f.pos[order], f.feature[order], f.act[order]
    node = f.offset + order
    counts = np.bincount(pos, minlength=n_tokens)
    nz = counts[counts > 0]
    if nz.size == 0:
        z = np.zeros((0, 8))
        return FeatureRows(np.zeros(0, np.int64), z.astype(np.int32), z.astype(np.float32),
                           z.astype(np.int64))
    k = max(8, int(-(-np.percentile(nz, 90) // 8) * 8))
    rows_per_pos = -(-counts // k)
    n_rows = int(rows_per_pos.sum())
    row_pos = np.repeat(np.arange(n_tokens), rows_per_pos)
    # Slot of each feature: its rank within its position, split into rows of k.
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(pos)) - first[pos]
    row_first = np.concatenate([[0], np.cumsum(rows_per_pos)[:-1]])
    row = row_first[pos] + rank // k
    col = rank % k
    out_feat = np.zeros((n_rows, k), np.int32)
    out_act = np.zeros((n_rows, k), np.float32)
    out_node = np.full((n_rows, k), -1, np.int64)
    out_feat[row, col], out_act[row, col], out_node[row, col] = feat, act, node
    return FeatureRows(row_pos.astype(np.int64), out_feat, out_act, out_node)


def flat_take(x: mx.array, pos: np.ndarray, feat: np.ndarray, width: int) -> mx.array:
    """x[:, pos, feat] for x [B,T,m] -> [B,F]."""
    b = x.shape[0]
    idx = mx.array((pos * width + feat).astype(np.int32))
    return mx.take(x.reshape(b, -1), idx, axis=1)


__all__ = ["FeatureRows", "LayerFeatures", "NodeSet", "feature_rows", "flat_take", "make_node_set"]
