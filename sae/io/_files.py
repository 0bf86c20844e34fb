"""Safe file helpers: atomic directory writes and checked safetensors reads.

Weights are read once, without a second copy (``read_checked``):
  1. ``mx.load`` parses the header only (missing, truncated or corrupt files fail
     here, before any data is read); every tensor is a lazy array.
  2. Tensor by tensor: read it (MLX reads into its own memory; nothing is
     memory-mapped, so the resident size is what is kept) and sum it. A tensor
     stored in another float dtype is cast to float32: small ones whole, large
     safetensors ones (over 4 MiB stored) in 4 MiB chunks read from the file into a
     float32 array allocated once, so no full-size copy in the stored dtype exists.
  3. A non-finite sum (NaN/inf, or a float16 sum overflowing) triggers the exact
     check (``check_finite_tensors``), which names the first tensor with NaN or inf.
  4. Importers then build what they keep from these float32 arrays (transposes are
     views) and drop the rest.
Peak memory while loading: the kept float32 arrays plus a few chunk-sized temporaries
(about 30 MiB) or one tensor under 4 MiB.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import numpy as np
from safetensors.numpy import load_file, save_file

from sae.errors import FormatError, NonFiniteWeightsError


@contextmanager
def atomic_dir(target) -> Iterator[Path]:
    """Yield a temp dir beside ``target``; on success it replaces ``target`` in one rename.

    On error the temp dir is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".old-{target.name}-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path, obj) -> None:
    """JSON with sorted keys, written to a temp file then renamed."""
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path) -> dict:
    """Parse a JSON file, raising FormatError when missing or malformed."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"missing file {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path} is not valid JSON: {e}") from e


def write_tensors(path, arrays: dict, metadata: dict | None = None) -> None:
    """Save numpy-convertible arrays to safetensors (float32 unless integer)."""
    out = {}
    for k, v in arrays.items():
        a = np.asarray(v)  # (np.ascontiguousarray would turn 0-d scalars into shape (1,))
        a = a if a.flags.c_contiguous else a.copy()
        out[k] = a if a.dtype.kind in "iub" else a.astype(np.float32)
    save_file(out, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})


def read_tensors(path, required=()) -> dict[str, np.ndarray]:
    """Load a safetensors file; FormatError when missing, truncated or lacking keys."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"missing weights file {path}")
    try:
        arrays = load_file(str(path))
    except Exception as e:
        raise FormatError(f"{path} is not a readable safetensors file "
                          f"(truncated or corrupt?): {e}") from e
    missing = [k for k in required if k not in arrays]
    if missing:
        raise FormatError(f"{path} lacks tensors {missing}; found {sorted(arrays)}")
    return arrays


def read_metadata(path) -> dict:
    """The safetensors header metadata (empty dict if none)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise FormatError(f"{path} is not a readable safetensors file: {e}") from e


def check_finite_tensors(arrays: dict, dictionary: str, file) -> None:
    """Raise NonFiniteWeightsError naming ``dictionary``, ``file`` and the first NaN/inf tensor.

    One ``isfinite`` pass per tensor; NaN and inf are counted only on failure."""
    from attribution.model.integrity import nonfinite_counts, nonfinite_names

    bad = nonfinite_names(arrays)
    if not bad:
        return
    n_nan, n_inf = nonfinite_counts(arrays[bad[0]])
    others = len(bad) - 1
    more = f" ({others} more tensor{'s' if others > 1 else ''} also)" if others else ""
    raise NonFiniteWeightsError(
        f"dictionary {dictionary} ({file}): tensor {bad[0]} has {n_nan} NaN and {n_inf} inf "
        f"values{more}: the file is corrupt or training diverged; retrain or re-export the "
        "dictionary", bad[0], n_nan, n_inf)


def load_lazy(path, required=(), *, what: str = "weights file") -> dict[str, mx.array]:
    """Tensors of a safetensors (or .npz) file as lazy ``mx.array``s, sorted by name.

    FormatError (one line) when the file is missing, truncated, corrupt or lacks a
    ``required`` tensor. No tensor data is read here (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"missing {what} {path}")
    try:
        arrays = mx.load(str(path))
    except Exception as e:  # mlx raises RuntimeError/ValueError with its own message
        _refuse_dtypes(path)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FormatError(f"{path} is not a readable {path.suffix.lstrip('.') or 'weights'} file "
                          f"(truncated or corrupt?): {first}") from e
    if not isinstance(arrays, dict):
        raise FormatError(f"{path} holds a single unnamed array, not named tensors")
    missing = [k for k in required if k not in arrays]
    if missing:
        raise FormatError(f"{path} lacks tensors {missing}; found {sorted(arrays)}")
    return {k: arrays[k] for k in sorted(arrays)}


