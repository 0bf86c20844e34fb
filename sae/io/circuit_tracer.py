"""circuit-tracer per-layer transcoder sets (``config.yaml`` + one weights file per layer).

Import (``import_circuit_tracer``):
  1. ``config.yaml`` (``read_config``): ``model_name``, ``model_kind``
     (transcoder_set), ``feature_input_hook`` / ``feature_output_hook`` (relative
     TransformerLens hooks, e.g. ``mlp.hook_in``, ``hook_resid_mid``,
     ``ln2.hook_normalized`` -> input; ``hook_mlp_out``, ``mlp.hook_out`` -> output;
     see ``sae.io.hooks``), ``activation`` / ``k`` (topk sets), ``scan``, and
     ``transcoders``: one file per layer, list index = layer. Entries are local paths
     (relative to the directory) or ``hf://org/repo/path`` URIs, looked up offline as
     ``<dir>/path`` then ``<dir>/<basename>``. Without the list, ``layer_{i}.safetensors``.
  2. Files in circuit-tracer's layout: W_enc [d_tc, d_in] (transposed vs SAELens; read as a
     view, never copied), W_dec [d_tc, d_out], b_enc, b_dec, optional
     ``activation_function.threshold`` (JumpReLU), ``k`` and W_skip [d_out, d_in]
     (applied as x @ W_skip.T). Gemma Scope files (``.npz`` or lower-case ``w_enc``):
     w_enc [d_in, d_tc], w_dec, b_enc, b_dec, threshold, ``affine_skip_connection`` [d_in, d_out].
  3. Activation as circuit-tracer picks it: ``activation: topk`` -> TopK(k);
     ``activation: relu`` -> ReLU; otherwise JumpReLU when a threshold exists, else
     ReLU (a ``k`` tensor alone -> TopK: our own older exports). circuit-tracer's TopK
     keeps the k largest pre-activations even when negative; ours then applies ReLU
     (identical whenever the k-th largest is positive).
  4. ``ln2.hook_normalized`` folds the model's pre-MLP norm affine into W_enc
     (needs ``model=``); shapes are checked from the header before any data is read;
     NaN/inf is refused (``NonFiniteWeightsError``); tensors are read one at a time
     without a second copy (``sae.io._files``).
Export writes the same layout and a ``config.yaml`` (model_kind, hooks from the
dictionaries' sites, activation/k for TopK sets, the ``transcoders`` list when the
layers are 0..n-1). circuit-tracer has no b_dec input subtraction: it is folded into b_enc.
Cross-layer transcoders: ``sae.io.clt``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from attribution.sites import Site
from sae.errors import FormatError
from sae.io._files import atomic_dir, read_checked, write_tensors
from sae.io.convert import build_dictionary, encoder_parts, f32, fold_affine
from sae.io.hooks import check_on_model, hook_site, norm_affine, tl_hook_name

CONFIG = "config.yaml"


class SiteMismatchWarning(UserWarning):
    """An exported dictionary's sites differ from the hooks its set records."""


@dataclass(frozen=True)
class CircuitTracerConfig:
    """The fields of a circuit-tracer ``config.yaml`` that loading depends on."""

    model_name: str | None = None
    """Hugging Face name of the model the set was trained on."""
    model_kind: str | None = None
    """``transcoder_set`` or ``cross_layer_transcoder``."""
    feature_input_hook: str | None = None
    """Relative TransformerLens hook the encoders read (e.g. ``mlp.hook_in``)."""
    feature_output_hook: str | None = None
    """Relative TransformerLens hook the decoders write (e.g. ``hook_mlp_out``)."""
    transcoders: tuple[str, ...] | None = None
    """Per-layer weight files (list index = layer), or None for ``layer_{i}.safetensors``."""
    activation: str | None = None
    """``topk`` / ``relu`` to force the activation, None to infer it from the weights."""
    k: int | None = None
    """k of a TopK set."""
    scan: str | None = None
    """Feature-visualisation identifier (informational)."""


