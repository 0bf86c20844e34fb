"""``build_graph``: prompt + model + dictionaries -> attribution ``Graph``.

Algorithm:
  1. Validate the method and inputs (prompt non-empty and within context,
     dictionaries match the model, targets in the vocabulary) and check a
     lower-bound memory estimate before any forward pass.
  2. One clean forward of the model gives every unit's latents and errors
     and the final-norm output; logit targets are resolved at the last
     position (top logits to 95%, at most 10, or user directions).
  3. ``exact``: collect the active features, re-check the memory estimate
     with the measured L0 (before any backward pass), then fill rows by
     batched VJPs (``exact.exact_rows``) and build the graph from the kept
     edges; with ``max_feature_nodes`` only the processed features stay.
     ``atp``/``ig``/``patching``: node scores (``patching.node_scores``;
     ``jump-aware``: ``jump_aware.jump_aware_scores``, node scores only)
     become edges from each feature/error node to one logit node ``metric``;
     with ``feature_edges`` the feature rows (``patch_edges``) are sparsified
     like the exact graph's and added.
  4. Metadata records the model, dictionaries, prompt, tokens, method,
     ablation, config and the code version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import mlx.core as mx
import numpy as np
import scipy.sparse as sp

from attribution.attribute.config import METHODS, GraphConfig
from attribution.attribute.exact import effective_batch_size, exact_rows
from attribution.attribute.jump_aware import JUMP_AWARE, jump_aware_scores
from attribution.attribute.nodes import make_node_set
from attribution.attribute.patching import node_scores
from attribution.attribute.targets import TargetSpec, resolve_targets
from attribution.errors import EmptySequenceError
from attribution.graph.errors import GraphMemoryError
from attribution.graph.graph import Graph
from attribution.graph.keys import LogitNode
from attribution.graph.memory import estimate_memory
from attribution.model.precision import dtype_name
from attribution.model.tokens import as_tokens
from attribution.replacement.errors import AttributionMethodError
from attribution.replacement.model import ReplacementModel

ATTRIBUTION_VERSION = "0.1.0"
"""Version of the graph-construction algorithm, written into graph metadata."""


def prompt_tokens(model, prompt_or_tokens) -> tuple[str | None, list[int]]:
    """(prompt text or None, validated token ids) for one prompt."""
    if isinstance(prompt_or_tokens, str):
        if not prompt_or_tokens.strip():
            raise EmptySequenceError("the prompt is empty; pass some text or token ids")
        text, ids = prompt_or_tokens, model.encode(prompt_or_tokens)
    else:
        text, ids = None, prompt_or_tokens
    toks = as_tokens(ids, model)
    if toks.shape[0] != 1:
        raise AttributionMethodError(f"build_graph takes one prompt, got a batch of {toks.shape[0]}")
    return text, [int(t) for t in np.asarray(toks)[0]]


CONVENTIONS = ("ours", "circuit-tracer")
"""Graph conventions: ours (default) or circuit-tracer's (DESIGN E2), see ``apply_convention``."""


def convention_tokens(model, ids: list[int], convention: str) -> list[int]:
    """Token ids under ``convention``: circuit-tracer prepends BOS unless the first
    token is already a special token (as its ``attribute`` does)."""
    if convention == "ours":
        return ids
    tok = model.tokenizer  # mlx-lm's wrapper forwards these attributes to the HF tokenizer
    special = set(getattr(tok, "all_special_ids", []) or [])
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:  # GPT-2's tokenizer has no BOS of its own: <|endoftext|> plays it
        bos = getattr(tok, "eos_token_id", None)
    if bos is None:
        raise AttributionMethodError("convention='circuit-tracer' prepends BOS, but this tokenizer has "
                                     "neither a BOS nor an EOS token; use convention='ours'")
    return ids if ids and ids[0] in special else [int(bos)] + ids


def apply_convention(model, state, convention: str):
    """The clean state as circuit-tracer's graph sees it (DESIGN E2).

    1. Position 0 is zeroed: every feature activation and error vector there is 0,
       so position 0 has no feature nodes and its error nodes write nothing (they
       are removed from the graph afterwards). The forward is unchanged: the
       linearised model reads only the state's outputs, patterns and MLP outputs.
    2. Token nodes write W_E[token] (times the embedding scale) only; the learned
       positional embedding (GPT-2) is a constant of the forward, not a node.
    Because the linearised map is linear in every source's write, changing the
    write vectors changes exactly those columns and nothing else."""
    from dataclasses import replace

    if convention == "ours":
        return state
    acts = {l: mx.concatenate([mx.zeros_like(a[:1]), a[1:]], axis=0) for l, a in state.acts.items()}
    error = {l: mx.concatenate([mx.zeros_like(e[:1]), e[1:]], axis=0) for l, e in state.error.items()}
    embed = state.embed
    w_pos = model.W_pos
    if w_pos is not None:
        embed = embed - w_pos[: embed.shape[0]].astype(embed.dtype)
    return replace(state, acts=acts, error=error, embed=embed)


