"""Our dictionary format: a directory per dictionary.

1. ``config.json`` (sorted keys): schema, version, arch, d_in, d_out, width, sites,
   skip, apply_b_dec_to_input, hparams, dtype, free metadata.
2. ``weights.safetensors``: every parameter by name, header metadata schema/version/arch.
3. A set (``save_dictionaries``) is a directory with ``index.json`` and one
   sub-directory per dictionary, named after its input site.
4. Given the model (``model=``), saving records ``attribution.model_identity``
   under the metadata key ``model_identity`` (index.json and every config.json).
All writes go to a temporary directory that replaces the target in one rename,
so a failure leaves nothing partially written.

Loading: read config.json, build the architecture, read the weights once into the
arrays that are kept (no second copy; ``sae.io._files``), refuse
NaN/inf weights (``NonFiniteWeightsError``), check widths against
``site_dims``; with ``model=`` compare the recorded identity first
(``DictionaryModelMismatchError``, or a ``DictionaryModelMismatchWarning``
with ``force=True``). Dictionaries without a recorded identity load as before.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from attribution.sites import Site
from sae.arch import ARCHITECTURES, Crosscoder, CrossLayerTranscoder, architecture
from sae.errors import (
    DictionaryModelMismatchError,
    DictionaryModelMismatchWarning,
    FormatError,
    ShapeMismatchError,
    UnknownArchitectureError,
)
from sae.io._files import (
    atomic_dir,
    load_lazy,
    read_checked,
    read_json,
    write_json,
    write_tensors,
)
from sae.io.convert import assign_arrays

SCHEMA, SET_SCHEMA, VERSION = "mlx-circuits.dictionary", "mlx-circuits.dictionaries", 1
IDENTITY_KEY = "model_identity"
"""Metadata key under which ``save_dictionaries(..., model=)`` records the model identity."""


def _with_identity(metadata: dict | None, model) -> dict:
    meta = dict(metadata or {})
    if model is not None:
        from attribution.model.integrity import model_identity

        meta[IDENTITY_KEY] = model_identity(model)
    return meta


def check_model(recorded, model, where, force: bool = False) -> None:
    """Compare a recorded model identity with ``model`` (no-op when either is missing).

    Mismatch: ``DictionaryModelMismatchError``, or with ``force`` a
    ``DictionaryModelMismatchWarning`` and return."""
    if model is None or not isinstance(recorded, Mapping):
        return
    from attribution.model.integrity import describe_identity, identity_mismatch, model_identity

    current = model_identity(model)
    reason = identity_mismatch(recorded, current)
    if reason is None:
        return
    msg = (f"dictionaries in {where} were trained on model {describe_identity(recorded)} but "
           f"this model is {describe_identity(current)} ({reason})")
    if force:
        warnings.warn(f"{msg}; using them anyway (force)", DictionaryModelMismatchWarning,
                      stacklevel=3)
        return
    raise DictionaryModelMismatchError(f"{msg}; pass --force (force=True) to use them anyway")


def _write(d, path: Path, metadata: dict | None) -> None:
    cfg = {"schema": SCHEMA, "version": VERSION, "dtype": "float32",
           "metadata": dict(metadata or {}), **d.describe()}
    write_json(path / "config.json", cfg)
    write_tensors(path / "weights.safetensors", {k: np.array(v) for k, v in d.arrays().items()},
                  {"schema": SCHEMA, "version": VERSION, "arch": d.arch})


def save_dictionary(d, path, metadata: dict | None = None, *, model=None) -> Path:
    """Write one dictionary (SAE, transcoder or CLT) to directory ``path`` atomically.

    ``model``: the ``attribution.Model`` it was trained on; its identity is recorded."""
    path = Path(path)
    meta = _with_identity(metadata, model)
    with atomic_dir(path) as tmp:
        _write(d, tmp, meta)
    return path


def _site(s):
    return None if s is None else Site.parse(s)


def load_dictionary(path, site_dims: Mapping | None = None, *, model=None, force: bool = False):
    """Read a dictionary directory; ``site_dims`` ({Site: width}) checks d_in / d_out.

    ``model``: compare the recorded model identity (see ``check_model``; ``force``
    turns a mismatch into a warning)."""
    path = Path(path)
    cfg = read_json(path / "config.json")
    if not isinstance(cfg, dict) or cfg.get("schema") != SCHEMA:
        schema = cfg.get("schema") if isinstance(cfg, dict) else None
        raise FormatError(f"{path}: schema {schema!r}, expected {SCHEMA!r}; "
                          "point at a directory written by sae.save_dictionary")
    try:
        version = int(cfg.get("version", -1))
    except (TypeError, ValueError) as e:
        raise FormatError(f"{path}/config.json: version {cfg.get('version')!r} is not an "
                          "integer; re-save the dictionary") from e
    if version > VERSION:
        raise FormatError(f"{path}: version {cfg['version']} is newer than supported ({VERSION})")
    meta = cfg.get("metadata")
    check_model(meta.get(IDENTITY_KEY) if isinstance(meta, dict) else None, model, path, force)
    d = _build(cfg, path)
    f = path / "weights.safetensors"
    try:
        assign_arrays(d, load_lazy(f), str(f))  # names and shapes from the header only
    except FormatError as e:
        raise FormatError(f"{path}: weights do not match config.json: {e}") from e
    assign_arrays(d, read_checked(f, dictionary=path.name), str(f))
    if site_dims is not None:
        check_sites(d, site_dims)
    return d


def _build(cfg: dict, path: Path):
    """An empty dictionary of the architecture and shapes config.json describes."""
    arch = cfg.get("arch")
    try:
        if arch == "clt":
            return CrossLayerTranscoder(cfg["d_in"], cfg["width"], cfg["n_layers"],
                                        d_out=cfg["d_out"],
                                        in_sites=[Site.parse(s) for s in cfg["in_sites"]],
                                        out_sites=[Site.parse(s) for s in cfg["out_sites"]],
                                        **cfg["hparams"])
        if arch == "crosscoder":
            return Crosscoder(cfg["d_in"], cfg["width"], cfg["n_sites"],
                              sites=[Site.parse(s) for s in cfg["sites"]], **cfg["hparams"])
        if arch in ARCHITECTURES or arch == "composed":  # composed: recipe in hparams
            return architecture(arch)(cfg["d_in"], cfg["width"], d_out=cfg["d_out"],
                                      in_site=_site(cfg["in_site"]),
                                      out_site=_site(cfg["out_site"]), skip=cfg["skip"],
                                      apply_b_dec_to_input=cfg["apply_b_dec_to_input"],
                                      **cfg["hparams"])
    except KeyError as e:
        raise FormatError(f"{path}/config.json lacks the field {e.args[0]!r}; "
                          "re-save the dictionary with sae.save_dictionary") from e
    except TypeError as e:
        raise FormatError(f"{path}/config.json has fields of the wrong type or unknown "
                          f"hyperparameters ({e}); re-save the dictionary") from e
    raise UnknownArchitectureError(f"{path}: unknown architecture {arch!r}")


def check_sites(d, site_dims: Mapping) -> None:
    """Raise ShapeMismatchError when d_in / d_out disagree with the sites' widths."""
    dims = {Site.parse(k): int(v) for k, v in site_dims.items()}
    multi = isinstance(d, (CrossLayerTranscoder, Crosscoder))
    ins = d.in_sites if multi else [d.in_site]
    outs = d.out_sites if multi else [d.out_site]
    for sites, width, what in ((ins, d.d_in, "d_in"), (outs, d.d_out, "d_out")):
        for s in sites:
            if s is not None and s in dims and dims[s] != width:
                raise ShapeMismatchError(f"dictionary {what}={width} but site {s} has width "
                                         f"{dims[s]}; was it trained on another model?")