def read_config(path) -> CircuitTracerConfig | None:
    """Parse ``<path>/config.yaml`` (None when absent); FormatError when malformed."""
    f = Path(path) / CONFIG
    if not f.is_file():
        return None
    import yaml  # a dependency of transformers and mlx-lm

    try:
        raw = yaml.safe_load(f.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise FormatError(f"{f} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(raw, dict):
        raise FormatError(f"{f} is not a YAML mapping of circuit-tracer fields")
    tcs = raw.get("transcoders")
    if tcs is not None and not (isinstance(tcs, list) and all(isinstance(t, str) for t in tcs)):
        raise FormatError(f"{f}: 'transcoders' must be a list of file paths, one per layer")
    k = raw.get("k")
    try:
        k = None if k is None else int(k)
    except (TypeError, ValueError) as e:
        raise FormatError(f"{f}: k={raw.get('k')!r} is not an integer") from e
    scan = raw.get("scan", raw.get("scan_name"))
    text = lambda v: None if v is None else str(v)  # noqa: E731
    return CircuitTracerConfig(text(raw.get("model_name")), text(raw.get("model_kind")),
                               text(raw.get("feature_input_hook")),
                               text(raw.get("feature_output_hook")),
                               None if tcs is None else tuple(tcs), text(raw.get("activation")),
                               k, None if scan is None else str(scan))


def resolve_entry(path: Path, entry: str, layer: int) -> Path:
    """The local file of a ``transcoders`` entry (see the module docstring)."""
    rel = entry
    if entry.startswith("hf://"):
        parts = entry[len("hf://"):].split("?", 1)[0].split("/", 2)
        rel = parts[2] if len(parts) == 3 else parts[-1]
    p = Path(rel)
    candidates = [p] if p.is_absolute() else [path / p, path / p.name]
    for c in candidates:
        if c.is_file():
            return c
    raise FormatError(f"{path / CONFIG}: layer {layer} file {entry!r} is not here (looked for "
                      f"{candidates[0]}); download it there first (this machine reads files only)")


def _layer_files(path: Path, cfg: CircuitTracerConfig | None) -> dict[int, Path]:
    if cfg is not None and cfg.transcoders is not None:
        return {i: resolve_entry(path, e, i) for i, e in enumerate(cfg.transcoders)}
    files = {}
    for f in path.glob("layer_*.safetensors"):
        try:
            files[int(f.stem.split("_", 1)[1])] = f
        except ValueError:
            continue
    if not files:
        raise FormatError(f"{path}: no config.yaml 'transcoders' list and no "
                          "layer_<i>.safetensors files")
    return dict(sorted(files.items()))


def _hooks(path: Path, cfg, in_hook, out_hook) -> tuple[str, str]:
    hin = in_hook or (cfg.feature_input_hook if cfg else None)
    hout = out_hook or (cfg.feature_output_hook if cfg else None)
    if not hin or not hout:
        raise FormatError(f"{path}: no feature_input_hook / feature_output_hook (config.yaml "
                          "missing or incomplete); pass in_hook= and out_hook= (e.g. "
                          "'mlp.hook_in', 'hook_mlp_out')")
    return hin, hout


def import_circuit_tracer(path, *, model=None, in_hook: str | None = None,
                          out_hook: str | None = None, layers=None) -> dict:
    """{layer: dictionary} from a circuit-tracer transcoder set (see the module docstring).

    ``model``: checks layers and widths and folds ``ln2.hook_normalized``;
    ``in_hook`` / ``out_hook`` override config.yaml; ``layers``: load only these."""
    path = Path(path)
    if not path.is_dir():
        raise FormatError(f"no circuit-tracer transcoder set at {path} (not a directory)")
    cfg = read_config(path)
    if cfg is not None and cfg.model_kind == "cross_layer_transcoder":
        raise FormatError(f"{path}: config.yaml says cross_layer_transcoder; use import_clt")
    hooks = _hooks(path, cfg, in_hook, out_hook)
    files = _layer_files(path, cfg)
    if layers is not None:
        wanted = sorted({int(i) for i in layers})
        missing = sorted(set(wanted) - set(files))
        if missing:
            raise FormatError(f"{path}: no transcoder for layers {missing}; the set has "
                              f"{sorted(files)}")
        files = {i: files[i] for i in wanted}
    return {i: _read_layer(path, f, i, hooks, cfg, model) for i, f in files.items()}


def _parts(raw: dict, f: Path, where: str) -> dict:
    """Our-orientation parts of one file (W_enc [d_in, m] etc.), shapes checked."""
    gemma = f.suffix == ".npz" or "w_enc" in raw
    key = (lambda n: n.lower() if n.lower() in raw else n) if gemma else (lambda n: n)
    need = [key(n) for n in ("W_enc", "W_dec", "b_enc", "b_dec")]
    missing = [n for n in need if n not in raw]
    if missing:
        raise FormatError(f"{where}: lacks tensors {missing}; found {sorted(raw)}")
    W_enc, W_dec, b_enc, b_dec = (raw[n] for n in need)
    m, d_out = b_enc.shape[0], b_dec.shape[0]
    want_enc = "[d_in, d_tc]" if gemma else "[d_tc, d_in]"
    if W_enc.ndim != 2 or W_enc.shape[1 if gemma else 0] != m:
        raise FormatError(f"{where}: W_enc has shape {list(W_enc.shape)}, expected {want_enc} "
                          f"with d_tc={m} (from b_enc)")
    if tuple(W_dec.shape) != (m, d_out):
        raise FormatError(f"{where}: W_dec has shape {list(W_dec.shape)}, expected [{m}, {d_out}] "
                          "(d_tc from b_enc, d_out from b_dec)")
    W_enc = f32(W_enc) if gemma else f32(W_enc).T  # a transposed view: no copy
    d_in = W_enc.shape[0]
    p = {"W_enc": W_enc, "b_enc": f32(b_enc), "W_dec": f32(W_dec), "b_dec": f32(b_dec)}
    skip_key = "affine_skip_connection" if gemma else "W_skip"
    if skip_key in raw:
        s = raw[skip_key]
        want = (d_in, d_out) if gemma else (d_out, d_in)
        if tuple(s.shape) != want:
            raise FormatError(f"{where}: {skip_key} has shape {list(s.shape)}, expected "
                              f"{list(want)}")
        p["W_skip"] = f32(s) if gemma else f32(s).T
    thr = next((raw[n] for n in ("activation_function.threshold", "threshold") if n in raw), None)
    p["threshold"] = thr
    p["k"] = raw.get("k")
    return p


def _activation(cfg, p: dict, where: str):
    """(kind, k) following circuit-tracer's rules (module docstring, step 3)."""
    act = (cfg.activation if cfg else None) or None
    file_k = None if p["k"] is None else int(p["k"].item())
    if act == "topk":
        k = (cfg.k if cfg else None) or file_k
        if k is None:
            raise FormatError(f"{where}: activation is topk but neither config.yaml nor the file "
                              "gives k")
        return "topk", k
    if act == "relu":
        return "relu", None
    if act not in (None, "jumprelu", "jump_relu"):
        raise FormatError(f"{where}: unsupported activation {act!r} in config.yaml; "
                          "supported: topk, relu, jumprelu")
    if p["threshold"] is not None:
        return "jumprelu", None
    if act is not None:
        raise FormatError(f"{where}: activation is jumprelu but the file has no threshold")
    return ("topk", file_k) if file_k is not None else ("relu", None)


def _read_layer(path: Path, f: Path, i: int, hooks, cfg, model):
    where = f"{f} (layer {i})"
    hin = hook_site(hooks[0], i, where=str(path / CONFIG))
    hout = hook_site(hooks[1], i, where=str(path / CONFIG))
    for h in (hin, hout):
        check_on_model(h, model, str(path))

    def validate(lazy):  # shapes (and widths against the model) before any data is read
        q = _parts(lazy, f, where)
        dims = {"d_in": q["W_enc"].shape[0], "d_out": q["W_dec"].shape[1]}
        for what, width in dims.items():
            if model is not None and width != model.d_model:
                raise FormatError(f"{where}: {what}={width} but the model's d_model is "
                                  f"{model.d_model}; is the set for another model?")

    raw = read_checked(f, dictionary=f"{path.name} layer {i}", validate=validate)
    p = _parts(raw, f, where)
    kind, k = _activation(cfg, p, where)
    if hin.pre_affine or hout.pre_affine:
        g_in, s_in = norm_affine(model, i, str(path)) if hin.pre_affine else (None, None)
        g_out, s_out = norm_affine(model, i, str(path)) if hout.pre_affine else (None, None)
        p.update(fold_affine(p, gain_in=g_in, shift_in=s_in, gain_out=g_out, shift_out=s_out))
    d = build_dictionary(kind, p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"],
                         threshold=p["threshold"], k=k, W_skip=p.get("W_skip"),
                         in_site=hin.site, out_site=hout.site, where=where)
    del raw, p  # what is kept is referenced by ``d``; folded-away originals go now
    mx.eval(d.arrays())
    return d


def relative_hook(site: Site) -> str:
    """The relative hook circuit-tracer configs use for ``site``'s kind."""
    return tl_hook_name(Site(0, site.kind)).split(".", 2)[2]


def _set_hooks(by_layer: dict) -> tuple[str, str]:
    """(input, output) hooks of a set: the first dictionary's sites (mlp_in -> mlp_out if none)."""
    first = next((d for d in by_layer.values() if d.in_site is not None), None)
    kinds = ("mlp_in", "mlp_out") if first is None else (first.in_site.kind,
                                                         first.out_site.kind)
    for i, d in by_layer.items():
        if d.in_site is not None and (d.in_site.kind, d.out_site.kind) != kinds:
            warnings.warn(f"dictionary for layer {i} reads {d.in_site} and writes {d.out_site} "
                          f"but the set records {kinds[0]} -> {kinds[1]}; it will import with "
                          "those sites", SiteMismatchWarning, stacklevel=3)
    return relative_hook(Site(0, kinds[0])), relative_hook(Site(0, kinds[1]))


def export_circuit_tracer(dicts, path, *, model_name: str = "") -> Path:
    """Write per-layer transcoders ({layer: dictionary} or a list ordered by layer), atomically."""
    import yaml

    items = dict(dicts) if isinstance(dicts, Mapping) else dict(enumerate(dicts))
    by_layer = {int(k.layer if isinstance(k, Site) else k): v for k, v in sorted(
        items.items(), key=lambda kv: int(kv[0].layer if isinstance(kv[0], Site) else kv[0]))}
    parts = {i: encoder_parts(d, fold_b_dec=True) for i, d in by_layer.items()}
    ks = {p[4] for p in parts.values()}
    if len(ks) > 1:
        raise FormatError("a circuit-tracer set has one activation: TopK dictionaries cannot be "
                          "mixed with others or with another k; export them as separate sets")
    hin, hout = _set_hooks(by_layer)
    config = {"model_name": model_name, "model_kind": "transcoder_set",
              "feature_input_hook": hin, "feature_output_hook": hout}
    if ks != {None}:
        config.update(activation="topk", k=int(next(iter(ks))))
    if list(by_layer) == list(range(len(by_layer))):  # list index = layer for circuit-tracer
        config["transcoders"] = [f"layer_{i}.safetensors" for i in by_layer]
    with atomic_dir(path) as tmp:
        for i, d in by_layer.items():
            W, b, kind, thr, k = parts[i]
            arrays = {"W_enc": W.T, "W_dec": np.array(d.W_dec), "b_enc": b,
                      "b_dec": np.array(d.b_dec)}
            if thr is not None:
                arrays["activation_function.threshold"] = thr
            if k is not None:
                arrays["k"] = np.array(k, dtype=np.int64)
            if d.W_skip is not None:
                arrays["W_skip"] = np.array(d.W_skip).T
            meta = {"in_site": str(d.in_site), "out_site": str(d.out_site), "activation": kind}
            write_tensors(tmp / f"layer_{i}.safetensors", arrays, meta)
        (tmp / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    return Path(path)
