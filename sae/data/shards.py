"""Shard files of an activation store: safetensors written and read row by row.

A shard is a standard safetensors file (any safetensors reader, ``mx.load`` included,
opens it): one ``[tokens, d]`` tensor per site, named ``str(site)``, stored as F32 or
BF16, plus ``__norms__`` ``[tokens, n_sites]`` F32 (each row's L2 norm per site, of the
stored values) so a reader can drop outlier rows without reading the activations.

Writing (``write_shard``):
  1. Build the header: tensors in the given order, contiguous, offsets relative to the
     data section; pad the header JSON with spaces to a multiple of 8 bytes (as the
     safetensors library does).
  2. Write the header, then each tensor's bytes, into ``.NAME.tmp`` beside the target
     (hashing them on the way: the manifest records each shard's sha256), then
     ``os.replace`` it into place: a shard file is whole or absent.
Reading (``ShardFile``):
  1. ``open`` parses the header once (a short or unparsable header, or a file shorter
     than its header says, raises ``FormatError`` naming the file) and keeps the file
     descriptor.
  2. ``read_rows(name, rows)`` takes sorted row indices, merges them into runs (rows
     closer than ``GAP_ROWS`` share one read, a run is at most ``RUN_ROWS`` rows so the
     temporary stays small), reads each run with ``os.pread`` straight into a numpy
     buffer and returns float32 rows; BF16 is widened exactly (bfloat16 is the top half
     of a float32).
Nothing is memory-mapped: the resident memory of a reader is what it keeps.

``to_bf16`` rounds float32 to bfloat16 bits (round to nearest, ties to even; NaN stays
NaN), the same rounding as MLX's ``astype(mx.bfloat16)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from sae.errors import FormatError

NORMS = "__norms__"
"""Name of the per-row norm tensor in every shard."""
DTYPES = {"float32": ("F32", 4), "bfloat16": ("BF16", 2)}
"""Storage dtypes: name -> (safetensors dtype, bytes per value)."""
GAP_ROWS = 16
"""Rows this close together are read in one ``pread`` (reading a few unused rows is
cheaper than another system call)."""
RUN_ROWS = 4096
"""Most rows read by one ``pread`` (bounds the temporary of a read)."""


def to_bf16(a: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) of float32 values: round to nearest, ties to even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    # adding 0x7FFF plus the kept lowest bit rounds half to even in one integer add
    r = ((u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():  # the add could carry a NaN payload into the sign bit
        r[nan] = 0x7FC0
    return r


def bf16_to_f32(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 values of bfloat16 bits (exact)."""
    wide = bits.astype(np.uint32)
    wide <<= 16  # in place: one temporary, not two
    f = wide.view(np.float32)
    if out is None:
        return f
    out[...] = f
    return out


