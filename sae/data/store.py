"""An on-disk activation store bigger than RAM: harvested in a stream, read back shuffled.

Layout of a store directory:
  ``manifest.json`` (written last: a directory without it is not a store) and
  ``shard_000000.safetensors`` ... (``sae.data.shards``: one ``[tokens, d]`` tensor per site
  in float32 or bfloat16, plus per-row norms). The manifest records the schema and
  version, the model's identity (``attribution.model_identity``) and path, the sites and
  their widths, the storage dtype, the shard size, every shard's file, token count, byte
  size and sha256, and the corpus and context settings of the harvest.

Harvest (``harvest_store`` / ``harvest_into``):
  1. Contexts are packed and run through the model in batches (``sae.data.harvest``);
     each chunk of activations is copied into a preallocated shard buffer (in the storage
     dtype: bfloat16 rounds to nearest even), which is written out whenever it holds
     ``shard_tokens`` rows. Memory: one shard plus one chunk, whatever the store's size.
  2. The harvest stops at ``tokens`` rows (the last chunk is cut) or when the corpus
     ends (recorded as ``corpus.exhausted``).
  3. ``harvest_store`` writes into a hidden temporary directory beside the target and
     renames it into place after the manifest: a crash leaves no half store. With
     ``resume=True`` the temporary directory has a fixed name (``.NAME.partial``) and a
     journal (``harvest_state.json``, rewritten after each shard: the settings, the shards
     done and where the next shard starts: context batch and row). A failed or killed
     harvest keeps it, and the next call with the same settings skips the finished
     batches without running the model (the journal of other settings is refused).
Read (``ActivationStore``):
  1. The manifest is checked (schema, fields, types; every shard present with its
     recorded size) and, given a model, the identity (``StoreMismatchError`` naming the
     store's model and this one).
  2. The stream: epoch e visits this reader's shards in the order
     ``default_rng([seed, e]).permutation``; each shard gives its rows in order, less the
     outliers (norm > ``outlier_factor`` x the shard's median at any read site, decided
     from the stored norms without reading activations). Rows are named by global ids.
  3. The shuffle buffer holds ``cap = max(2 b, min(buffer_tokens, tokens of this
     reader))`` rows. It is filled with the first cap stream rows; each batch takes b
     slots chosen by ``default_rng([seed, SLOT_STREAM])`` (the first b of a permutation of
     the slots), and the next b stream rows replace them. Memory: the buffer, one
     batch and reads of at most ``shards.RUN_ROWS`` rows, independent of the store size.
  4. The buffer's bookkeeping (which id sits in which slot) never needs data, so batches
     are ``StoreBatch`` mappings filled on first access. A batch nobody reads (the
     trainer replaying the batches before a checkpoint) costs no I/O; the next batch that
     is read reloads the buffer's current rows by id. Resumed training therefore gets the
     same batches as an uninterrupted run and reads only the buffer, not the store so far.
  5. Data-parallel shards: rank r of w reads shard files i with i % w == r (every w-th row
     of every file when there are fewer files than ranks).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from attribution.sites import Site
from sae.data.shards import DTYPES, NORMS, ShardFile, to_bf16, write_shard
from sae.errors import CacheMismatchError, ConfigError, EmptyDatasetError, FormatError

SCHEMA, VERSION = "mlx-circuits.activation-store", 1
MANIFEST = "manifest.json"
STATE = "harvest_state.json"
SHARD_BYTES = 128 * 2 ** 20
"""Default shard size in bytes (``shard_tokens=None``): big enough that file opens and
headers do not matter, small enough that the writer's shard buffer stays modest."""
SLOT_STREAM = 0x51075
"""Second word of the buffer's slot RNG seed (the first is the run's seed)."""
OPEN_SHARDS = 16
"""Shard files a reader keeps open at once."""


class StoreMismatchError(CacheMismatchError):
    """A store was harvested from another model, or lacks the sites a run needs."""


