"""Harvesting activations from a model (uses ``attribution``'s model-access API).

1. Texts come from a file path (.jsonl / .json / .parquet, any case: a ``text`` column
   via pandas; any other suffix: UTF-8 text, one document per line) or any iterable
   of strings. A string is always a path.
2. Each text is tokenised with ``model.encode`` and the tokens are packed into
   contexts of ``context_len`` (documents concatenated; BOS kept where the
   tokenizer puts it).
3. ``capture(model, tokens [B,T], sites)`` runs one forward that stops after the
   deepest site; activations are flattened to [B*T, d], optionally dropping
   position 0 / BOS tokens (``context_batches`` gives the token batches alone, so a
   resumed harvest can skip batches without running them). The first chunk is checked finite
   (``attribution.check_finite``) so a broken model fails before any training.
   When nothing can be packed the error says why: no documents at all, or fewer
   tokens in the whole corpus than one context needs.
4. ``harvest_source`` wraps this in a ``StreamSource`` (mixing buffer, outliers);
   its data-parallel shards read documents i with i % world == rank.
5. ``sae.data.store.harvest_store`` writes the chunks to an on-disk store instead
   (sharded safetensors, streamed: bigger than RAM).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from attribution.sites import Site
from sae.data.source import StreamSource
from sae.errors import EmptyDatasetError, FormatError


STRUCTURED = (".jsonl", ".ndjson", ".json", ".parquet")
"""Suffixes (compared case-insensitively) read as tables with a ``text`` column; any
other file is plain text, one document per non-blank line."""


def read_texts(src: str | Path | Iterable[str], column: str = "text") -> Iterator[str]:
    """Documents from a file path (str or Path: always a path, never the text itself) or
    from an iterable of strings.

    .jsonl/.ndjson/.json/.parquet (any case) are read as tables with a ``column``
    column; every other file, whatever its suffix (.txt, .md, .csv, none), is UTF-8 text
    with one document per non-blank line. A missing path, a directory, undecodable bytes
    or a table without the column raise ``FormatError`` naming the file."""
    if isinstance(src, (str, Path)):
        yield from _read_file(Path(src), column)
        return
    yield from src


def _read_file(p: Path, column: str) -> Iterator[str]:
    if not p.exists():
        raise FormatError(f"text file {p} does not exist")
    if p.is_dir():
        raise FormatError(f"{p} is a directory; give a text file (.txt, .jsonl, .parquet, ...)")
    suffix = p.suffix.lower()
    if suffix not in STRUCTURED:
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"{p} is not UTF-8 text (bad byte at offset {e.start}); convert it "
                              "to UTF-8 or give a .jsonl/.parquet file with a text column") from None
        except OSError as e:
            raise FormatError(f"cannot read {p}: {e.strerror or e}") from None
        yield from (ln for ln in text.splitlines() if ln.strip())
        return
    import pandas as pd

    try:
        if suffix == ".parquet":
            df = pd.read_parquet(p)
        else:
            df = pd.read_json(p, lines=suffix in (".jsonl", ".ndjson"))
    except ImportError as e:
        raise FormatError(f"reading {p} needs a parquet engine ({e}); pip install pyarrow, "
                          "or give the corpus as .jsonl") from None
    except Exception as e:  # pandas raises ValueError / ArrowInvalid / ... for bad files
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"{p} is not a valid {suffix.lstrip('.')} file ({first})") from None
    if column not in df.columns:
        raise FormatError(f"{p} has no {column!r} column (columns: {list(df.columns)})")
    yield from (str(t) for t in df[column])


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


def context_batches(model, texts, *, context_len: int = 128, batch_size: int = 8,
                    bos_id: int | None = None, counter: _Counter | None = None
                    ) -> Iterator[np.ndarray]:
    """Token batches ``[<= batch_size, context_len]`` int32, exactly as ``harvest`` runs
    them (the last batch may be short); ``counter`` counts documents and tokens read."""
    count = counter if counter is not None else _Counter(model)
    ctxs: list[np.ndarray] = []
    for ctx in pack_tokens(count, count.docs(read_texts(texts)), context_len, bos_id):
        ctxs.append(ctx)
        if len(ctxs) == batch_size:
            yield np.stack(ctxs)
            ctxs = []
    if ctxs:
        yield np.stack(ctxs)


def harvest(model, texts, sites: Sequence, *, context_len: int = 128, batch_size: int = 8,
            drop_bos: bool = True, bos_id: int | None = None, skip_batches: int = 0
            ) -> Iterator[dict]:
    """Chunks {Site: [n, d] float32} of activations at ``sites``, one per forward.

    ``skip_batches``: tokenise and pack the first ``skip_batches`` context batches but run
    no forward on them (a resumed harvest continues where it stopped)."""
    import mlx.core as mx

    from attribution import capture  # the model-access layer; imported lazily

    sites = [Site.parse(s) for s in sites]
    if bos_id is None:
        bos_id = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    count = _Counter(model)
    n_batches, n_chunks = 0, 0
    for tokens in context_batches(model, texts, context_len=context_len, batch_size=batch_size,
                                  bos_id=bos_id, counter=count):
        n_batches += 1
        if n_batches <= skip_batches:
            continue
        yield _checked(n_chunks, _capture_chunk(capture, mx, model, tokens, sites, drop_bos,
                                                bos_id))
        n_chunks += 1
    if not n_batches:
        raise _too_short(count, context_len, bos_id)


class _Counter:
    """Counts the documents and tokens that go into ``pack_tokens`` (for the error message)."""

    def __init__(self, model):
        self.model, self.n_docs, self.n_tokens = model, 0, 0

    def docs(self, texts):
        for t in texts:
            self.n_docs += 1
            yield t

    def encode(self, text):
        ids = self.model.encode(text)
        self.n_tokens += len(ids)
        return ids


def _too_short(count: _Counter, context_len: int, bos_id) -> EmptyDatasetError:
    if count.n_docs == 0:
        return EmptyDatasetError("the corpus holds no documents (an empty file or an empty list "
                                 "of texts); give a corpus with text in it")
    need = context_len - 1 if bos_id is not None else context_len
    return EmptyDatasetError(
        f"the corpus is too short: {count.n_docs} document(s) with {count.n_tokens} tokens in "
        f"all, but one context of {context_len} tokens needs {need}; give a longer corpus")


def _checked(i: int, chunk: dict) -> dict:
    if i == 0:  # the first chunk only: a model that yields NaN/inf does so at once
        from attribution import check_finite

        for s, a in chunk.items():
            check_finite(f"activations at {s}", a,
                         fix="the model computes NaN/inf on this corpus; check its weights "
                             "(circuits doctor) or load it in float32")
    return chunk


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