def read_checked(path, required=(), *, dictionary: str, what: str = "weights file",
                 validate=None) -> dict[str, mx.array]:
    """Every tensor of ``path`` evaluated (floats as float32), read one at a time and checked.

    See the module docstring. ``validate(lazy_tensors)`` runs on the header's names,
    shapes and dtypes before any data is read (raise FormatError there). FormatError
    as ``load_lazy``; NonFiniteWeightsError (naming ``dictionary``, the file and the
    first bad tensor) for NaN/inf."""
    raw = load_lazy(path, required, what=what)
    if validate is not None:
        validate(raw)
    header = _safetensors_header(path) if Path(path).suffix == ".safetensors" else (0, {})
    out, suspect = {}, False
    for name in list(raw):
        a = raw.pop(name)  # the dict must not keep the stored-dtype buffer alive
        info = header[1].get(name)
        if info and info["dtype"] in _CHUNK_CAST and np.diff(info["data_offsets"])[0] > _CHUNK:
            del a
            a, finite = _cast_in_chunks(path, header[0], info)
            suspect = suspect or not finite
        elif mx.issubdtype(a.dtype, mx.floating):
            total = mx.sum(a)
            a = a if a.dtype == mx.float32 else a.astype(mx.float32)
            mx.eval(a, total)
            suspect = suspect or not math.isfinite(total.item())
        else:
            mx.eval(a)
        out[name] = a
    if suspect:
        check_finite_tensors(out, dictionary, path)
    return out


_CHUNK = 4 * 2**20
"""Stored bytes converted per step when a large non-float32 tensor is cast to float32."""
_CHUNK_CAST = {"BF16": 2, "F16": 2}
_READABLE = ("F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL")


def _refuse_dtypes(path) -> None:
    """FormatError naming a tensor whose dtype MLX cannot read (e.g. F64), if there is one."""
    try:
        _, header = _safetensors_header(path)
        bad = next(((k, v["dtype"]) for k, v in header.items()
                    if k != "__metadata__" and v.get("dtype") not in _READABLE), None)
    except Exception:  # not even a parseable header: the caller reports a corrupt file
        return
    if bad is not None:
        raise FormatError(f"{path}: tensor {bad[0]} is stored as {bad[1]}, which cannot be read "
                          "here; convert the file to float32 (or bfloat16/float16)")


def _safetensors_header(path) -> tuple[int, dict]:
    """(offset of the data section, header dict) of a safetensors file (already validated)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return 8 + n, json.loads(f.read(n))


def _cast_in_chunks(path, start: int, info: dict) -> tuple[mx.array, bool]:
    """(float32 array, all finite) of one bfloat16/float16 tensor, cast chunk by chunk.

    The float32 result is allocated once and filled in place, so no full-size copy in
    the stored dtype ever exists (a cast of the whole tensor would hold both)."""
    item = _CHUNK_CAST[info["dtype"]]
    lo, hi = info["data_offsets"]
    n = (hi - lo) // item
    out = mx.zeros((n,), mx.float32)
    mx.eval(out)
    step, finite = max(1, _CHUNK // item), True
    with open(path, "rb") as f:
        f.seek(start + lo)
        for a in range(0, n, step):
            b = min(n, a + step)
            buf = f.read((b - a) * item)
            if len(buf) != (b - a) * item:  # the file shrank after its header was checked
                raise FormatError(f"{path} ended early while reading (truncated?)")
            if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
                chunk = np.frombuffer(buf, "<u2").astype(np.uint32)
                chunk <<= 16  # in place: one temporary per chunk, not two
                chunk = chunk.view(np.float32)
            else:
                chunk = np.frombuffer(buf, "<f2").astype(np.float32)
            finite = finite and bool(np.isfinite(chunk).all())
            out[a:b] = mx.array(chunk)
            mx.eval(out)  # in place: ``out`` is the only reference to its buffer
    return out.reshape(info["shape"]), finite