def _entry_name(d, used: set) -> str:
    if isinstance(d, Crosscoder):
        base = "crosscoder"
    else:
        base = "clt" if isinstance(d, CrossLayerTranscoder) else str(d.in_site or "dictionary")
    if not isinstance(d, (CrossLayerTranscoder, Crosscoder)) and d.out_site is not None \
            and d.out_site != d.in_site:
        base = f"{d.in_site}--{d.out_site}"
    name, i = base, 1
    while name in used:
        name, i = f"{base}-{i}", i + 1
    used.add(name)
    return name


def save_dictionaries(dicts, path, metadata: dict | None = None, *, model=None) -> Path:
    """Write several dictionaries (a list, or a mapping's values) under one directory.

    ``model``: the ``attribution.Model`` they were trained on; its identity is
    recorded (metadata key ``model_identity``) for ``load_dictionaries(..., model=)``."""
    items = list(dicts.values()) if isinstance(dicts, Mapping) else list(dicts)
    meta = _with_identity(metadata, model)
    path, used, entries = Path(path), set(), []
    with atomic_dir(path) as tmp:
        for d in items:
            name = _entry_name(d, used)
            (tmp / name).mkdir()
            _write(d, tmp / name, meta)
            entries.append({"dir": name, "arch": d.arch})
        write_json(tmp / "index.json", {"schema": SET_SCHEMA, "version": VERSION,
                                        "entries": entries, "metadata": meta})
    return path


def load_dictionaries(path, site_dims: Mapping | None = None, *, model=None,
                      force: bool = False) -> dict:
    """{input Site (or "clt" / "crosscoder"): dictionary} from a ``save_dictionaries`` directory.

    ``model``: when both it and the files have a model identity, a mismatch
    raises ``DictionaryModelMismatchError`` (``force=True``: a
    ``DictionaryModelMismatchWarning`` instead); files without one load as before."""
    path = Path(path)
    if not (path / "index.json").exists():
        raise FormatError(
            f"no dictionaries at {path}: {path / 'index.json'} does not exist; pass the "
            "directory written by `circuits train` (out/dictionaries/dictionaries) or "
            "sae.save_dictionaries")
    index = read_json(path / "index.json")
    if not isinstance(index, dict) or index.get("schema") != SET_SCHEMA:
        schema = index.get("schema") if isinstance(index, dict) else None
        raise FormatError(f"{path}/index.json: schema {schema!r}, expected {SET_SCHEMA!r}")
    entries = index.get("entries")
    valid = isinstance(entries, list) and all(
        isinstance(e, dict) and isinstance(e.get("dir"), str) for e in entries)
    if not valid:
        raise FormatError(f"{path}/index.json has no valid 'entries' list of {{\"dir\": ...}}; "
                          "re-save the set with sae.save_dictionaries")
    meta = index.get("metadata")
    check_model(meta.get(IDENTITY_KEY) if isinstance(meta, dict) else None, model, path, force)
    out = {}
    for e in entries:
        d = load_dictionary(path / e["dir"], site_dims)
        multi = isinstance(d, (CrossLayerTranscoder, Crosscoder))
        key = e["dir"] if multi else (d.in_site or e["dir"])
        out[key] = d
    return out
