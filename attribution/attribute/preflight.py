"""Memory preflight of an exact graph: this model, these dictionaries, this prompt.

Counts the bytes that building the graph adds to a process whose model and
dictionaries are already resident (they are not the graph's cost). v is the
activation itemsize (4 for float32), T tokens, d = d_model, L layers, H heads,
V vocabulary, U dictionary layers of widths m_u, F active features,
N = T + F + U·T + n_logits nodes, b targets per backward pass (``batch_size``
capped by ``max_batch_tokens``), E kept edges.

Algorithm (``estimate_exact_memory``):
  1. Clean state (``ReplacementModel.clean``), kept for the whole build:
     v·(T·V logits + 2·T·Σm_u pre-activations and latents + L·H·T² patterns
     + T·d·(cached sites + 2U reconstructions/errors + 2)); while it is
     computed, the forward and the encoders add v·T·(V + 2·max m_u + 4·d_ff).
  2. Node set and per-graph tables: 20·F (positions, latents, activations),
     about 20·F·1.25 for the position-grouped feature rows (padding ≤ 25% is
     typical; the exact figure is used once the node set exists), 42·N for the
     per-node tables (layer, position, latent, dropped mass, influence
     normaliser, flags).
  3. Kept edges E: per target, min(edges_per_target, sources below it) where
     "below" means a lower layer and a position ≤ the target's (the only
     non-zero entries); with ``max_feature_nodes`` the targets are the logits
     plus the ``max_feature_nodes`` features with the most such sources (an
     upper bound, since which features are processed depends on influence).
     Stored once: 8·E (float32 value, int32 column) + 24 bytes per row.
  4. One backward pass: the vmapped VJP, measured at about
     v·b·T·d·(BATCH_BASE + BATCH_PER_SITE·(U + 1)) (the write-site gradients
     and the cotangents of the backward) plus v·T·d·L·PRIMAL_PER_LAYER for
     the single primal forward; a quantized model adds its float32 attention
     copies (``attention_dequant_bytes``), or × TILED_FACTOR on the first term
     where it has none and the prompt is tiled b times; plus (MLX keeps freed buffers cached, so the
     two add up in RSS) the dense rows and their sparsification:
     b·N·(4 rows + 4 |rows| + 8 top-k indices + 3 masks) + 4·b·F·1.25 feature
     products.
  5. End of the build: the kept edges are assembled (16·E: stacked and
     reordered copies), then ``build_graph`` keeps that CSR (8·E) while it
     subsets, reorders and validates the graph's own (FINISH_PER_EDGE = 42·E in
     all, counting every kept edge as surviving the subset) and builds the node
     table (NODE_TABLE_BYTES per graph node, NODE_KEY_BYTES per active feature
     for the keys).
  6. Peak = FIXED_BYTES + clean state + node tables + max(clean transient,
     a quantized head's dequantized unembedding (2·4·vocab·d, for the logit
     directions), kept edges + one backward pass, end of the build).
     ``ExactMemoryEstimate.check`` refuses (``GraphMemoryError``, one line naming the knobs) when the peak
     exceeds ``memory_fraction`` of ``available_memory_bytes`` (default: Linux
     MemAvailable now), or when E exceeds ``max_edges``.

The constants of steps 4 and 5 were fitted to the peak RSS growth measured on
GPT-2-small- and Llama-3.2-1B-shaped models (about 20-30 [T, d] buffers per
target at 5-17 write sites); tests/attribution/test_memory_preflight.py checks
the estimate against measured peaks at three sizes, and benchmarks/scale.py
records the ratio for every run.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from attribution.attribute.config import GraphConfig
from attribution.graph.errors import GraphMemoryError
from attribution.graph.memory import available_memory_bytes
from attribution.model.dequant import attention_dequant_bytes

BATCH_BASE = 14.0
"""[b, T, d]-sized buffers per backward pass independent of depth (cotangents, products)."""
BATCH_PER_SITE = 1.0
"""[b, T, d]-sized buffers per write site (its gradient, evaluated with all the others)."""
PRIMAL_PER_LAYER = 6.0
"""[T, d]-sized buffers per layer kept by the single primal forward of a VJP."""
TILED_FACTOR = 1.4
"""The VJP's buffers when the prompt is tiled (quantized models: MLX cannot vmap their
matmuls), relative to the vmapped VJP: the forward's activations exist b times too."""
ROW_PAD = 1.25
"""Padding factor of the position-grouped feature rows before the node set is known."""
NODE_TABLE_BYTES = 600
"""Bytes per node of the finished graph (pandas node table, keys, string columns)."""
NODE_KEY_BYTES = 200
"""Bytes per active feature for its node key while the graph is assembled."""
FINISH_PER_EDGE = 42
"""Bytes per kept edge at the end of the build: the exact rows' CSR (8), the graph's subset
and its two reorderings (3 x 8) and the validation temporaries (18; int64 targets and
layers, masks); the subset keeps at most every edge."""
FIXED_BYTES = 20 * 2**20
"""Working set of any build beyond the terms above (MLX and BLAS scratch, interpreter)."""


