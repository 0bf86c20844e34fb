"""On-disk activation cache: safetensors shards plus a JSON manifest (the older format).

New code writes activation stores instead (``sae.data.store``: shards of a chosen size,
bfloat16 storage, the model's identity, a shuffle buffer of bounded memory and exact,
I/O-free resume); ``train_on_model(cache_dir=...)`` writes stores and still reads caches.

1. ``write_cache(dir, chunks, model_id, model_hash, dims)`` writes each chunk as
   ``shard_{i:05d}.safetensors`` (one tensor per site, named ``str(site)``) into a
   temporary directory, then the manifest (schema, version, model id and config
   hash, sites, widths, dtype, shard token counts), then renames the directory
   into place: a crash leaves no half cache.
2. ``ActivationCache(dir, model_id=..., model_hash=...)`` checks the manifest
   against the expected model (``CacheMismatchError`` otherwise) and is a
   ``StreamSource`` over its shards (mixing buffer, outlier drop). For data-parallel
   training each rank reads shard files i with i % world == rank (every world-th row
   of every file when there are fewer files than ranks).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from attribution.sites import Site
from sae.data.source import StreamSource
from sae.errors import CacheMismatchError, EmptyDatasetError, FormatError
from sae.io._files import atomic_dir, read_json, read_tensors, write_json, write_tensors

SCHEMA, VERSION = "mlx-circuits.activation-cache", 1


def config_hash(config: Mapping) -> str:
    """Stable short hash of a model config dict (sorted-key JSON, sha256)."""
    blob = json.dumps(dict(config), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_cache(path, chunks: Iterable[Mapping], *, model_id: str, model_hash: str,
                dims: Mapping, dtype: str = "float32") -> Path:
    """Write chunks {Site: [n, d]} as shards; returns the cache directory."""
    dims = {Site.parse(s): int(d) for s, d in dims.items()}
    shards = []
    with atomic_dir(path) as tmp:
        for i, chunk in enumerate(chunks):
            c = {Site.parse(s): np.asarray(a, dtype=dtype).reshape(-1, np.shape(a)[-1])
                 for s, a in chunk.items()}
            for s, d in dims.items():
                if s not in c or c[s].shape[1] != d:
                    raise CacheMismatchError(f"chunk {i} lacks site {s} of width {d}")
            name = f"shard_{i:05d}.safetensors"
            write_tensors(tmp / name, {str(s): c[s] for s in dims})
            shards.append({"file": name, "tokens": int(next(iter(c.values())).shape[0])})
        if not shards:
            raise EmptyDatasetError("no activation chunks to cache")
        write_json(tmp / "manifest.json", {
            "schema": SCHEMA, "version": VERSION, "model_id": model_id, "model_hash": model_hash,
            "sites": [str(s) for s in dims], "dims": {str(s): d for s, d in dims.items()},
            "dtype": dtype, "shards": shards})
    return Path(path)


class ActivationCache(StreamSource):
    """A cached activation set, checked against the model that should have produced it."""

    def __init__(self, path, *, model_id: str | None = None, model_hash: str | None = None,
                 sites=None, buffer_tokens: int = 2 ** 16, outlier_factor: float | None = 10.0):
        self.path = Path(path)
        man = read_json(self.path / "manifest.json")
        if man.get("schema") != SCHEMA:
            raise FormatError(f"{self.path}: not an activation cache (schema {man.get('schema')!r})")
        for key, want in (("model_id", model_id), ("model_hash", model_hash)):
            if want is not None and man.get(key) != want:
                raise CacheMismatchError(
                    f"{self.path} was written for {key}={man.get(key)!r}, not {want!r}; "
                    "delete it or point to another cache directory")
        have = [Site.parse(s) for s in man["sites"]]
        want_sites = have if sites is None else [Site.parse(s) for s in sites]
        missing = [str(s) for s in want_sites if s not in have]
        if missing:
            raise CacheMismatchError(f"{self.path} has no activations for sites {missing}")
        self.manifest = man
        dims = {s: man["dims"][str(s)] for s in want_sites}
        super().__init__(self._chunks, want_sites, dims, buffer_tokens, outlier_factor,
                         shard_chunks=self._shard_chunks)

    @property
    def n_tokens(self) -> int:
        """Tokens stored."""
        return sum(s["tokens"] for s in self.manifest["shards"])

    def _shard_chunks(self, rank: int, world: int):
        files = self.manifest["shards"]
        if len(files) >= world:
            return self._chunks(files[rank::world])
        return ({s: a[rank::world] for s, a in c.items()} for c in self._chunks())

    def _chunks(self, files=None):
        for shard in self.manifest["shards"] if files is None else files:
            arrays = read_tensors(self.path / shard["file"], required=[str(s) for s in self.sites])
            yield {s: arrays[str(s)] for s in self.sites}
