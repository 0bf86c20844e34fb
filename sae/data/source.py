"""Activation sources: what the trainer reads batches from.

An ``ActivationSource`` has ``sites`` and ``dims`` and a
``batches(batch_tokens, seed)`` generator of ``{Site: np.ndarray [batch_tokens, d]}``
(float32, rows aligned across sites: row r of every site is the same token).
  1. ``ArraySource``: in-memory arrays; every epoch is a fresh permutation drawn
     from (seed, epoch), so order is reproducible and batches span epochs.
  2. ``StreamSource``: chunks from a re-iterable factory go through a shuffled
     mixing buffer: fill to capacity, shuffle, emit batches until half is left,
     refill (B2); optional drop of tokens whose norm exceeds ``outlier_factor`` x
     the median (any site). The factory is called again when a pass ends. A pass
     without a single token raises ``EmptyDatasetError`` naming the stage that lost
     them: no chunks at all, chunks without tokens, or every token dropped as an outlier.
  4. ``sae.data.store.ActivationStore``: an on-disk store bigger than RAM (sharded
     safetensors), read through a seeded shuffle buffer of bounded size; its batches
     are mappings read on first access, so batches a resumed run replays cost no I/O.
All are deterministic given the seed, so a resumed run replays the same batches.
  3. ``shard(rank, world)`` (data-parallel training) returns this rank's part:
     ``ArraySource`` -> rows [rank*b, (rank+1)*b) of each global batch of b*world rows
     (the union over ranks is exactly the single-process batch); ``StreamSource`` ->
     its ``shard_chunks(rank, world)`` factory when given (document / file sharding),
     else every ``world``-th row of each chunk, each rank with its own mixing buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from attribution.sites import Site
from sae.errors import EmptyDatasetError, ShapeMismatchError

Batch = dict


@runtime_checkable
class ActivationSource(Protocol):
    """Anything that yields aligned activation batches per site."""

    sites: tuple
    dims: dict

    def batches(self, batch_tokens: int, seed: int) -> Iterator[Batch]:
        """Infinite (or until exhausted) iterator of {Site: float32 [batch_tokens, d]}."""


def _as_site_dict(arrays) -> dict:
    out = {}
    for k, v in arrays.items():
        a = np.asarray(v, dtype=np.float32)
        if a.ndim > 2:
            a = a.reshape(-1, a.shape[-1])
        if a.ndim != 2:
            raise ShapeMismatchError(f"activations for {k} must be [N, d], got shape {a.shape}")
        out[Site.parse(k)] = a
    ns = {a.shape[0] for a in out.values()}
    if len(ns) > 1:
        raise ShapeMismatchError(f"sites have different token counts: {sorted(ns)}")
    return out


class ArraySource:
    """In-memory activations {Site: [N, d]} (or [..., d], flattened)."""

    def __init__(self, arrays: Mapping):
        self.arrays = _as_site_dict(arrays)
        if not self.arrays or next(iter(self.arrays.values())).shape[0] == 0:
            raise EmptyDatasetError("ArraySource got no tokens")
        self.sites = tuple(self.arrays)
        self.dims = {s: a.shape[1] for s, a in self.arrays.items()}
        self.n_tokens = next(iter(self.arrays.values())).shape[0]

    def batches(self, batch_tokens: int, seed: int, rows: slice = slice(None)) -> Iterator[Batch]:
        """Batches of the permutation stream; ``rows`` keeps a slice of each (a shard)."""
        n, epoch, pending = self.n_tokens, 0, np.zeros(0, dtype=np.int64)
        while True:
            while pending.size < batch_tokens:
                perm = np.random.default_rng([seed, epoch]).permutation(n)
                pending, epoch = np.concatenate([pending, perm]), epoch + 1
            idx, pending = pending[:batch_tokens][rows], pending[batch_tokens:]
            yield {s: a[idx] for s, a in self.arrays.items()}

    def shard(self, rank: int, world: int) -> ArrayShard:
        """Rank ``rank``'s rows of every global batch (see the module docstring)."""
        return ArrayShard(self, rank, world)


