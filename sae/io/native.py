"""Our dictionary format: a directory per dictionary.

1. ``config.json`` (sorted keys): schema, version, arch, d_in, d_out, width, sites,
   skip, apply_b_dec_to_input, hparams, dtype, free metadata.
2. ``weights.safetensors``: every parameter by name, header metadata schema/version/arch.
3. A set (``save_dictionaries``) is a directory with ``index.json`` and one
   sub-directory per dictionary, named after its input site.
All writes go to a temporary directory that replaces the target in one rename,
so a failure leaves nothing partially written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import mlx.core as mx
import numpy as np

from attribution.sites import Site
from sae.arch import ARCHITECTURES, CrossLayerTranscoder, architecture
from sae.errors import FormatError, ShapeMismatchError, UnknownArchitectureError
from sae.io._files import atomic_dir, read_json, read_tensors, write_json, write_tensors

SCHEMA, SET_SCHEMA, VERSION = "mlx-circuits.dictionary", "mlx-circuits.dictionaries", 1


def _write(d, path: Path, metadata: dict | None) -> None:
    cfg = {"schema": SCHEMA, "version": VERSION, "dtype": "float32",
           "metadata": dict(metadata or {}), **d.describe()}
    write_json(path / "config.json", cfg)
    write_tensors(path / "weights.safetensors", {k: np.array(v) for k, v in d.arrays().items()},
                  {"schema": SCHEMA, "version": VERSION, "arch": d.arch})


def save_dictionary(d, path, metadata: dict | None = None) -> Path:
    """Write one dictionary (SAE, transcoder or CLT) to directory ``path`` atomically."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        _write(d, tmp, metadata)
    return path


def _site(s):
    return None if s is None else Site.parse(s)


def load_dictionary(path, site_dims: Mapping | None = None):
    """Read a dictionary directory; ``site_dims`` ({Site: width}) checks d_in / d_out."""
    path = Path(path)
    cfg = read_json(path / "config.json")
    if cfg.get("schema") != SCHEMA:
        raise FormatError(f"{path}: schema {cfg.get('schema')!r}, expected {SCHEMA!r}")
    if int(cfg.get("version", -1)) > VERSION:
        raise FormatError(f"{path}: version {cfg['version']} is newer than supported ({VERSION})")
    arch = cfg.get("arch")
    if arch == "clt":
        d = CrossLayerTranscoder(cfg["d_in"], cfg["width"], cfg["n_layers"], d_out=cfg["d_out"],
                                 in_sites=[Site.parse(s) for s in cfg["in_sites"]],
                                 out_sites=[Site.parse(s) for s in cfg["out_sites"]],
                                 **cfg["hparams"])
    elif arch in ARCHITECTURES:
        d = architecture(arch)(cfg["d_in"], cfg["width"], d_out=cfg["d_out"],
                               in_site=_site(cfg["in_site"]), out_site=_site(cfg["out_site"]),
                               skip=cfg["skip"], apply_b_dec_to_input=cfg["apply_b_dec_to_input"],
                               **cfg["hparams"])
    else:
        raise UnknownArchitectureError(f"{path}: unknown architecture {arch!r}")
    arrays = read_tensors(path / "weights.safetensors")
    try:
        d.load_arrays({k: mx.array(v) for k, v in arrays.items()})
    except ShapeMismatchError as e:
        raise FormatError(f"{path}: weights do not match config.json: {e}") from e
    if site_dims is not None:
        check_sites(d, site_dims)
    return d


def check_sites(d, site_dims: Mapping) -> None:
    """Raise ShapeMismatchError when d_in / d_out disagree with the sites' widths."""
    dims = {Site.parse(k): int(v) for k, v in site_dims.items()}
    ins = d.in_sites if isinstance(d, CrossLayerTranscoder) else [d.in_site]
    outs = d.out_sites if isinstance(d, CrossLayerTranscoder) else [d.out_site]
    for sites, width, what in ((ins, d.d_in, "d_in"), (outs, d.d_out, "d_out")):
        for s in sites:
            if s is not None and s in dims and dims[s] != width:
                raise ShapeMismatchError(f"dictionary {what}={width} but site {s} has width "
                                         f"{dims[s]}; was it trained on another model?")


def _entry_name(d, used: set) -> str:
    base = "clt" if isinstance(d, CrossLayerTranscoder) else str(d.in_site or "dictionary")
    if not isinstance(d, CrossLayerTranscoder) and d.out_site is not None and d.out_site != d.in_site:
        base = f"{d.in_site}--{d.out_site}"
    name, i = base, 1
    while name in used:
        name, i = f"{base}-{i}", i + 1
    used.add(name)
    return name


def save_dictionaries(dicts, path, metadata: dict | None = None) -> Path:
    """Write several dictionaries (a list, or a mapping's values) under one directory."""
    items = list(dicts.values()) if isinstance(dicts, Mapping) else list(dicts)
    path, used, entries = Path(path), set(), []
    with atomic_dir(path) as tmp:
        for d in items:
            name = _entry_name(d, used)
            (tmp / name).mkdir()
            _write(d, tmp / name, metadata)
            entries.append({"dir": name, "arch": d.arch})
        write_json(tmp / "index.json", {"schema": SET_SCHEMA, "version": VERSION,
                                        "entries": entries, "metadata": dict(metadata or {})})
    return path


def load_dictionaries(path, site_dims: Mapping | None = None) -> dict:
    """{input Site (or "clt" name): dictionary} from a ``save_dictionaries`` directory."""
    path = Path(path)
    index = read_json(path / "index.json")
    if index.get("schema") != SET_SCHEMA:
        raise FormatError(f"{path}/index.json: schema {index.get('schema')!r}, expected {SET_SCHEMA!r}")
    out = {}
    for e in index["entries"]:
        d = load_dictionary(path / e["dir"], site_dims)
        key = e["dir"] if isinstance(d, CrossLayerTranscoder) else (d.in_site or e["dir"])
        out[key] = d
    return out
