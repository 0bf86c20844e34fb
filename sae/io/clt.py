"""circuit-tracer cross-layer transcoders (CLTs): one encoder and one decoder file per layer.

Layout supported (circuit-tracer's ``CrossLayerTranscoder.to_safetensors`` / ``load_clt``):
  ``W_enc_{i}.safetensors``: W_enc_{i} [d_tc, d_in], b_enc_{i} [d_tc], b_dec_{i} [d_out],
  optional threshold_{i} [d_tc] (JumpReLU, else ReLU);
  ``W_dec_{i}.safetensors``: W_dec_{i} [d_tc, L - i, d_out] (targets i..L-1);
  optional ``config.yaml`` with ``feature_input_hook`` / ``feature_output_hook``.
Not supported (refused with one line): skip CLTs (W_skip_{i}), and Gemma Scope 2's CLT
layout (per-layer params files listed under ``transcoders:``).

Import (``import_clt``), without a second copy of the encoders or decoders:
  1. Sites: ``in_sites`` / ``out_sites`` if given, else ``in_hook`` / ``out_hook``,
     else config.yaml's hooks, layer i for source/target i (``sae.io.hooks``); a
     directory with none of these is refused (circuit-tracer's own default would be
     hook_resid_mid -> hook_mlp_out: pass those explicitly if that is what it was trained on).
  2. W_enc [L, d_in, d_tc] is allocated once and filled layer by layer in place
     (each file's W_enc_{i}^T written into its slice); W_dec_{i} is kept as read.
  3. Shapes are checked from each file's header before its data is read; each file is
     checked for NaN/inf while it is read (``NonFiniteWeightsError``).
Export (``export_clt``): the same layout plus config.yaml (relu / jumprelu; batchtopk
as jumprelu with its global threshold; topk is refused).
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from attribution.sites import Site
from sae.arch import CrossLayerTranscoder
from sae.errors import FormatError
from sae.io._files import atomic_dir, load_lazy, read_checked, write_tensors
from sae.io.circuit_tracer import CONFIG, read_config, relative_hook
from sae.io.convert import assign_arrays, fold_affine, log_threshold
from sae.io.hooks import check_on_model, hook_site, norm_affine


def export_clt(clt: CrossLayerTranscoder, path, *, model_name: str = "") -> Path:
    """Write a CLT in circuit-tracer's split-file layout with a config.yaml, atomically."""
    import yaml

    act = clt.hparams["activation"]
    if act == "topk":
        raise FormatError("circuit-tracer CLTs support relu and jump_relu; convert a topk CLT "
                          "by training it as batchtopk")
    config = {"model_name": model_name, "model_kind": "cross_layer_transcoder",
              "feature_input_hook": relative_hook(clt.in_sites[0]),
              "feature_output_hook": relative_hook(clt.out_sites[0])}
    with atomic_dir(path) as tmp:
        for i in range(clt.n_layers):
            enc = {f"W_enc_{i}": np.array(clt.W_enc[i]).T, f"b_enc_{i}": np.array(clt.b_enc[i]),
                   f"b_dec_{i}": np.array(clt.b_dec[i])}
            if act == "jumprelu":
                enc[f"threshold_{i}"] = np.exp(np.array(clt.log_threshold[i]))
            elif act == "batchtopk":
                enc[f"threshold_{i}"] = np.full((clt.width,), max(float(clt.threshold), 0.0),
                                                np.float32)
            write_tensors(tmp / f"W_enc_{i}.safetensors", enc)
            write_tensors(tmp / f"W_dec_{i}.safetensors",
                          {f"W_dec_{i}": np.array(clt.W_dec_layers[i])})
        (tmp / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    return Path(path)


def _sites(path: Path, n: int, in_sites, out_sites, in_hook, out_hook, model):
    """(in_sites, out_sites, pre_affine_in) for ``n`` layers (module docstring, step 1)."""
    if in_sites is not None or out_sites is not None:
        ins = [Site.parse(s) for s in (in_sites or [Site(i, "mlp_in") for i in range(n)])]
        outs = [Site.parse(s) for s in (out_sites or [Site(i, "mlp_out") for i in range(n)])]
        return ins, outs, False
    cfg = read_config(path)
    hin = in_hook or (cfg.feature_input_hook if cfg else None)
    hout = out_hook or (cfg.feature_output_hook if cfg else None)
    if not hin or not hout:
        raise FormatError(f"{path}: no config.yaml naming feature_input_hook / "
                          "feature_output_hook; pass in_hook= and out_hook= (circuit-tracer's "
                          "default is 'hook_resid_mid', 'hook_mlp_out')")
    where = str(path / CONFIG)
    hs_in = [hook_site(hin, i, where=where) for i in range(n)]
    hs_out = [hook_site(hout, i, where=where) for i in range(n)]
    for h in hs_in + hs_out:
        check_on_model(h, model, str(path))
    if hs_out[0].pre_affine:
        raise FormatError(f"{where}: a CLT writing ln2.hook_normalized is not supported")
    return [h.site for h in hs_in], [h.site for h in hs_out], hs_in[0].pre_affine


def _files(path: Path) -> int:
    if not path.is_dir():
        raise FormatError(f"no CLT at {path} (not a directory)")
    n = len(list(path.glob("W_enc_*.safetensors")))
    if n == 0:
        cfg = read_config(path)
        if cfg is not None and cfg.transcoders is not None:
            raise FormatError(f"{path}: per-layer params files listed in config.yaml (Gemma "
                              "Scope 2's CLT layout) are not supported; convert to "
                              "W_enc_<i>/W_dec_<i>.safetensors")
        raise FormatError(f"{path}: no W_enc_*.safetensors files")
    for i in range(n):
        for stem in (f"W_enc_{i}", f"W_dec_{i}"):
            if not (path / f"{stem}.safetensors").is_file():
                raise FormatError(f"{path}: {n} encoder files but {stem}.safetensors is missing; "
                                  f"a CLT needs W_enc_0..{n - 1} and W_dec_0..{n - 1}")
    return n


def import_clt(path, in_sites: list | None = None, out_sites: list | None = None, *,
               in_hook: str | None = None, out_hook: str | None = None, model=None):
    """Read a circuit-tracer CLT directory (relu, or jumprelu when thresholds exist).

    See the module docstring. ``model``: checks layer count and width and folds the
    pre-MLP norm affine of an ``ln2.hook_normalized`` input."""
    path = Path(path)
    n = _files(path)
    enc0 = load_lazy(path / "W_enc_0.safetensors", ("W_enc_0", "b_enc_0", "b_dec_0"))
    m, d_in = enc0["W_enc_0"].shape
    d_out, jump = enc0["b_dec_0"].shape[0], "threshold_0" in enc0
    del enc0
    ins, outs, pre_affine = _sites(path, n, in_sites, out_sites, in_hook, out_hook, model)
    if model is not None and (n != model.n_layers or d_in != model.d_model):
        raise FormatError(f"{path}: CLT has {n} layers of width {d_in} but the model has "
                          f"{model.n_layers} layers of width {model.d_model}")
    try:
        clt = CrossLayerTranscoder(d_in, m, n, d_out=d_out, in_sites=ins, out_sites=outs,
                                   activation="jumprelu" if jump else "relu")
    except ValueError as e:
        raise FormatError(f"{path}: {e}") from e
    W_enc = mx.zeros((n, d_in, m))
    mx.eval(W_enc)  # allocated once; every layer is written into it in place
    b_enc, b_dec, log_thr, W_dec = [], [], [], []
    for i in range(n):
        W_i, parts = _read_encoder(path, i, (m, d_in, d_out), jump, pre_affine, model)
        W_enc[i] = W_i
        mx.eval(W_enc)  # now, so the update is in place and layer i's buffer can go
        b_enc.append(parts["b_enc"])
        b_dec.append(parts["b_dec"])
        if jump:
            log_thr.append(parts["log_threshold"])
        del W_i, parts  # free layer i's encoder file before reading the next one
        W_dec.append(_read_decoder(path, i, (m, n - i, d_out)))
    arrays = {"W_enc": W_enc, "b_enc": mx.stack(b_enc), "b_dec": mx.stack(b_dec),
              **{f"W_dec_layers.{i}": w for i, w in enumerate(W_dec)}}
    if jump:
        arrays["log_threshold"] = mx.stack(log_thr)
    assign_arrays(clt, arrays, str(path))
    mx.eval(clt.arrays())
    return clt


def _read_encoder(path: Path, i: int, dims, jump: bool, pre_affine: bool, model):
    """(W_enc_i^T [d_in, m] as a view, small parts) of layer i, read and checked."""
    m, d_in, d_out = dims
    f = path / f"W_enc_{i}.safetensors"
    req = (f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}") + ((f"threshold_{i}",) if jump else ())

    def validate(lazy):
        if f"W_skip_{i}" in lazy:
            raise FormatError(f"{f}: skip CLTs (W_skip_{i}) are not supported")
        for key, want in ((f"W_enc_{i}", (m, d_in)), (f"b_enc_{i}", (m,)),
                          (f"b_dec_{i}", (d_out,))):
            if tuple(lazy[key].shape) != want:
                raise FormatError(f"{f}: {key} has shape {list(lazy[key].shape)}, expected "
                                  f"{list(want)} (from W_enc_0 / b_dec_0)")

    raw = read_checked(f, req, dictionary=f"{path.name} (CLT)", validate=validate)
    parts = {"W_enc": raw[f"W_enc_{i}"].T, "b_enc": raw[f"b_enc_{i}"], "W_dec": None,
             "b_dec": raw[f"b_dec_{i}"]}
    if pre_affine:
        gain, shift = norm_affine(model, i, str(path))
        parts = fold_affine(parts, gain_in=gain, shift_in=shift)
    if jump:
        parts["log_threshold"] = log_threshold(raw[f"threshold_{i}"], m, str(f))
    return parts["W_enc"], parts


def _read_decoder(path: Path, i: int, want) -> mx.array:
    f = path / f"W_dec_{i}.safetensors"

    def validate(lazy):
        if tuple(lazy[f"W_dec_{i}"].shape) != tuple(want):
            raise FormatError(f"{f}: W_dec_{i} has shape {list(lazy[f'W_dec_{i}'].shape)}, "
                              f"expected {list(want)} [d_tc, n_layers - i, d_out]")

    return read_checked(f, (f"W_dec_{i}",), dictionary=f"{path.name} (CLT)",
                        validate=validate)[f"W_dec_{i}"]
