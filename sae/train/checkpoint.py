"""Atomic training checkpoints (one safetensors file per run directory) and resume checks.

Layout of ``<dir>/checkpoint.safetensors``:
  1. ``t{j}.p.<name>``: parameters and frozen state of trainee j (normalised units);
  2. ``t{j}.m.<name>`` / ``t{j}.v.<name>``: Adam moments; ``t{j}.tsf``: dead counters;
  3. metadata ``state``: JSON {step, scales, names, use_aux, configs, run} for the resume
     checks: ``configs`` records every ``TrainConfig`` field that changes the weights
     (``config_record``), ``run`` whatever the caller adds (model, corpus, ...).
Written to a temporary file in the same directory, then ``os.replace``d, so a
crash never leaves a half-written checkpoint.

Resume (``check_resume``), before any data is read:
  1. ``read_state`` reads only the metadata (no arrays).
  2. The recorded configs and run info are compared field by field with this run's;
     any difference raises ``ResumeMismatchError`` naming each field with its
     checkpoint and current values (a resumed run must equal an uninterrupted one, so
     a changed k, width, LR, seed, token budget or corpus cannot continue a checkpoint).
  3. After the first batch, the normalisation scales are compared too
     (``check_scales``): different scales mean the data changed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import mlx.core as mx

from sae.errors import ConfigError, FormatError

CKPT_NAME = "checkpoint.safetensors"
# Fields that choose how a step executes, not what it computes (up to float rounding of
# fused kernels); they may change between an interrupted run and its resume.
EXECUTION_FIELDS = ("compile", "fuse_elementwise", "split_batch")


class ResumeMismatchError(ConfigError):
    """A checkpoint was written by a run with another configuration or other data."""


def config_record(cfg) -> dict:
    """The JSON form of a ``TrainConfig`` as stored in (and compared against) checkpoints."""
    return {f.name: _jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
            if f.name not in EXECUTION_FIELDS}


def _jsonable(v):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)  # Site and other value types: their string form is canonical


def _canon(obj):
    """Round-trip through JSON so tuples/lists and int/float keys compare like the stored form."""
    return json.loads(json.dumps(_jsonable(obj), sort_keys=True))


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
            "scales": {str(s): v for s, v in scales.items()}, **_canon(extra or {})}
    tmp = directory / f".tmp-{os.getpid()}-{CKPT_NAME}"
    mx.save_safetensors(str(tmp), arrays, metadata={"state": json.dumps(meta, sort_keys=True)})
    os.replace(tmp, directory / CKPT_NAME)
    return directory / CKPT_NAME


def read_state(directory) -> dict | None:
    """The checkpoint's metadata (step, names, scales, configs, run), or None when absent."""
    path = Path(directory) / CKPT_NAME
    if not path.exists():
        return None
    try:
        _, meta = mx.load(str(path), return_metadata=True)
        state = json.loads(meta["state"])
        int(state["step"]), list(state["names"])
    except Exception as e:  # safetensors, JSON and missing-key failures alike
        raise FormatError(f"checkpoint {path} is unreadable ({e}); delete it to start over") from e
    return state


def differences(old, new, prefix: str = "") -> list[str]:
    """``"field: old -> new"`` for every leaf that differs between two JSON-like records."""
    old, new = _canon(old), _canon(new)
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            name = f"{prefix}{k}"
            if k not in old:
                out.append(f"{name}: (not recorded) -> {new[k]!r}")
            elif k not in new:
                out.append(f"{name}: {old[k]!r} -> (not given)")
            else:
                out += differences(old[k], new[k], f"{name}.")
        return out
    if old == new or (isinstance(old, float) and isinstance(new, float)
                      and math.isclose(old, new, rel_tol=1e-12)):
        return []
    return [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def mismatch_message(directory, diffs: list[str]) -> str:
    """One line naming the changed fields and the two ways forward."""
    return (f"cannot resume from checkpoint {Path(directory) / CKPT_NAME}: the configuration "
            f"changed (checkpoint -> now: {'; '.join(diffs)}); rerun with the checkpoint's "
            "settings, or start over with another checkpoint directory")


def check_resume(directory, state: dict, configs, run_info: dict | None) -> None:
    """Raise ``ResumeMismatchError`` when ``configs``/``run_info`` differ from the checkpoint's."""
    diffs = []
    old_cfgs = state.get("configs")
    if old_cfgs is not None:  # checkpoints from before configs were recorded: names only
        new_cfgs = [config_record(c) for c in configs]
        if len(old_cfgs) != len(new_cfgs):
            diffs.append(f"number of configs: {len(old_cfgs)} -> {len(new_cfgs)}")
        else:
            many = len(new_cfgs) > 1
            for old, new, c in zip(old_cfgs, new_cfgs, configs):
                diffs += differences(old, new, f"{c.label}." if many else "")
    if run_info is not None or state.get("run") is not None:
        diffs += differences(state.get("run") or {}, run_info or {}, "run.")
    if diffs:
        raise ResumeMismatchError(mismatch_message(directory, diffs))


def check_scales(directory, state: dict, scales: dict) -> None:
    """The data must be the same: the first batch's normalisation scales must match."""
    old = state.get("scales") or {}
    diffs = [f"scale of {s}: {old[str(s)]:.9g} -> {v:.9g}" for s, v in scales.items()
             if str(s) in old and not math.isclose(old[str(s)], v, rel_tol=1e-6)]
    if diffs:
        raise ResumeMismatchError(
            f"cannot resume from checkpoint {Path(directory) / CKPT_NAME}: the training data "
            f"changed (its first batch gives other normalisation scales: {'; '.join(diffs)}); "
            "use the same model and corpus, or start over with another checkpoint directory")


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
        raise ResumeMismatchError(f"checkpoint {path} holds {state['names']}, but this run trains "
                                  f"{[t.name for t in trainees]}")
    for j, t in enumerate(trainees):
        pre = f"t{j}.p."
        want = {k: v.shape for k, v in t.dictionary.arrays().items()}
        got = {k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)}
        bad = sorted(k for k in want if k not in got or tuple(got[k].shape) != tuple(want[k]))
        if bad:  # a width/d_in change in a checkpoint without recorded configs
            raise ResumeMismatchError(f"checkpoint {path}: {t.name} has other shapes for {bad}; "
                                      "it was written with another width or model")
        t.dictionary.load_arrays(got)
        for mom in ("m", "v"):
            pre = f"t{j}.{mom}."
            t.opt[mom] = {k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)}
        t.opt["tsf"] = arrays[f"t{j}.tsf"]
    return state