def write_shard(path, tensors: dict[str, np.ndarray], dtype: str) -> tuple[int, str]:
    """Write ``tensors`` (activations in ``dtype``'s storage form, norms float32) as a
    safetensors file, atomically; returns (file size in bytes, sha256 of the file).

    Activation arrays are float32 (``dtype="float32"``) or uint16 bfloat16 bits
    (``"bfloat16"``); ``NORMS`` is always float32."""
    path = Path(path)
    header, offset, parts = {}, 0, []
    for name, a in tensors.items():
        st = "F32" if name == NORMS else DTYPES[dtype][0]
        want = np.float32 if st == "F32" else np.uint16
        if a.dtype != want:
            raise TypeError(f"tensor {name}: {a.dtype} cannot be stored as {st}")
        a = np.ascontiguousarray(a)
        header[name] = {"dtype": st, "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        parts.append(a)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.parent / f".{path.name}.tmp"
    digest = hashlib.sha256()
    with open(tmp, "wb") as f:
        for piece in (len(blob).to_bytes(8, "little"), blob, *(memoryview(a).cast("B") for a in parts)):
            digest.update(piece)  # hashed while written: the file is never read back
            f.write(piece)  # arrays as memoryviews: no copy
    os.replace(tmp, path)
    return 8 + len(blob) + offset, digest.hexdigest()


def file_sha256(path) -> str:
    """sha256 of a file, read in 8 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(8 * 2 ** 20):
            h.update(piece)
    return h.hexdigest()


def _pread_into(fd: int, buf: np.ndarray, offset: int) -> int:
    """Read ``buf.nbytes`` bytes at ``offset`` into ``buf``; returns the bytes read."""
    view = memoryview(buf).cast("B")
    if hasattr(os, "preadv"):  # straight into the array: no intermediate bytes object
        done = 0
        while done < len(view):  # a regular file returns short reads only at its end
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                break
            done += n
        return done
    data = os.pread(fd, len(view), offset)
    view[:len(data)] = data
    return len(data)


class ShardFile:
    """One shard opened for row reads (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise FormatError(f"shard {self.path} is missing; the store is incomplete: "
                              "harvest it again") from None
        except OSError as e:
            raise FormatError(f"cannot open shard {self.path}: {e.strerror or e}") from None
        try:
            self.tensors, self.data_start = self._header()
        except BaseException:
            os.close(self.fd)
            raise

    def _header(self):
        size = os.fstat(self.fd).st_size
        bad = f"shard {self.path} is not a readable safetensors file"
        head = os.pread(self.fd, 8, 0)
        if len(head) < 8:
            raise FormatError(f"{bad} (only {size} bytes: truncated); harvest the store again")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, 100 * 2 ** 20):
            raise FormatError(f"{bad} (header of {n} bytes in a {size}-byte file: truncated or "
                              "corrupt); harvest the store again")
        try:
            header = json.loads(os.pread(self.fd, n, 8))
        except (ValueError, UnicodeDecodeError):
            raise FormatError(f"{bad} (its header is not JSON: corrupt); harvest the store "
                              "again") from None
        header.pop("__metadata__", None)
        tensors, end = {}, 0
        for name, info in header.items():
            try:
                st, shape, (lo, hi) = info["dtype"], [int(x) for x in info["shape"]], info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise FormatError(f"{bad} (tensor {name!r} has a malformed header entry)") from None
            tensors[name] = (st, tuple(shape), int(lo), int(hi))
            end = max(end, int(hi))
        if 8 + n + end > size:
            raise FormatError(f"shard {self.path} is truncated ({size} bytes, its header needs "
                              f"{8 + n + end}); harvest the store again")
        return tensors, 8 + n

    def check(self, name: str, dtype: str, rows: int, width: int) -> None:
        """FormatError unless tensor ``name`` is ``[rows, width]`` of storage ``dtype``."""
        st = "F32" if name == NORMS else DTYPES[dtype][0]
        info = self.tensors.get(name)
        if info is None:
            raise FormatError(f"shard {self.path} has no tensor {name!r} (it holds "
                              f"{sorted(self.tensors)}); the store is corrupt: harvest it again")
        if info[0] != st or info[1] != (rows, width) or info[3] - info[2] != rows * width * (
                4 if st == "F32" else 2):
            raise FormatError(f"shard {self.path}: tensor {name} is {info[0]} {list(info[1])}, the "
                              f"manifest says {st} {[rows, width]}; the store is corrupt: harvest "
                              "it again")

    def read_rows(self, name: str, rows: np.ndarray, out: np.ndarray | None = None,
                  at: np.ndarray | None = None) -> np.ndarray:
        """float32 rows of tensor ``name`` at ascending ``rows`` (module docstring).

        Row ``rows[i]`` goes to ``out[i]``, or to ``out[at[i]]`` when ``at`` is given (a
        scatter into a larger buffer without a temporary of the whole selection)."""
        st, shape, lo, _ = self.tensors[name]
        d = shape[1]
        item = 4 if st == "F32" else 2
        rows = np.asarray(rows, np.int64)
        if out is None:
            out = np.empty((rows.size, d), np.float32)
        if rows.size == 0:
            return out
        # run starts: where the next row is too far from the previous one (or a run is full)
        cut = np.flatnonzero(np.diff(rows) > GAP_ROWS) + 1
        starts = np.concatenate([[0], cut])
        ends = np.concatenate([cut, [rows.size]])
        for a, b in zip(starts.tolist(), ends.tolist()):
            while a < b:
                first = int(rows[a])
                # rows[a:stop] all lie within RUN_ROWS of ``first``
                stop = a + int(np.searchsorted(rows[a:b], first + RUN_ROWS))
                last = int(rows[stop - 1])
                span = last - first + 1
                raw = np.empty((span, d), np.float32 if item == 4 else np.uint16)
                if _pread_into(self.fd, raw, self.data_start + lo + first * d * item) != raw.nbytes:
                    raise FormatError(f"shard {self.path} ended early while reading (truncated "
                                      "after it was opened?); harvest the store again")
                got = raw if span == stop - a else raw[rows[a:stop] - first]
                if item == 2:
                    got = bf16_to_f32(got)
                if at is None:
                    out[a:stop] = got
                else:
                    out[at[a:stop]] = got
                a = stop
        return out

    def read_all(self, name: str) -> np.ndarray:
        """The whole tensor ``name`` as float32."""
        n = self.tensors[name][1][0]
        return self.read_rows(name, np.arange(n))

    def close(self) -> None:
        """Release the file descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