def _check_memory(model, rm, n_tokens: int, per_token: float, config: GraphConfig) -> None:
    # The backward runs effective_batch_size targets per pass (batch_size capped by
    # max_batch_tokens), not batch_size: bounding with batch_size refused Gemma-2-2B at 512
    # tokens for a 64-target pass that never runs (8.07 GiB vs the 6.0 GiB the exact
    # preflight then estimates).
    est = estimate_memory(n_tokens, len(rm.units), per_token, config.max_logits, d_model=model.d_model,
                          edges_per_target=config.edges_per_target,
                          batch_size=effective_batch_size(config, n_tokens),
                          max_feature_nodes=config.max_feature_nodes)
    try:
        est.check(config.available_memory_bytes, config.memory_fraction)
    except GraphMemoryError as exc:
        raise GraphMemoryError(
            f"{exc}. Knobs: GraphConfig(edges_per_target={config.edges_per_target}, "
            f"batch_size={config.batch_size}, max_batch_tokens={config.max_batch_tokens}, "
            f"max_feature_nodes={config.max_feature_nodes}, "
            f"feature_threshold={config.feature_threshold}) or a shorter prompt "
            f"({n_tokens} tokens, ~{per_token:.1f} active features per token and layer)") from None


def dictionaries_digest(rm) -> str:
    """sha256 (16 hex) over every dictionary parameter's shape and leading values.

    Cheap even for 16k-wide sets (at most 4,096 values a tensor), and enough to
    tell two trainings apart: ``circuits validate`` compares it to refuse a
    circuit built with other dictionaries."""
    import hashlib

    from mlx.utils import tree_flatten

    h = hashlib.sha256()
    seen = set()
    for u in rm.units.values():
        if id(u.dictionary) in seen:
            continue
        seen.add(id(u.dictionary))
        h.update(f"{u.in_site}->{u.out_site}".encode())
        d = u.dictionary
        # nn.Module dictionaries expose parameters(); protocol-only ones (tests, user
        # classes) are read through their array attributes.
        params = (tree_flatten(d.parameters()) if callable(getattr(d, "parameters", None))
                  else [(k, v) for k, v in vars(d).items() if isinstance(v, mx.array)])
        for name, arr in sorted(params, key=lambda kv: kv[0]):
            a = np.asarray(arr.reshape(-1)[:4096].astype(mx.float32))
            h.update(f"{name}{tuple(arr.shape)}".encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def _metadata(model, rm, text, ids, method, config, extra: dict) -> dict:
    from attribution.model.integrity import model_identity

    return {
        "convention": getattr(config, "convention", "ours"),
        "model_identity": model_identity(model),
        "dictionaries_digest": dictionaries_digest(rm),
        "n_layers": model.n_layers,
        "model": {"path": str(model.path) if model.path else None, "arch": model.arch,
                  "d_model": model.d_model},
        "dictionaries": rm.describe(), "prompt": text, "tokens": ids, "method": method,
        "ablation": extra.pop("ablation", None), "config": config.to_dict(),
        "attribution_version": ATTRIBUTION_VERSION, **extra,
    }


def build_graph(model, dictionaries, prompt_or_tokens, targets: TargetSpec = None,
                method: str = "exact", config: GraphConfig | None = None, *,
                counterfactual=None, reference=None, metric: Callable | None = None,
                progress: Callable[[str, int, int], None] | None = None) -> Graph:
    """Attribution graph of one prompt (module docstring).

    ``model`` may be a ``ReplacementModel`` (``dictionaries`` is then ignored);
    ``targets``: None (top logits), token ids, or ``LogitTarget`` directions;
    ``counterfactual``/``reference``: prompts for the counterfactual / mean ablation;
    ``metric``: logits [B,T,V] -> [B] for the patching methods (default: the targets);
    ``progress(stage, done, total)`` is called after each batch."""
    if method not in METHODS:
        raise AttributionMethodError(f"unknown method {method!r}; one of {METHODS}")
    config = GraphConfig() if config is None else config
    rm = model if isinstance(model, ReplacementModel) else ReplacementModel(model, dictionaries)
    model = rm.model
    dtype = getattr(model, "dtype", mx.float32)
    if dtype != mx.float32:  # the rows are read back through numpy as float32 (precision policy)
        raise AttributionMethodError(
            f"attribution graphs compute in float32 but this model computes in {dtype_name(dtype)} "
            "(loaded with dtype=None); load it with load_model(path), whose default casts "
            "the weights to float32 exactly")
    convention = getattr(config, "convention", "ours")
    if convention not in CONVENTIONS:
        raise AttributionMethodError(f"unknown convention {convention!r}; one of {CONVENTIONS}")
    text, ids = prompt_tokens(model, prompt_or_tokens)
    ids = convention_tokens(model, ids, convention)
    _check_memory(model, rm, len(ids), 0.0, config)
    state = rm.clean(ids)
    tg = resolve_targets(model, targets, state.logits[-1], state.norm_out[-1], len(ids) - 1,
                         config.max_logits, config.logit_prob_mass)
    tok_str = model.to_str_tokens(ids)
    if method == "exact":
        if convention != "ours":
            g = _exact_graph(rm, apply_convention(model, state, convention), tg, config, text, ids,
                             tok_str, progress)
            err = g.type_mask("error") & (g.nodes["pos"].to_numpy() == 0)
            return g.subgraph(~err)  # position 0's error nodes write nothing under this convention
        return _exact_graph(rm, state, tg, config, text, ids, tok_str, progress)
    if convention != "ours":
        raise AttributionMethodError("convention='circuit-tracer' applies to method='exact' graphs; "
                                     "patching-style graphs use convention='ours'")
    extra = {}
    if method == JUMP_AWARE:
        if config.feature_edges:
            raise AttributionMethodError("method='jump-aware' scores nodes only; use feature_edges=False, "
                                         "or method='patching' for exact feature edges")
        ja = jump_aware_scores(rm, state, tg, base=config.correct_base, top=config.correct_top,
                               fraction=config.correct_fraction,
                               tolerance=config.correct_tolerance, ablation=config.ablation,
                               steps=config.ig_steps, batch_size=config.batch_size,
                               feature_threshold=config.feature_threshold,
                               counterfactual=counterfactual, reference=reference, metric=metric)
        ns = ja.nodes
        extra = {"correct_base": ja.base, "forwards": ja.forwards, "backwards": ja.backwards,
                 "corrected": [str(k) for k, c in zip(ns.keys, ja.corrected) if c]}
    else:
        ns = node_scores(rm, state, tg, method, ablation=config.ablation, steps=config.ig_steps,
                         batch_size=config.batch_size, feature_threshold=config.feature_threshold,
                         counterfactual=counterfactual, reference=reference, metric=metric,
                         feature_edges=config.feature_edges, edges_per_target=config.edges_per_target,
                         edge_threshold=config.edge_threshold)
    keys = list(ns.keys) + [LogitNode(len(ids) - 1, -1, "metric")]
    n = len(keys)
    adj = sp.csr_matrix((ns.scores, (np.full(n - 1, n - 1), np.arange(n - 1))), shape=(n, n))
    dropped = np.zeros(n)
    if ns.edges is not None:  # feature rows, sparsified like the exact graph's
        adj, dropped = (adj + ns.edges.adjacency).tocsr(), ns.edges.dropped_mass
    md = _metadata(model, rm, text, ids, method, config,
                   {"ablation": config.ablation, "clean_metric": ns.clean_metric,
                    "forward_passes": ns.forward_passes, "targets": [str(k) for k in tg.keys],
                    "ig_steps": config.ig_steps if method == "ig" else None, **extra})
    act = np.concatenate([ns.activation, [ns.clean_metric]])
    tokens = [tok_str[k.pos] for k in ns.keys] + ["metric"]
    return Graph.from_keys(keys, adj, act, [1.0], md, token=tokens, dropped_mass=dropped)


def _exact_graph(rm, state, tg, config, text, ids, tok_str, progress) -> Graph:
    model = rm.model
    nodes = make_node_set(state, rm.layers, config.feature_threshold, len(tg.keys))
    _check_memory(model, rm, len(ids), nodes.n_features / max(1, len(ids) * len(rm.units)), config)
    rows = exact_rows(rm, state, nodes, tg, config, progress)
    keys = nodes.source_keys(ids) + list(tg.keys)
    act = np.concatenate(
        [np.linalg.norm(np.asarray(state.embed), axis=-1)]
        + [f.act.astype(np.float64) for f in nodes.features.values()]
        + [np.linalg.norm(np.asarray(state.error[l]), axis=-1) for l in rm.layers] + [tg.values])
    tokens = list(tok_str) + [tok_str[k.pos] for k in keys[len(ids): nodes.logit_offset]] + tg.labels
    probs = np.concatenate([np.zeros(nodes.logit_offset), tg.probs])
    keep = np.ones(nodes.n_nodes, dtype=bool)
    keep[nodes.n_tokens: nodes.error_offset] = rows.processed[nodes.n_tokens: nodes.error_offset]
    adj, dropped = rows.adjacency, rows.dropped_mass.copy()
    if not keep.all():  # unprocessed features leave; their kept edges count as dropped
        dropped += np.asarray(abs(adj[:, ~keep]).sum(axis=1), dtype=np.float64).ravel()
        idx = np.flatnonzero(keep)
        adj, dropped = adj[idx][:, idx], dropped[idx]
        keys = [keys[i] for i in idx]
        act, probs, tokens = act[idx], probs[idx], [tokens[i] for i in idx]
    md = _metadata(model, rm, text, ids, "exact", config,
                   {"backward_passes": rows.backward_passes, "targets": [str(k) for k in tg.keys],
                    "n_active_features": nodes.n_features})
    return Graph.from_keys(keys, adj, act, tg.weights, md, token=tokens, logit_prob=probs,
                           dropped_mass=dropped)


__all__ = ["ATTRIBUTION_VERSION", "build_graph", "prompt_tokens"]
