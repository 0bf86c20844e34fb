"""Atomic training checkpoints (one safetensors file per run directory).

Layout of ``<dir>/checkpoint.safetensors``:
  1. ``t{j}.p.<name>``: parameters and frozen state of trainee j (normalised units);
  2. ``t{j}.m.<name>`` / ``t{j}.v.<name>``: Adam moments; ``t{j}.tsf``: dead counters;
  3. metadata ``state``: JSON {step, scales, names, labels} for the resume checks.
Written to a temporary file in the same directory, then ``os.replace``d, so a
crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx

from sae.errors import FormatError

CKPT_NAME = "checkpoint.safetensors"


def save_checkpoint(directory, trainees, step: int, scales: dict, extra: dict | None = None) -> Path:
    """Write the checkpoint atomically; returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, mx.array] = {}
    for j, t in enumerate(trainees):
        arrays.update({f"t{j}.p.{k}": v for k, v in t.dictionary.arrays().items()})
        for mom in ("m", "v"):
            arrays.update({f"t{j}.{mom}.{k}": v for k, v in t.opt[mom].items()})
        arrays[f"t{j}.tsf"] = t.opt["tsf"]
    meta = {"step": step, "names": [t.name for t in trainees],
            "scales": {str(s): v for s, v in scales.items()}, **(extra or {})}
    tmp = directory / f".tmp-{os.getpid()}-{CKPT_NAME}"
    mx.save_safetensors(str(tmp), arrays, metadata={"state": json.dumps(meta, sort_keys=True)})
    os.replace(tmp, directory / CKPT_NAME)
    return directory / CKPT_NAME


def load_checkpoint(directory, trainees) -> dict | None:
    """Restore trainees in place; returns the metadata, or None when there is no checkpoint."""
    path = Path(directory) / CKPT_NAME
    if not path.exists():
        return None
    try:
        arrays, meta = mx.load(str(path), return_metadata=True)
        state = json.loads(meta["state"])
    except Exception as e:
        raise FormatError(f"checkpoint {path} is unreadable ({e}); delete it to start over") from e
    if state["names"] != [t.name for t in trainees]:
        raise FormatError(f"checkpoint {path} holds {state['names']}, but this run trains "
                          f"{[t.name for t in trainees]}")
    for j, t in enumerate(trainees):
        pre = f"t{j}.p."
        t.dictionary.load_arrays({k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)})
        for mom in ("m", "v"):
            pre = f"t{j}.{mom}."
            t.opt[mom] = {k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)}
        t.opt["tsf"] = arrays[f"t{j}.tsf"]
    return state
