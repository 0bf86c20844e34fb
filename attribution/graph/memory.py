"""Memory estimate for building one attribution graph, before building it.

Formula (all counts in nodes/edges, sizes in bytes; v = ``bytes_per_value``):

1. Nodes. F = ceil(n_tokens · n_layers · active_features_per_token) feature nodes
   (capped at ``max_feature_nodes``), n_layers · n_tokens error nodes, n_tokens token
   nodes and n_logits logit nodes: N = F + n_layers·n_tokens + n_tokens + n_logits.
   Sources S = N − n_logits (logits are never sources); targets T = F + n_logits.
2. Kept edges. E = T · min(edges_per_target, S) with top-k sparsification, else
   E = T · ceil(edge_fraction · S) with a threshold (edge_fraction = 1 is the bound).
3. ``edge_bytes`` = E·(v + i) + (N+1)·i + 8·N: CSR data and column indices, row
   pointers, dropped mass; i = 4 bytes while E and N < 2³¹, else 8.
   ``assembly_bytes`` = 2·E·(16 + v): per-batch kept (row, column, value) triplets and
   their concatenation while the CSR is assembled.
4. ``node_table_bytes`` = N · 160: six 8-byte numeric columns, four object references
   and about 80 bytes of key string per row (an approximation).
5. ``batch_working_bytes`` = b·S·(2v + 18) + b·n_tokens·d_model·v·(n_layers + 1): one
   batch of b dense rows with their |·|, argpartition indices (8), float64 dropped-mass
   terms (8) and masks (2), plus the gradient at every residual writing site held by
   the batched backward pass.
6. ``forward_bytes`` = n_tokens·d_model·v·n_layers·sites_cached + F·d_model·v: cached
   forward activations and one write vector (activation × decoder row) per feature.
7. ``total_bytes`` is the sum of 3–6: a conservative peak, since the phases overlap.

``MemoryEstimate.check`` raises ``GraphMemoryError`` when the total exceeds a fraction
of the memory available now (``MemAvailable`` from /proc/meminfo, else sysconf).

This model-free formula is a quick bound from counts alone (used before the clean
forward and for the patching-style methods). Exact graphs are checked, before any
backward pass, by ``attribution.attribute.preflight.estimate_exact_memory``, which
knows the model, the dictionaries, the prompt's active features and the batched
VJP, and is tested against measured peak RSS.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

from attribution.graph.errors import GraphError, GraphMemoryError

NODE_ROW_BYTES = 160
"""Approximate bytes per node-table row (see step 4 of the module docstring)."""


class MemoryEstimate(NamedTuple):
    """Estimated node/edge counts and bytes for one graph construction."""

    n_nodes: int
    """N, all nodes."""
    n_sources: int
    """S = N − n_logits, nodes that can be edge sources."""
    n_targets: int
    """T = features + logits, nodes whose incoming rows are computed."""
    n_edges: int
    """E, edges kept after sparsification."""
    node_table_bytes: int
    """Node table."""
    edge_bytes: int
    """Final CSR adjacency plus dropped mass."""
    assembly_bytes: int
    """Transient triplets while assembling the CSR."""
    batch_working_bytes: int
    """Largest dense working set of one backward batch."""
    forward_bytes: int
    """Cached forward activations and feature write vectors."""
    total_bytes: int
    """Sum of the byte fields (conservative peak)."""

    def check(self, available_bytes: int | None = None, fraction: float = 0.8) -> None:
        """Raise ``GraphMemoryError`` if ``total_bytes`` > ``fraction`` · available memory."""
        avail = available_memory_bytes() if available_bytes is None else int(available_bytes)
        if self.total_bytes > fraction * avail:
            raise GraphMemoryError(
                f"graph construction needs about {self.total_bytes / 2**30:.2f} GiB but only "
                f"{fraction:.0%} of {avail / 2**30:.2f} GiB available may be used; lower edges_per_target, "
                f"batch_size or the prompt length, or raise the feature activation threshold")


def available_memory_bytes() -> int:
    """Memory available to new allocations now (Linux ``MemAvailable``; else sysconf)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**63 - 1  # unknown: do not block


def _positive_int(name: str, v, minimum: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise GraphError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


def estimate_memory(
    n_tokens: int,
    n_layers: int,
    active_features_per_token: float,
    n_logits: int = 10,
    *,
    d_model: int,
    edges_per_target: int | None = None,
    edge_fraction: float = 1.0,
    batch_size: int = 32,
    bytes_per_value: int = 4,
    max_feature_nodes: int | None = None,
    sites_cached: int = 4,
) -> MemoryEstimate:
    """Estimate memory for one graph; see the module docstring for the formula.

    ``active_features_per_token`` is the mean number of active features per token per
    layer (the dictionaries' L0). Give ``edges_per_target`` for top-k sparsification, or
    ``edge_fraction`` (expected kept fraction of sources per target) for a threshold."""
    _positive_int("n_tokens", n_tokens)
    _positive_int("n_layers", n_layers)
    _positive_int("n_logits", n_logits, 0)
    _positive_int("d_model", d_model)
    _positive_int("batch_size", batch_size)
    _positive_int("bytes_per_value", bytes_per_value)
    _positive_int("sites_cached", sites_cached, 0)
    if not (active_features_per_token >= 0 and math.isfinite(active_features_per_token)):
        raise GraphError(f"active_features_per_token must be finite and >= 0, got {active_features_per_token!r}")
    if not 0 <= edge_fraction <= 1:
        raise GraphError(f"edge_fraction must lie in [0, 1], got {edge_fraction!r}")
    if edges_per_target is not None:
        _positive_int("edges_per_target", edges_per_target, 0)
    v = bytes_per_value
    n_feat = math.ceil(n_tokens * n_layers * active_features_per_token)
    if max_feature_nodes is not None:
        n_feat = min(n_feat, _positive_int("max_feature_nodes", max_feature_nodes, 0))
    n = n_feat + n_layers * n_tokens + n_tokens + n_logits
    s, t = n - n_logits, n_feat + n_logits
    per_target = min(edges_per_target, s) if edges_per_target is not None else math.ceil(edge_fraction * s)
    e = t * per_target
    i = 4 if max(e, n) < 2**31 else 8
    edge_bytes = e * (v + i) + (n + 1) * i + 8 * n
    assembly = 2 * e * (16 + v)
    table = n * NODE_ROW_BYTES
    batch = batch_size * s * (2 * v + 18) + batch_size * n_tokens * d_model * v * (n_layers + 1)
    forward = n_tokens * d_model * v * n_layers * sites_cached + n_feat * d_model * v
    return MemoryEstimate(n, s, t, e, table, edge_bytes, assembly, batch, forward,
                          table + edge_bytes + assembly + batch + forward)


__all__ = ["NODE_ROW_BYTES", "MemoryEstimate", "available_memory_bytes", "estimate_memory"]
