"""The weight files of a checkpoint directory, read from their headers only.

A safetensors file starts with an 8-byte little-endian header length and a
JSON header naming every tensor's dtype and shape (plus ``__metadata__``:
mlx writes ``{"format": "mlx"}``, transformers ``{"format": "pt"}``). Reading
the headers costs a few kilobytes per file, so ``load_model`` knows what a
directory holds (tensor names, stored dtypes, which library wrote it, whether
the shards are complete) before mlx-lm reads a single weight.

Algorithm (``scan_weights``):
  1. List ``model*.safetensors`` (the files mlx-lm's loader reads; HF shards
     are ``model-0000k-of-0000n.safetensors``).
  2. When ``model.safetensors.index.json`` exists, every file its
     ``weight_map`` names must be present, and no other ``model*.safetensors``
     may be (mlx-lm reads them all, so a stray file would add or override
     tensors); else raise ``NotAModelError`` naming the file and the fix.
  3. Read each header: tensor name -> (dtype, shape), and the ``format`` tag.
     An unreadable header raises ``NotAModelError`` ("unreadable").
  4. Summarise: the float dtypes stored (``F32``/``BF16``/``F16``...), whether
     packed quantized weights are present (``.scales`` tensors), and the
     writer ("mlx-lm" when every file is tagged ``mlx``, else "transformers").
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from attribution.errors import NotAModelError

INDEX_FILE = "model.safetensors.index.json"
"""The shard index written by transformers and by mlx-lm's ``save_model``."""

# safetensors dtype tags -> MLX dtype names, for the float types a checkpoint can hold.
FLOAT_DTYPES = {"F64": "float64", "F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_MAX_HEADER = 100 * 2**20  # a header larger than this is not a safetensors header


@dataclass(frozen=True)
class WeightFiles:
    """What the ``model*.safetensors`` files of a directory hold (from their headers)."""

    files: tuple[str, ...]
    """File names, sorted."""
    tensors: dict
    """Tensor name -> (safetensors dtype tag, shape tuple)."""
    writer: str
    """"mlx-lm" when every file carries mlx's ``format: mlx`` tag, else "transformers"."""
    float_dtypes: tuple[str, ...]
    """Float dtypes stored (MLX names, e.g. ("bfloat16",)), sorted."""
    quantized: bool
    """Whether packed quantized weights are present (any ``*.scales`` tensor)."""

    @property
    def names(self) -> frozenset:
        """Every tensor name."""
        return frozenset(self.tensors)


def read_header(path: Path) -> tuple[dict, dict]:
    """(tensor name -> (dtype tag, shape), ``__metadata__`` dict) of one safetensors file."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if not 2 <= n <= _MAX_HEADER:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(f.read(n))
        meta = header.pop("__metadata__", None) or {}
        tensors = {k: (str(v["dtype"]), tuple(int(s) for s in v["shape"])) for k, v in header.items()}
    except (OSError, ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as exc:
        raise NotAModelError(
            f"{path} is unreadable: not a safetensors file ({type(exc).__name__}: {exc}); "
            "re-download or re-convert the checkpoint") from exc
    return tensors, meta


def _check_index(path: Path, present: list[str]) -> None:
    index = path / INDEX_FILE
    if not index.exists():
        return
    try:
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        listed = set(weight_map.values())
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise NotAModelError(f"{index} is not a valid shard index ({exc}); restore the "
                             "checkpoint's own index file or delete it") from exc
    missing = sorted(listed - set(present))
    if missing:
        raise NotAModelError(
            f"{str(path)!r} is incomplete: {INDEX_FILE} lists {len(missing)} shard(s) that are "
            f"not there ({', '.join(missing[:3])}); download or copy the missing files")
    stray = sorted(set(present) - listed)
    if listed and stray:
        raise NotAModelError(
            f"{str(path)!r} holds {', '.join(stray[:3])}, which {INDEX_FILE} does not list; the "
            "loader reads every model*.safetensors file, so remove the stray file(s)")


def scan_weights(path: Path) -> WeightFiles:
    """Headers of every ``model*.safetensors`` file in ``path`` (module docstring)."""
    files = sorted(p.name for p in path.glob("model*.safetensors"))
    _check_index(path, files)
    tensors: dict = {}
    writers = set()
    for name in files:
        t, meta = read_header(path / name)
        tensors.update(t)
        writers.add(str(meta.get("format", "")))
    floats = sorted({FLOAT_DTYPES[d] for d, _ in tensors.values() if d in FLOAT_DTYPES})
    return WeightFiles(
        files=tuple(files), tensors=tensors,
        writer="mlx-lm" if writers == {"mlx"} else "transformers",
        float_dtypes=tuple(floats),
        quantized=any(k.endswith(".scales") for k in tensors),
    )


__all__ = ["FLOAT_DTYPES", "INDEX_FILE", "WeightFiles", "read_header", "scan_weights"]
