"""Safe file helpers: atomic directory writes and checked safetensors reads."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
