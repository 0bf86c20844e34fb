"""Harvesting activations from a model (uses ``attribution``'s model-access API).

1. Texts come from a .txt file (one document per line), .jsonl / .parquet (a
   ``text`` column, via pandas) or any iterable of strings.
2. Each text is tokenised with ``model.encode`` and the tokens are packed into
   contexts of ``context_len`` (documents concatenated; BOS kept where the
   tokenizer puts it).
3. ``capture(model, tokens [B,T], sites)`` runs one forward that stops after the
   deepest site; activations are flattened to [B*T, d], optionally dropping
   position 0 / BOS tokens.
4. ``harvest_source`` wraps this in a ``StreamSource`` (mixing buffer, outliers);
   its data-parallel shards read documents i with i % world == rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from attribution.sites import Site
from sae.data.source import StreamSource
from sae.errors import EmptyDatasetError, FormatError


def read_texts(src: str | Path | Iterable[str], column: str = "text") -> Iterator[str]:
    """Documents from a path (.txt/.jsonl/.json/.parquet) or an iterable of strings."""
    if isinstance(src, (str, Path)) and Path(src).suffix in (".txt", ".jsonl", ".json", ".parquet"):
        import pandas as pd
        p = Path(src)
        if not p.exists():
            raise FormatError(f"text file {p} does not exist")
        if p.suffix == ".txt":
            yield from (ln for ln in p.read_text().splitlines() if ln.strip())
            return
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_json(p, lines=p.suffix == ".jsonl")
        if column not in df.columns:
            raise FormatError(f"{p} has no {column!r} column (columns: {list(df.columns)})")
        yield from (str(t) for t in df[column])
        return
    if isinstance(src, str):
        yield src
        return
    yield from src


def pack_tokens(model, texts: Iterable[str], context_len: int, bos_id: int | None = None
                ) -> Iterator[np.ndarray]:
    """Contexts [context_len] int32 from concatenated tokenised documents.

    With ``bos_id`` every context starts with BOS: one is prepended to the next
    context_len - 1 tokens unless the stream already has it there (no token is dropped)."""
    buf: list[int] = []
    for t in texts:
        buf.extend(model.encode(t))
        while True:
            add_bos = bos_id is not None and (not buf or buf[0] != bos_id)
            take = context_len - 1 if add_bos else context_len
            if len(buf) < take:
                break
            ctx, buf = buf[:take], buf[take:]
            yield np.asarray([bos_id] + ctx if add_bos else ctx, dtype=np.int32)


def harvest(model, texts, sites: Sequence, *, context_len: int = 128, batch_size: int = 8,
            drop_bos: bool = True, bos_id: int | None = None) -> Iterator[dict]:
    """Chunks {Site: [n, d] float32} of activations at ``sites``."""
    import mlx.core as mx

    from attribution import capture  # the model-access layer; imported lazily

    sites = [Site.parse(s) for s in sites]
    if bos_id is None:
        bos_id = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    ctxs: list[np.ndarray] = []
    got = False
    for ctx in pack_tokens(model, read_texts(texts), context_len, bos_id):
        ctxs.append(ctx)
        if len(ctxs) == batch_size:
            got = True
            yield _capture_chunk(capture, mx, model, np.stack(ctxs), sites, drop_bos, bos_id)
            ctxs = []
    if ctxs:
        got = True
        yield _capture_chunk(capture, mx, model, np.stack(ctxs), sites, drop_bos, bos_id)
    if not got:
        raise EmptyDatasetError(f"no context of {context_len} tokens could be packed from the texts")


def _capture_chunk(capture, mx, model, tokens: np.ndarray, sites, drop_bos, bos_id) -> dict:
    acts = capture(model, mx.array(tokens), sites)
    keep = np.ones(tokens.shape, bool)
    if drop_bos:
        keep[:, 0] = False
        if bos_id is not None:
            keep &= tokens != bos_id
    flat = keep.reshape(-1)
    out = {}
    for s in sites:
        a = np.array(acts[s].astype(mx.float32))
        out[s] = a.reshape(-1, a.shape[-1])[flat]
    return out


def harvest_source(model, texts, sites: Sequence, *, context_len: int = 128,
                   batch_size: int = 8, buffer_tokens: int = 2 ** 16,
                   outlier_factor: float | None = 10.0, drop_bos: bool = True,
                   bos_id: int | None = None) -> StreamSource:
    """A StreamSource harvesting ``sites`` from ``model`` on ``texts`` (re-iterable input)."""
    sites = [Site.parse(s) for s in sites]
    if not isinstance(texts, (str, Path)) and iter(texts) is texts:
        texts = list(texts)  # a one-shot iterator must be re-readable across passes
    dims = {s: int(model.d_model) for s in sites}
    kw = {"context_len": context_len, "batch_size": batch_size, "drop_bos": drop_bos,
          "bos_id": bos_id}

    def docs(rank: int, world: int):  # document sharding: each rank tokenises its own texts
        return (t for i, t in enumerate(read_texts(texts)) if i % world == rank)

    return StreamSource(lambda: harvest(model, texts, sites, **kw), sites, dims, buffer_tokens,
                        outlier_factor,
                        shard_chunks=lambda rank, world: harvest(model, docs(rank, world), sites, **kw))