class ExactMemoryEstimate(NamedTuple):
    """Estimated peak memory of one exact graph build (bytes beyond model + dictionaries)."""

    n_tokens: int
    """T."""
    n_features: int
    """F, active features (0 before the clean forward: a lower bound then)."""
    n_nodes: int
    """N, all nodes before the feature budget is applied."""
    n_targets: int
    """Rows computed: logits + processed features."""
    n_edges: int
    """E, upper bound on the edges kept."""
    batch_size: int
    """Targets per backward pass."""
    clean_bytes: int
    """Clean state (step 1), kept for the whole build."""
    clean_transient_bytes: int
    """Extra while the clean state is computed."""
    table_bytes: int
    """Node set and per-graph tables (step 2)."""
    edge_bytes: int
    """Kept edges (step 3)."""
    batch_bytes: int
    """One backward pass (step 4)."""
    finish_bytes: int
    """End of the build (step 5)."""
    peak_bytes: int
    """Step 6."""

    def breakdown(self) -> dict:
        """JSON-ready fields, bytes as GiB rounded to 3 places."""
        return {k: (round(v / 2**30, 3) if k.endswith("_bytes") else v) for k, v in self._asdict().items()}

    def check(self, config: GraphConfig) -> None:
        """Raise ``GraphMemoryError`` (one line naming the knobs) if the build does not fit."""
        if config.max_edges is not None and self.n_edges > config.max_edges:
            raise GraphMemoryError(
                f"this exact graph could keep {self.n_edges:,} edges ({self.n_targets:,} rows over "
                f"{self.n_nodes:,} nodes), more than GraphConfig.max_edges={config.max_edges:,}; set "
                f"edges_per_target and max_feature_nodes (GraphConfig.large_model()) or raise max_edges")
        avail = (available_memory_bytes() if config.available_memory_bytes is None
                 else int(config.available_memory_bytes))
        if self.peak_bytes > config.memory_fraction * avail:
            raise GraphMemoryError(
                f"this exact graph needs about {self.peak_bytes / 2**30:.2f} GiB (clean state "
                f"{self.clean_bytes / 2**30:.2f}, one backward pass of {self.batch_size} targets "
                f"{self.batch_bytes / 2**30:.2f}, {self.n_edges:,} edges {self.edge_bytes / 2**30:.2f}) but "
                f"only {config.memory_fraction:.0%} of {avail / 2**30:.2f} GiB may be used; lower "
                f"GraphConfig.max_batch_tokens / batch_size (={config.batch_size}), edges_per_target "
                f"(={config.edges_per_target}), max_feature_nodes (={config.max_feature_nodes}) or the "
                f"prompt ({self.n_tokens} tokens), or raise memory_fraction / available_memory_bytes")


def _itemsize(model) -> int:
    dtype = getattr(model, "dtype", None)
    size = getattr(dtype, "size", None)
    return int(size) if size else 4


def _d_ff(model) -> int:
    cfg = getattr(model, "config", {}) or {}
    for key in ("intermediate_size", "n_inner", "ffn_dim", "d_ff"):
        if cfg.get(key):
            return int(cfg[key])
    return 4 * int(model.d_model)


def _cached_sites(rm) -> int:
    sites = {("resid_pre", 0)}
    for u in rm.units.values():
        sites |= {(u.in_site.kind, u.in_site.layer), (u.out_site.kind, u.out_site.layer)}
    sites |= {("mlp_out", l) for l in range(rm.model.n_layers)}
    return len(sites)


def sources_below(nodes) -> np.ndarray:
    """[F] number of sources below each feature: lower layer and position <= its own."""
    t, layers = nodes.n_tokens, list(nodes.layers)
    counts = np.zeros((len(layers) + 1, t), dtype=np.int64)  # row 0: tokens; row k+1: layer k
    counts[0] = 1
    for k, l in enumerate(layers):
        f = nodes.features.get(l)
        counts[k + 1] = 1 + (np.bincount(f.pos, minlength=t) if f is not None and len(f.pos) else 0)
    cum = np.cumsum(np.cumsum(counts, axis=0), axis=1)  # cum[k, p]: rows <= k, positions <= p
    out = np.zeros(nodes.n_features, dtype=np.int64)
    for k, l in enumerate(layers):
        f = nodes.features.get(l)
        if f is not None and len(f.pos):
            out[f.offset - t: f.offset - t + len(f.pos)] = cum[k, f.pos]  # rows below layer l
    return out