@dataclass(frozen=True)
class HarvestConfig:
    """What to harvest into a store (checked when built)."""

    sites: tuple
    """Sites to store (``Site`` or strings like ``"L3.mlp_in"``), in any order."""
    tokens: int | None
    """Token budget: the harvest stops after this many rows or when the corpus ends
    (None: the whole corpus)."""
    dtype: str = "float32"
    """Storage dtype: ``float32`` or ``bfloat16`` (half the disk; read back as float32)."""
    shard_tokens: int | None = None
    """Rows per shard file; None -> about ``SHARD_BYTES`` per shard."""
    context_len: int = 128
    """Tokens per packed context."""
    batch_size: int = 8
    """Contexts per forward."""
    drop_bos: bool = True
    """Drop position 0 and BOS tokens (their activations are outliers)."""

    def __post_init__(self) -> None:
        sites = tuple(Site.parse(s) for s in self.sites)
        if not sites:
            raise ConfigError("HarvestConfig.sites is empty; name at least one site")
        if len(set(sites)) != len(sites):
            raise ConfigError(f"HarvestConfig.sites repeats a site: {[str(s) for s in sites]}")
        object.__setattr__(self, "sites", tuple(sorted(sites, key=lambda s: s.order)))
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("tokens", "shard_tokens", "context_len", "batch_size"):
            v = getattr(self, name)
            if v is None and name in ("shard_tokens", "tokens"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")

    def shard_rows(self, dims: Mapping) -> int:
        """Rows per shard for sites of widths ``dims``."""
        if self.shard_tokens is not None:
            return self.shard_tokens
        return max(1, SHARD_BYTES // row_bytes(dims, self.dtype))

    def record(self) -> dict:
        """JSON form (the journal of a resumable harvest compares it)."""
        d = asdict(self)
        d["sites"] = [str(s) for s in self.sites]
        return d


@dataclass(frozen=True)
class HarvestProgress:
    """What the harvest's progress callback receives after each chunk."""

    tokens: int
    """Rows stored so far."""
    total_tokens: int | None
    """The token budget (None: the whole corpus)."""
    shards: int
    """Shard files written so far."""
    bytes: int
    """Bytes of shard files written so far."""
    seconds: float
    """Wall time since the harvest (or its resumption) started."""


def row_bytes(dims: Mapping, dtype: str) -> int:
    """Stored bytes per token (activations of every site plus the norms)."""
    return sum(int(d) for d in dims.values()) * DTYPES[dtype][1] + 4 * len(dims)


# ------------------------------------------------------------------ writing ----
class StoreWriter:
    """Streams chunks into shard files of one directory; ``finish`` writes the manifest."""

    def __init__(self, directory, sites: Sequence, dims: Mapping, dtype: str, shard_tokens: int,
                 shards: list | None = None):
        self.dir = Path(directory)
        self.sites = [Site.parse(s) for s in sites]
        self.dims = {Site.parse(s): int(d) for s, d in dims.items()}
        self.dtype, self.shard_tokens = dtype, int(shard_tokens)
        self.shards = list(shards or [])  # manifest entries of the shards written so far
        store_t = np.float32 if dtype == "float32" else np.uint16
        self._buf = {s: np.empty((self.shard_tokens, self.dims[s]), store_t) for s in self.sites}
        self._norms = np.empty((self.shard_tokens, len(self.sites)), np.float32)
        self.n = 0  # rows in the shard buffer

    @property
    def space(self) -> int:
        """Rows the current shard can still take."""
        return self.shard_tokens - self.n

    @property
    def tokens(self) -> int:
        """Rows written to shard files plus rows waiting in the buffer."""
        return sum(s["tokens"] for s in self.shards) + self.n

    def put(self, chunk: Mapping) -> None:
        """Append rows (at most ``space``) of {site: float32 [n, d]}; stores the rounded
        values and the norms of the values as stored."""
        n = None
        for j, s in enumerate(self.sites):
            a = np.asarray(chunk[s], np.float32)
            if a.ndim != 2 or a.shape[1] != self.dims[s]:
                raise ConfigError(f"chunk for {s} has shape {a.shape}, expected [n, {self.dims[s]}]")
            if n is None:
                n = a.shape[0]
                if n > self.space:
                    raise ConfigError(f"chunk of {n} rows exceeds the shard's free space {self.space}")
            elif a.shape[0] != n:
                raise ConfigError(f"sites of one chunk differ in rows: {a.shape[0]} vs {n}")
            dst = self._buf[s][self.n:self.n + n]
            if self.dtype == "float32":
                dst[...] = a
                stored = a
            else:
                dst[...] = to_bf16(a)
                stored = dst.astype(np.uint32) << 16
                stored = stored.view(np.float32)
            # float64 accumulation: the norm of the stored row, not of the float32 input
            self._norms[self.n:self.n + n, j] = np.sqrt(np.einsum("ij,ij->i", stored, stored,
                                                                  dtype=np.float64))
        self.n += n or 0

    def flush(self) -> dict | None:
        """Write the buffered rows as the next shard file; returns its manifest entry."""
        if self.n == 0:
            return None
        name = f"shard_{len(self.shards):06d}.safetensors"
        tensors = {str(s): self._buf[s][:self.n] for s in self.sites}
        tensors[NORMS] = self._norms[:self.n]
        size, sha = write_shard(self.dir / name, tensors, self.dtype)
        entry = {"file": name, "tokens": self.n, "bytes": size, "sha256": sha}
        self.shards.append(entry)
        self.n = 0
        return entry

    def finish(self, **fields) -> dict:
        """Flush, then write the manifest (schema, sites, dims, dtype, shards, ``fields``)."""
        self.flush()
        if not self.shards:
            raise EmptyDatasetError("no activations to store (the harvest produced no tokens)")
        man = {"schema": SCHEMA, "version": VERSION, "sites": [str(s) for s in self.sites],
               "dims": {str(s): self.dims[s] for s in self.sites}, "dtype": self.dtype,
               "shard_tokens": self.shard_tokens, "norms": NORMS,
               "n_tokens": sum(s["tokens"] for s in self.shards), "shards": self.shards, **fields}
        _write_json(self.dir / MANIFEST, man)
        return man


def _write_json(path: Path, obj) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def harvest_store(model, texts, path, config: HarvestConfig, *, corpus: Mapping | None = None,
                  progress: Callable | None = None, resume: bool = False) -> dict:
    """Harvest ``config.sites`` of ``model`` on ``texts`` into a new store at ``path``;
    returns the manifest.

    Atomic (module docstring, harvest step 3): ``path`` appears complete or not at all;
    an existing ``path`` is replaced only when the new store is complete. ``corpus``:
    JSON-able facts about the texts recorded in the manifest (a path of ``texts`` is
    recorded by default). ``progress(HarvestProgress)`` is called after each chunk and may
    raise to stop. ``resume=True``: keep the partial store on failure and continue it on
    the next call with the same settings and texts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (f".{path.name}.partial" if resume else
                         f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    if tmp.exists() and not (resume and (tmp / STATE).is_file()):
        shutil.rmtree(tmp)  # nothing journalled: shards there (if any) cannot be trusted
    tmp.mkdir(exist_ok=True)
    try:
        man = harvest_into(model, texts, tmp, config, corpus=corpus, progress=progress,
                           resume=resume)
    except BaseException:
        if not resume:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return man


def harvest_into(model, texts, directory, config: HarvestConfig, *,
                 corpus: Mapping | None = None, progress: Callable | None = None,
                 resume: bool = False) -> dict:
    """Harvest into an existing directory (empty, or a journalled partial store with
    ``resume``); the manifest is written last. Returns the manifest."""
    from attribution import model_identity
    from sae.data.harvest import harvest

    directory = Path(directory)
    d_model = int(model.d_model)
    for s in config.sites:
        s.check(model.n_layers)
    max_ctx = getattr(model, "max_context", None)
    if max_ctx and config.context_len > max_ctx:
        raise ConfigError(f"context_len={config.context_len} exceeds the model's context of "
                          f"{max_ctx} tokens; use context_len<={max_ctx}")
    dims = {s: d_model for s in config.sites}
    identity = model_identity(model)
    if corpus is None:
        corpus = {"path": str(Path(texts).resolve())} if isinstance(texts, (str, Path)) else {}
    bos_id = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    settings = {"config": config.record(), "model": identity["fingerprint"],
                "corpus": json.loads(json.dumps(corpus, sort_keys=True, default=str)),
                "bos_id": bos_id}
    state = _read_state(directory, settings) if resume else None
    if state is None and any(p.name != STATE for p in directory.iterdir()):
        raise ConfigError(f"{directory} is not empty; harvest into a new directory")
    shard_rows = config.shard_rows(dims)
    writer = StoreWriter(directory, config.sites, dims, config.dtype, shard_rows,
                         state["shards"] if state else None)
    batch, skip_rows = (state["next_batch"], state["skip_rows"]) if state else (0, 0)
    t0, exhausted = time.perf_counter(), True
    budget = math.inf if config.tokens is None else config.tokens
    chunks = harvest(model, texts, config.sites, context_len=config.context_len,
                     batch_size=config.batch_size, drop_bos=config.drop_bos, bos_id=bos_id,
                     skip_batches=batch)
    for chunk in chunks:
        n = next(iter(chunk.values())).shape[0]
        o = skip_rows
        skip_rows = 0
        while o < n and writer.tokens < budget:
            take = int(min(n - o, writer.space, budget - writer.tokens))
            writer.put({s: chunk[s][o:o + take] for s in config.sites})
            o += take
            if writer.space == 0:
                writer.flush()
                nb, sr = (batch, o) if o < n else (batch + 1, 0)
                if resume:  # where the next shard starts: a killed harvest resumes here
                    _write_json(directory / STATE, {**settings, "shards": writer.shards,
                                                     "next_batch": nb, "skip_rows": sr})
        batch += 1
        if progress is not None:
            progress(HarvestProgress(writer.tokens, config.tokens, len(writer.shards),
                                     sum(s["bytes"] for s in writer.shards),
                                     time.perf_counter() - t0))
        if writer.tokens >= budget:
            exhausted = False
            break
    chunks.close()
    man = writer.finish(
        model=identity, model_path=str(getattr(model, "path", "") or ""),
        corpus={**corpus, "exhausted": exhausted},
        context={"context_len": config.context_len, "batch_size": config.batch_size,
                 "drop_bos": config.drop_bos, "bos_id": bos_id},
        tokens_requested=config.tokens,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), writer=_version())
    (directory / STATE).unlink(missing_ok=True)
    return man


def _read_state(directory: Path, settings: dict) -> dict | None:
    p = directory / STATE
    if not p.exists():
        return None
    try:
        state = json.loads(p.read_text())
        old = {k: state[k] for k in settings}
        shards = list(state["shards"])
        int(state["next_batch"]), int(state["skip_rows"])
    except (ValueError, KeyError, TypeError):
        raise FormatError(f"{p} is corrupt; delete {directory} to start the harvest over") from None
    if old != settings:
        from sae.train.checkpoint import differences

        diffs = differences(old, settings)
        raise ConfigError(f"the partial harvest in {directory} was started with other settings "
                          f"(then -> now: {'; '.join(diffs)}); rerun with its settings, or delete "
                          "it to start over")
    keep = {s["file"] for s in shards}
    for f in directory.iterdir():  # a shard written after the journal's last update
        if f.name not in keep and f.name != STATE:
            f.unlink()
    return state


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"mlx-circuits {version('mlx-circuits')}"
    except Exception:
        return "mlx-circuits"


# ------------------------------------------------------------------ reading ----
def read_manifest(path) -> dict:
    """The checked manifest of the store at ``path`` (``FormatError`` naming the problem)."""
    path = Path(path)
    mp = path / MANIFEST
    if not path.exists():
        raise FormatError(f"activation store {path} does not exist; harvest one with "
                          "`circuits harvest --out DIR` (or sae.data.store.harvest_store)")
    if not path.is_dir():
        raise FormatError(f"activation store {path} is a file; pass the store's directory")
    if not mp.is_file():
        raise FormatError(f"{path} is not an activation store (no {MANIFEST}; an unfinished "
                          "harvest leaves none): harvest it again")
    try:
        man = json.loads(mp.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{mp} is not valid JSON ({str(e).splitlines()[0]}): the manifest is "
                          "corrupt; harvest the store again") from None
    bad = f"{mp} is not a valid activation-store manifest"
    if not isinstance(man, dict):
        raise FormatError(f"{bad} (not a JSON object); harvest the store again")
    if man.get("schema") != SCHEMA:
        raise FormatError(f"{path} is not an activation store (schema {man.get('schema')!r}, "
                          f"expected {SCHEMA!r})")
    if not isinstance(man.get("version"), int) or man["version"] > VERSION:
        raise FormatError(f"{bad}: version {man.get('version')!r} is newer than this reader's "
                          f"{VERSION}; upgrade mlx-circuits")
    try:
        sites = [Site.parse(s) for s in man["sites"]]
        dims = {Site.parse(k): v for k, v in man["dims"].items()}
        shards = man["shards"]
        ok = (sites and set(dims) == set(sites)
              and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in dims.values())
              and man["dtype"] in DTYPES and isinstance(shards, list) and shards
              and all(isinstance(s, dict) and isinstance(s.get("file"), str) and "/" not in s["file"]
                      and isinstance(s.get("tokens"), int) and s["tokens"] > 0
                      and isinstance(s.get("bytes"), int) for s in shards)
              and man["n_tokens"] == sum(s["tokens"] for s in shards)
              and isinstance(man["model"], dict))
    except KeyError as e:
        raise FormatError(f"{bad} (field {e} is missing); harvest the store again") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise FormatError(f"{bad} (a malformed field: {str(e).splitlines()[0]}); harvest the "
                          "store again") from None
    if not ok:
        raise FormatError(f"{bad} (inconsistent sites, dims, dtype, shards or token counts); "
                          "harvest the store again")
    return man


def store_fingerprint(manifest: Mapping) -> str:
    """Content hash of a manifest without its creation time; the manifest holds every
    shard's sha256, so two stores with the same fingerprint hold the same activations."""
    body = {k: v for k, v in manifest.items() if k not in ("created", "writer")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


class ActivationStore:
    """A store read back as an ``ActivationSource`` (module docstring, read steps 1-5)."""

    def __init__(self, path, *, model=None, identity: Mapping | None = None, sites=None,
                 buffer_tokens: int = 2 ** 16, outlier_factor: float | None = 10.0,
                 epochs: int | None = None):
        self.path = Path(path)
        self.manifest = man = read_manifest(self.path)
        if isinstance(buffer_tokens, bool) or not isinstance(buffer_tokens, int) or buffer_tokens < 1:
            raise ConfigError(f"buffer_tokens must be an integer >= 1, got {buffer_tokens!r}")
        if outlier_factor is not None and not (outlier_factor > 0):
            raise ConfigError(f"outlier_factor must be > 0 or None, got {outlier_factor!r}")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise ConfigError(f"epochs must be None or an integer >= 1, got {epochs!r}")
        self.buffer_tokens, self.outlier_factor, self.epochs = buffer_tokens, outlier_factor, epochs
        if model is not None or identity is not None:
            self.check_model(model, identity)
        have = [Site.parse(s) for s in man["sites"]]
        want = have if sites is None else [Site.parse(s) for s in sites]
        missing = [str(s) for s in want if s not in have]
        if missing:
            raise StoreMismatchError(
                f"activation store {self.path} has no activations for {', '.join(missing)} (it "
                f"holds {', '.join(map(str, have))}); harvest those sites or train on these")
        self.sites = tuple(sorted(dict.fromkeys(want), key=lambda s: s.order))
        self.dims = {s: int(man["dims"][str(s)]) for s in self.sites}
        self.dtype = man["dtype"]
        self._all_sites = have  # column order of the stored norms
        entries = man["shards"]
        self._offsets = np.cumsum([0] + [e["tokens"] for e in entries]).astype(np.int64)
        for e in entries:  # cheap completeness check: every file there, of its recorded size
            f = self.path / e["file"]
            if not f.is_file():
                raise FormatError(f"shard {f} is missing; the store is incomplete: harvest it again")
            if f.stat().st_size != e["bytes"]:
                raise FormatError(f"shard {f} has {f.stat().st_size} bytes, the manifest says "
                                  f"{e['bytes']} (truncated or replaced); harvest the store again")
        self._files = list(range(len(entries)))  # shard files this reader streams
        self._row_mod: tuple[int, int] | None = None  # (rank, world) when sharding by rows
        self._open: OrderedDict[int, ShardFile] = OrderedDict()
        self.rows_read = 0
        """Rows read from disk so far (over all sites counted once); for tests and benchmarks."""

    # ---------------------------------------------------------------- facts ----
    @property
    def n_tokens(self) -> int:
        """Tokens this reader streams per epoch before outlier removal."""
        if self._row_mod is None:
            return int(sum(self.manifest["shards"][i]["tokens"] for i in self._files))
        r, w = self._row_mod
        return int(sum(len(range(r, self.manifest["shards"][i]["tokens"], w)) for i in self._files))

    @property
    def fingerprint(self) -> str:
        """``store_fingerprint`` of the manifest."""
        return store_fingerprint(self.manifest)

    @property
    def identity(self) -> dict:
        """The recorded ``model_identity`` of the model the store was harvested from."""
        return dict(self.manifest["model"])

    def check_model(self, model=None, identity: Mapping | None = None) -> None:
        """``StoreMismatchError`` naming both models unless ``model`` (or ``identity``) is
        the model the store was harvested from (``attribution`` identity rules)."""
        from attribution.model.integrity import describe_identity, identity_mismatch, model_identity

        current = dict(identity) if identity is not None else model_identity(model)
        why = identity_mismatch(self.manifest["model"], current)
        if why is not None:
            src = self.manifest.get("model_path") or describe_identity(self.manifest["model"])
            raise StoreMismatchError(
                f"activation store {self.path} was harvested from "
                f"{describe_identity(self.manifest['model'])} at {src}, not from "
                f"{describe_identity(current)} ({why}); use that model or harvest a new store")

    def verify(self) -> None:
        """Read every shard file and compare its sha256 with the manifest's
        (``FormatError`` naming the first file that differs)."""
        from sae.data.shards import file_sha256

        for e in self.manifest["shards"]:
            if "sha256" in e and file_sha256(self.path / e["file"]) != e["sha256"]:
                raise FormatError(f"shard {self.path / e['file']} does not match the sha256 in "
                                  "the manifest (corrupt or replaced); harvest the store again")

    def shard(self, rank: int, world: int) -> ActivationStore:
        """Rank ``rank``'s part of the store (module docstring, read step 5)."""
        if world == 1:
            return self
        part = object.__new__(ActivationStore)
        part.__dict__.update(self.__dict__)
        part._open, part.rows_read = OrderedDict(), 0
        n = len(self.manifest["shards"])
        if n >= world:
            part._files = [i for i in range(n) if i % world == rank]
        else:
            part._row_mod = (rank, world)
        return part

    # ----------------------------------------------------------------- rows ----
    def _shard(self, i: int) -> ShardFile:
        f = self._open.pop(i, None)
        if f is None:
            e = self.manifest["shards"][i]
            f = ShardFile(self.path / e["file"])
            for s in self._all_sites:
                f.check(str(s), self.dtype, e["tokens"], int(self.manifest["dims"][str(s)]))
            f.check(NORMS, self.dtype, e["tokens"], len(self._all_sites))
            if len(self._open) >= OPEN_SHARDS:
                self._open.popitem(last=False)[1].close()
        self._open[i] = f
        return f

    def _kept(self, i: int) -> np.ndarray:
        """Global ids of shard i's rows this reader streams, outliers removed."""
        n = self.manifest["shards"][i]["tokens"]
        rows = np.arange(n, dtype=np.int64)
        if self._row_mod is not None:
            rows = rows[self._row_mod[0]::self._row_mod[1]]
        if self.outlier_factor and rows.size:
            norms = self._shard(i).read_all(NORMS)[rows]
            cols = [self._all_sites.index(s) for s in self.sites]
            norms = norms[:, cols]
            ok = (norms <= self.outlier_factor * np.median(norms, axis=0)).all(axis=1)
            rows = rows[ok]
        return rows + self._offsets[i]

    def gather(self, ids: np.ndarray, out: dict | None = None, at: np.ndarray | None = None) -> dict:
        """{site: float32 rows} of global row ``ids`` (any order); with ``out``, row j goes to
        ``out[site][at[j]]`` (``at`` defaults to 0..len(ids)-1)."""
        ids = np.asarray(ids, np.int64)
        if out is None:
            out = {s: np.empty((ids.size, self.dims[s]), np.float32) for s in self.sites}
        at = np.arange(ids.size) if at is None else np.asarray(at)
        order = np.argsort(ids, kind="stable")
        sids, sat = ids[order], at[order]
        fi = np.searchsorted(self._offsets, sids, side="right") - 1
        bounds = np.flatnonzero(np.diff(fi)) + 1
        for a, b in zip(np.concatenate([[0], bounds]).tolist(),
                        np.concatenate([bounds, [sids.size]]).tolist()):
            if a == b:
                continue
            i = int(fi[a])
            f = self._shard(i)
            rows = sids[a:b] - self._offsets[i]
            for s in self.sites:
                f.read_rows(str(s), rows, out=out[s], at=sat[a:b])
            self.rows_read += b - a
        return out

    def chunks(self) -> Iterator[dict]:
        """{site: float32 [tokens, d]} per shard of this reader, in store order (no shuffle,
        no outlier removal): for passes over the whole store, one shard in memory at a time."""
        for i in self._files:
            lo = self._offsets[i]
            n = self.manifest["shards"][i]["tokens"]
            rows = np.arange(n, dtype=np.int64)
            if self._row_mod is not None:
                rows = rows[self._row_mod[0]::self._row_mod[1]]
            yield self.gather(rows + lo)

    def close(self) -> None:
        """Close the open shard files (reopened on demand)."""
        while self._open:
            self._open.popitem()[1].close()

    # -------------------------------------------------------------- batches ----
    def buffer_rows(self, batch_tokens: int) -> int:
        """Rows of the shuffle buffer for batches of ``batch_tokens`` (read step 3)."""
        return max(2 * batch_tokens, min(self.buffer_tokens, self.n_tokens))

    def batches(self, batch_tokens: int, seed: int) -> Iterator[StoreBatch]:
        """Shuffled batches {Site: float32 [batch_tokens, d]} (module docstring, read steps
        2-4); endless unless ``epochs`` was given. Deterministic given ``seed``."""
        if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
            raise ConfigError(f"batch_tokens must be an integer >= 1, got {batch_tokens!r}")
        return _Mixer(self, batch_tokens, seed).run()

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, {self.manifest['n_tokens']} tokens, "
                f"sites={[str(s) for s in self.sites]}, dtype={self.dtype})")


class _Cursor:
    """The stream of global row ids (read step 2)."""

    def __init__(self, store: ActivationStore, seed: int):
        self.store, self.seed = store, seed
        self.epoch, self.pos, self.row, self.epoch_rows = 0, 0, 0, 0
        self.order = self._order(0)
        self.kept: np.ndarray | None = None

    def _order(self, epoch: int) -> list:
        files = self.store._files
        return [files[j] for j in np.random.default_rng([self.seed, epoch]).permutation(len(files))]

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` ids (fewer only when the last epoch ends)."""
        parts, need = [], n
        while need > 0:
            if self.pos == len(self.order):
                if self.epoch_rows == 0:
                    raise self._empty()
                self.epoch += 1
                if self.store.epochs is not None and self.epoch >= self.store.epochs:
                    break
                self.order, self.pos, self.epoch_rows = self._order(self.epoch), 0, 0
            if self.kept is None:
                self.kept = self.store._kept(self.order[self.pos])
            got = self.kept[self.row:self.row + need]
            parts.append(got)
            self.row += got.size
            need -= got.size
            self.epoch_rows += got.size
            if self.row >= self.kept.size:
                self.pos, self.row, self.kept = self.pos + 1, 0, None
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _empty(self) -> EmptyDatasetError:
        st = self.store
        if st.n_tokens == 0:
            return EmptyDatasetError(f"activation store {st.path} gives this reader no rows (a "
                                     "data-parallel rank without shard files or rows)")
        return EmptyDatasetError(
            f"every one of the {st.n_tokens} tokens of {st.path} was dropped as an outlier (norm "
            f"> {st.outlier_factor} x median); raise or disable outlier_factor")


class _Mixer:
    """The shuffle buffer (read steps 3-4): slot bookkeeping by id, data filled lazily."""

    def __init__(self, store: ActivationStore, batch_tokens: int, seed: int):
        self.store, self.b = store, batch_tokens
        self.cap = store.buffer_rows(batch_tokens)
        self.cursor = _Cursor(store, seed)
        self.rng = np.random.default_rng([seed, SLOT_STREAM])
        self.slot_ids = np.zeros(0, np.int64)
        self.buf: dict | None = None  # {site: float32 [cap, d]}, allocated on first read
        self.synced = False  # buf holds the rows of slot_ids
        self.k = -1  # index of the batch last yielded

    def run(self) -> Iterator[StoreBatch]:
        self.slot_ids = self.cursor.take(self.cap)
        while True:
            n = self.slot_ids.size
            if n < self.b:
                return
            pos = self.rng.permutation(n)[:self.b]
            self.k += 1
            batch = StoreBatch(self, self.k, pos, self.slot_ids[pos].copy())
            yield batch
            new = self.cursor.take(self.b)
            fill = pos[:new.size]
            self.slot_ids[fill] = new
            if batch._data is not None and self.synced:
                self.store.gather(new, out=self.buf, at=fill)
            else:
                self.synced = False  # skipped batch: reload by id when a batch is next read
            if new.size < self.b:  # the last epoch ended: drop the emptied slots
                keep = np.ones(n, bool)
                keep[pos[new.size:]] = False
                self.slot_ids = self.slot_ids[keep]
                if self.synced:
                    m = self.slot_ids.size
                    for s in self.buf:
                        self.buf[s][:m] = self.buf[s][:n][keep]

    def data(self, batch: StoreBatch) -> dict:
        if batch.k != self.k:  # read after the stream moved on: straight from the shards
            return self.store.gather(batch.ids)
        if not self.synced:
            if self.buf is None:
                self.buf = {s: np.empty((self.cap, d), np.float32)
                            for s, d in self.store.dims.items()}
            n = self.slot_ids.size
            self.store.gather(self.slot_ids, out=self.buf, at=np.arange(n))
            self.synced = True
        return {s: a[batch.pos] for s, a in self.buf.items()}


class StoreBatch(Mapping):
    """One batch {Site: float32 [b, d]}, read from the buffer on first access."""

    def __init__(self, mixer: _Mixer, k: int, pos: np.ndarray, ids: np.ndarray):
        self._mixer, self.k, self.pos = mixer, k, pos
        self.ids = ids
        """Global row ids of the batch (rows of the store in manifest order)."""
        self._data: dict | None = None

    def arrays(self) -> dict:
        """The batch's arrays (read now if not yet)."""
        if self._data is None:
            self._data = self._mixer.data(self)
        return self._data

    def __getitem__(self, site):
        return self.arrays()[Site.parse(site)]

    def __iter__(self):
        return iter(self._mixer.store.sites)

    def __len__(self) -> int:
        return len(self._mixer.store.sites)

    @property
    def loaded(self) -> bool:
        """Whether the data has been read."""
        return self._data is not None


__all__ = ["ActivationStore", "HarvestConfig", "HarvestProgress", "SCHEMA", "StoreBatch",
           "StoreMismatchError", "StoreWriter", "VERSION", "harvest_into", "harvest_store",
           "read_manifest", "row_bytes", "store_fingerprint"]
