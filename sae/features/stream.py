"""Stream latent activations of one or more dictionaries over a dataset.

Algorithm (``iter_latents``):
  1. A dataset is a path (.txt/.jsonl/.parquet, read by ``sae.data.read_texts``), an
     iterable of texts or 1-D token-id arrays, or a zero-argument callable returning
     such an iterable (so that a second pass can re-read it).
  2. ``pack=True``: items are tokenised and packed into contexts of ``context_len`` by
     ``sae.data.pack_tokens`` (the trailing remainder is dropped, as in harvesting).
     ``pack=False``: each item is one context; longer ones are truncated to the model's
     context with a ``TruncationWarning``; a batch is right-padded with id -1 (fed as 0:
     the model is causal, so padding cannot change earlier positions) and masked.
  3. One ``capture`` forward per batch stops after the deepest site; every dictionary
     encodes its site's activations.
  4. The mask excludes padding and, with ``drop_bos``, position 0 and BOS tokens (their
     activations are outliers that would dominate top examples and densities).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from attribution.sites import RESIDUAL_WIDTH_KINDS, Site
from sae.errors import ConfigError
from sae.features.errors import (
    DictionaryModelMismatchError,
    EmptyDatasetError,
    TruncationWarning,
)

PAD = -1
"""Token id marking padding in ``LatentBatch.tokens`` and in example windows."""


@dataclass(frozen=True)
class StreamConfig:
    """How a dataset becomes batches of contexts."""

    context_len: int = 128
    """Tokens per packed context (capped at the model's context)."""
    batch_size: int = 8
    """Contexts per forward pass."""
    pack: bool = True
    """Concatenate items and cut fixed-length contexts; False keeps each item as one context."""
    drop_bos: bool = True
    """Exclude position 0 and BOS tokens from every statistic."""
    max_tokens: int | None = None
    """Stop once this many context tokens were processed (None: the whole dataset)."""

    def __post_init__(self) -> None:
        if self.context_len < 2 or self.batch_size < 1:
            raise ConfigError("context_len must be >= 2 and batch_size >= 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError("max_tokens must be positive or None")


class LatentBatch(NamedTuple):
    """One batch of contexts and their latent activations."""

    tokens: np.ndarray
    """[B, T] int32 token ids, ``PAD`` (-1) past each context's end."""
    mask: np.ndarray
    """[B, T] bool: positions that count in the statistics."""
    acts: dict
    """{key: [B, T, width] float32} latent activations per dictionary key."""
    first_context: int
    """Global index of row 0 (contexts are numbered in stream order)."""


def check_dictionary(model, dictionary, site: Site | str | None = None) -> Site:
    """The site ``dictionary`` reads in ``model``; raises when they do not fit together."""
    site = site if site is not None else getattr(dictionary, "in_site", None)
    if site is None:
        raise DictionaryModelMismatchError(
            "the dictionary has no in_site; pass site=Site(layer, kind) to say where it reads")
    site = Site.parse(site) if isinstance(site, str) else site
    if not 0 <= site.layer < model.n_layers:
        raise DictionaryModelMismatchError(
            f"dictionary site {site} is outside the model's layers 0..{model.n_layers - 1}; "
            "was it trained on another model?")
    d_in = int(dictionary.d_in)
    if site.kind in RESIDUAL_WIDTH_KINDS and d_in != model.d_model:
        raise DictionaryModelMismatchError(
            f"dictionary d_in={d_in} but the model's d_model={model.d_model} at {site}; "
            "it belongs to another model")
    return site


def reiterable(dataset) -> Callable[[], Iterable]:
    """A factory returning a fresh iterable over ``dataset`` on each call (step 1)."""
    if callable(dataset):
        return dataset
    if isinstance(dataset, (str, Path)):
        from sae.data.harvest import read_texts

        return lambda: read_texts(dataset)
    if iter(dataset) is dataset:  # one-shot iterator: keep it for a second pass
        dataset = list(dataset)
    return lambda: dataset


class _Encoder:
    """Adapter for ``pack_tokens``: texts are encoded by the model, id arrays pass through."""

    def __init__(self, model):
        self.model = model

    def encode(self, item) -> list[int]:
        return list(self.model.encode(item)) if isinstance(item, str) else [int(i) for i in np.ravel(item)]


def _context_len(model, cfg: StreamConfig) -> int:
    cap = getattr(model, "max_context", None)
    return min(cfg.context_len, cap) if cap else cfg.context_len


def iter_contexts(model, dataset, cfg: StreamConfig) -> Iterator[np.ndarray]:
    """1-D int32 token contexts (step 2)."""
    from sae.data.harvest import pack_tokens

    items = reiterable(dataset)()
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    if cfg.pack:
        yield from pack_tokens(_Encoder(model), items, _context_len(model, cfg), bos)
        return
    enc, cap = _Encoder(model), getattr(model, "max_context", None)
    cut: list[tuple[int, int]] = []
    for i, item in enumerate(items):
        ids = enc.encode(item)
        if cap and len(ids) > cap:
            if not cut:  # warn at once; further cuts are summarised when the pass ends
                warnings.warn(f"item {i} has {len(ids)} tokens; truncated to the model's context of {cap}",
                              TruncationWarning, stacklevel=3)
            cut.append((i, len(ids)))
            ids = ids[:cap]
        if ids:
            yield np.asarray(ids, dtype=np.int32)
    if len(cut) > 1:
        warnings.warn(f"{len(cut)} items in all were truncated to the model's context of {cap} tokens "
                      f"(longest: {max(n for _, n in cut)} tokens)", TruncationWarning, stacklevel=3)


def _pad(ctxs: list[np.ndarray]) -> np.ndarray:
    out = np.full((len(ctxs), max(len(c) for c in ctxs)), PAD, dtype=np.int32)
    for r, c in enumerate(ctxs):
        out[r, :len(c)] = c
    return out


def encode_batch(model, dictionaries: Mapping, sites: Mapping, tokens: np.ndarray) -> dict:
    """{key: [B, T, width] float32} from one capture forward (step 3)."""
    import mlx.core as mx

    from attribution import capture

    acts = capture(model, mx.array(np.maximum(tokens, 0)), list(dict.fromkeys(sites.values())))
    b, t = tokens.shape
    out = {}
    for key, d in dictionaries.items():
        x = acts[sites[key]]
        f = d.encode(x.reshape(b * t, x.shape[-1]).astype(mx.float32))
        out[key] = np.array(f.astype(mx.float32)).reshape(b, t, -1)
    return out


def batch_mask(model, tokens: np.ndarray, drop_bos: bool) -> np.ndarray:
    """Counted positions (step 4)."""
    mask = tokens != PAD
    if drop_bos:
        mask[:, 0] = False
        bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
        if bos is not None:
            mask &= tokens != bos
    return mask


def iter_latents(model, dictionaries: Mapping, dataset, cfg: StreamConfig = StreamConfig(),
                 sites: Mapping | None = None) -> Iterator[LatentBatch]:
    """Batches of contexts with every dictionary's latents; raises on an empty dataset."""
    sites = {k: check_dictionary(model, d, (sites or {}).get(k)) for k, d in dictionaries.items()}
    ctxs: list[np.ndarray] = []
    seen = n_tok = 0
    for ctx in iter_contexts(model, dataset, cfg):
        ctxs.append(ctx)
        n_tok += len(ctx)
        full = cfg.max_tokens is not None and n_tok >= cfg.max_tokens
        if len(ctxs) == cfg.batch_size or full:
            yield _make_batch(model, dictionaries, sites, ctxs, seen, cfg)
            seen, ctxs = seen + len(ctxs), []
        if full:
            break
    if ctxs:
        yield _make_batch(model, dictionaries, sites, ctxs, seen, cfg)
        seen += len(ctxs)
    if seen == 0:
        raise EmptyDatasetError(
            "the dataset produced no context" + (f" of {_context_len(model, cfg)} tokens; pass more text "
                                                 "or set StreamConfig(pack=False)" if cfg.pack else ""))


def _make_batch(model, dictionaries, sites, ctxs, first, cfg) -> LatentBatch:
    tokens = _pad(ctxs)
    return LatentBatch(tokens, batch_mask(model, tokens, cfg.drop_bos),
                       encode_batch(model, dictionaries, sites, tokens), first)