def _edges(nodes, n_logits: int, config: GraphConfig) -> tuple[int, int]:
    """(rows, kept-edge upper bound) of step 3."""
    k = config.edges_per_target
    below = sources_below(nodes)
    if k is not None:
        below = np.minimum(below, k)
    n_sources = nodes.n_tokens + nodes.n_features + len(nodes.layers) * nodes.n_tokens
    cap = len(below) if config.max_feature_nodes is None else min(config.max_feature_nodes, len(below))
    if cap < len(below):
        below = np.partition(below, len(below) - cap)[len(below) - cap:]
    per_logit = n_sources if k is None else min(k, n_sources)
    return cap + n_logits, int(below.sum()) + n_logits * per_logit


def estimate_exact_memory(rm, n_tokens: int, config: GraphConfig, nodes=None,
                          n_logits: int | None = None) -> ExactMemoryEstimate:
    """Peak memory of an exact graph of ``n_tokens`` (module docstring).

    ``nodes`` (the ``NodeSet``, after the clean forward) gives the active features
    and the exact bound on kept edges; without it the features count as 0, so the
    estimate is a lower bound (the clean state and the batch working set only)."""
    from attribution.attribute.exact import effective_batch_size
    from attribution.attribute.nodes import feature_rows

    model = rm.model
    v = _itemsize(model)
    t, d, n_layers = int(n_tokens), int(model.d_model), int(model.n_layers)
    n_units = len(rm.units)
    widths = [u.width for u in rm.units.values()]
    n_logits = config.max_logits if n_logits is None else int(n_logits)
    vocab = int(model.vocab_size)
    # 1. clean state
    clean = v * (t * vocab + 2 * t * sum(widths) + n_layers * model.n_heads * t * t
                 + t * d * (_cached_sites(rm) + 2 * n_units + 2))
    clean_tmp = v * t * (vocab + 2 * max(widths) + 4 * _d_ff(model))
    # 2. node set and tables
    n_feat = 0 if nodes is None else int(nodes.n_features)
    n = t + n_feat + n_units * t + n_logits
    if nodes is not None and n_feat:
        slots = sum(feature_rows(f, t).feature.size for f in nodes.features.values())
    else:
        slots = int(ROW_PAD * n_feat)
    tables = 20 * n_feat + 20 * slots + 42 * n
    # 3. kept edges
    if nodes is not None:
        rows, e = _edges(nodes, n_logits, config)
    else:
        rows, e = n_logits, n_logits * (n if config.edges_per_target is None
                                        else min(config.edges_per_target, n))
    edges = 8 * e + 24 * rows
    # 4. one backward pass
    b = effective_batch_size(config, t)
    per_copy = BATCH_BASE + BATCH_PER_SITE * (n_units + 1)
    deq = attention_dequant_bytes(model)  # float32 attention copies of a quantized model
    if getattr(model, "quantized", False) and not deq:
        per_copy *= TILED_FACTOR  # no attention block found: the prompt is tiled instead
    vjp = v * b * t * d * per_copy + v * t * d * n_layers * PRIMAL_PER_LAYER + deq
    dense = b * n * 19 + 4 * b * slots
    batch = int(vjp + dense)
    # 5. end of the build
    finish = FINISH_PER_EDGE * e + NODE_TABLE_BYTES * (n - n_feat + min(n_feat, rows)) + NODE_KEY_BYTES * n_feat
    # the logit directions of a quantized head: W_U dequantized once, plus its transpose
    unembed = 2 * 4 * vocab * d if getattr(model, "quantized", False) else 0
    peak = FIXED_BYTES + clean + tables + max(clean_tmp, unembed, edges + batch, finish)
    return ExactMemoryEstimate(t, n_feat, n, rows, e, b, int(clean), int(clean_tmp), int(tables),
                               int(edges), batch, int(finish), int(peak))


def check_exact_memory(rm, n_tokens: int, config: GraphConfig, nodes=None,
                       n_logits: int | None = None) -> ExactMemoryEstimate:
    """``estimate_exact_memory`` then ``check``; returns the estimate when the build fits."""
    est = estimate_exact_memory(rm, n_tokens, config, nodes, n_logits)
    est.check(config)
    return est


__all__ = ["ExactMemoryEstimate", "check_exact_memory", "estimate_exact_memory", "sources_below"]