class ArrayShard:
    """Rows [rank*b, (rank+1)*b) of each global batch (b*world rows) of an ArraySource."""

    def __init__(self, parent: ArraySource, rank: int, world: int):
        self.parent, self.rank, self.world = parent, int(rank), int(world)
        self.sites, self.dims = parent.sites, parent.dims

    def batches(self, batch_tokens: int, seed: int) -> Iterator[Batch]:
        rows = slice(self.rank * batch_tokens, (self.rank + 1) * batch_tokens)
        return self.parent.batches(batch_tokens * self.world, seed, rows)


def drop_outliers(chunk: dict, factor: float) -> dict:
    """Rows whose norm exceeds factor x median norm (at any site) removed."""
    keep = None
    for a in chunk.values():
        norms = np.linalg.norm(a, axis=1)
        ok = norms <= factor * np.median(norms)
        keep = ok if keep is None else keep & ok
    return chunk if keep is None or keep.all() else {s: a[keep] for s, a in chunk.items()}


class StreamSource:
    """A shuffled mixing buffer over a re-iterable stream of {Site: [n, d]} chunks."""

    def __init__(self, chunks: Callable[[], Iterable[Mapping]], sites, dims: Mapping,
                 buffer_tokens: int = 2 ** 16, outlier_factor: float | None = 10.0,
                 max_passes: int | None = None,
                 shard_chunks: Callable[[int, int], Iterable[Mapping]] | None = None):
        self.chunks, self.sites = chunks, tuple(Site.parse(s) for s in sites)
        self.dims = {Site.parse(s): int(d) for s, d in dims.items()}
        self.buffer_tokens, self.outlier_factor = int(buffer_tokens), outlier_factor
        self.max_passes = max_passes
        self.shard_chunks = shard_chunks

    def shard(self, rank: int, world: int) -> StreamSource:
        """This rank's stream: ``shard_chunks(rank, world)``, else rows rank::world of each chunk."""
        if world == 1:
            return self
        if self.shard_chunks is not None:
            factory = lambda: self.shard_chunks(rank, world)
        else:
            factory = lambda: ({s: np.asarray(a)[rank::world] for s, a in c.items()}
                               for c in self.chunks())
        return StreamSource(factory, self.sites, self.dims, self.buffer_tokens,
                            self.outlier_factor, self.max_passes)

    def _stream(self) -> Iterator[dict]:
        passes = 0
        while self.max_passes is None or passes < self.max_passes:
            got, n_chunks, n_rows = False, 0, 0
            for chunk in self.chunks():
                c = _as_site_dict({s: chunk[s] for s in self.sites})
                n_chunks += 1
                n_rows += next(iter(c.values())).shape[0]
                if self.outlier_factor:
                    c = drop_outliers(c, self.outlier_factor)
                for s, a in c.items():
                    if a.shape[1] != self.dims[s]:
                        raise ShapeMismatchError(f"site {s}: width {a.shape[1]}, expected {self.dims[s]}")
                if next(iter(c.values())).shape[0]:
                    got = True
                    yield c
            if not got:  # say which stage lost the tokens
                if n_chunks == 0:
                    raise EmptyDatasetError("the activation stream produced no chunks "
                                            "(an empty corpus or cache)")
                if n_rows == 0:
                    raise EmptyDatasetError(
                        f"the activation stream's {n_chunks} chunk(s) held no tokens (each "
                        "context was only BOS / position 0); use longer contexts")
                raise EmptyDatasetError(
                    f"every one of {n_rows} tokens was dropped as an outlier (norm > "
                    f"{self.outlier_factor} x median); raise or disable outlier_factor")
            passes += 1

    def batches(self, batch_tokens: int, seed: int) -> Iterator[Batch]:
        rng = np.random.default_rng(seed)
        cap = max(self.buffer_tokens, 2 * batch_tokens)
        stream = self._stream()
        buf = {s: np.zeros((0, self.dims[s]), np.float32) for s in self.sites}
        exhausted = False
        while True:
            n = next(iter(buf.values())).shape[0]
            if not exhausted and n < cap // 2 + batch_tokens:
                parts = [buf]
                while n < cap and not exhausted:
                    try:
                        c = next(stream)
                    except StopIteration:
                        exhausted = True
                        break
                    parts.append(c)
                    n += next(iter(c.values())).shape[0]
                perm = rng.permutation(n)
                buf = {s: np.concatenate([p[s] for p in parts])[perm] for s in self.sites}
            if n < batch_tokens:
                return
            yield {s: a[:batch_tokens] for s, a in buf.items()}
            buf = {s: a[batch_tokens:] for s, a in buf.items()}
