"""circuit-tracer transcoder formats.

Per-layer transcoders (a directory of ``layer_{i}.safetensors`` + ``config.yaml``):
  1. W_enc [d_tc, d_model] (transposed vs SAELens), W_dec [d_tc, d_model], b_enc, b_dec;
  2. ``activation_function.threshold`` for JumpReLU, ``k`` for TopK, optional
     W_skip [d_out, d_in] applied as x @ W_skip.T (ours is stored [d_in, d_out]);
  3. circuit-tracer has no b_dec input subtraction, so it is folded into b_enc.
Cross-layer transcoders (a directory): ``W_enc_{i}.safetensors`` holding W_enc_{i}
[d_tc, d_model], b_enc_{i}, b_dec_{i}, threshold_{i}; ``W_dec_{i}.safetensors``
holding W_dec_{i} [d_tc, L-i, d_model]. relu and jumprelu (batchtopk as jumprelu).
Imports refuse NaN/inf weights (``NonFiniteWeightsError`` naming the file and tensor).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import mlx.core as mx
import numpy as np

from attribution.sites import Site
from sae.arch import CrossLayerTranscoder
from sae.errors import FormatError
from sae.io._files import atomic_dir, check_finite_tensors, read_tensors, write_tensors
from sae.io.convert import build_from_parts, encoder_parts


def export_circuit_tracer(dicts, path, *, model_name: str = "") -> Path:
    """Write per-layer transcoders ({layer: dictionary} or a list ordered by layer)."""
    items = dict(dicts) if isinstance(dicts, Mapping) else dict(enumerate(dicts))
    layers = sorted(int(k.layer if isinstance(k, Site) else k) for k in items)
    by_layer = {int(k.layer if isinstance(k, Site) else k): v for k, v in items.items()}
    with atomic_dir(path) as tmp:
        lines = [f"model_name: \"{model_name}\"", "feature_input_hook: \"mlp.hook_in\"",
                 "feature_output_hook: \"mlp.hook_out\"", "transcoders:"]
        for i in layers:
            d = by_layer[i]
            W, b, kind, thr, k = encoder_parts(d, fold_b_dec=True)
            arrays = {"W_enc": W.T, "W_dec": np.array(d.W_dec), "b_enc": b, "b_dec": np.array(d.b_dec)}
            if thr is not None:
                arrays["activation_function.threshold"] = thr
            if k is not None:
                arrays["k"] = np.array(k, dtype=np.int64)
            if d.W_skip is not None:
                arrays["W_skip"] = np.array(d.W_skip).T
            meta = {"in_site": str(d.in_site), "out_site": str(d.out_site), "activation": kind}
            write_tensors(tmp / f"layer_{i}.safetensors", arrays, meta)
            lines.append(f"  - \"layer_{i}.safetensors\"")
        (tmp / "config.yaml").write_text("\n".join(lines) + "\n")
    return Path(path)


def import_circuit_tracer(path, in_kind: str = "mlp_in", out_kind: str = "mlp_out") -> dict:
    """{layer: dictionary} from a per-layer transcoder directory."""
    path = Path(path)
    files = sorted(path.glob("layer_*.safetensors"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise FormatError(f"{path}: no layer_*.safetensors files")
    out = {}
    for f in files:
        i = int(f.stem.split("_")[1])
        w = read_tensors(f, required=("W_enc", "W_dec", "b_enc", "b_dec"))
        check_finite_tensors(w, f"{path.name} layer {i}", f)
        if "activation_function.threshold" in w:
            kind, thr, k = "jumprelu", w["activation_function.threshold"], None
        elif "k" in w:
            kind, thr, k = "topk", None, int(w["k"])
        else:
            kind, thr, k = "relu", None, None
        skip = w["W_skip"].T if "W_skip" in w else None
        out[i] = build_from_parts(w["W_enc"].T, w["b_enc"], w["W_dec"], w["b_dec"], kind, thr, k,
                                  W_skip=skip, in_site=Site(i, in_kind), out_site=Site(i, out_kind))
    return out


def export_clt(clt: CrossLayerTranscoder, path) -> Path:
    """Write a CLT in circuit-tracer's split-file layout, atomically."""
    act = clt.hparams["activation"]
    if act == "topk":
        raise FormatError("circuit-tracer CLTs support relu and jump_relu; convert a topk CLT "
                          "by training it as batchtopk")
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
    return Path(path)


def import_clt(path, in_sites: list | None = None, out_sites: list | None = None):
    """Read a circuit-tracer CLT directory (relu, or jumprelu when thresholds exist)."""
    path = Path(path)
    n = len(list(path.glob("W_enc_*.safetensors")))
    if n == 0:
        raise FormatError(f"{path}: no W_enc_*.safetensors files")
    encs, decs = [], []
    for i in range(n):
        enc_file, dec_file = path / f"W_enc_{i}.safetensors", path / f"W_dec_{i}.safetensors"
        enc = read_tensors(enc_file, required=(f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"))
        dec = read_tensors(dec_file, required=(f"W_dec_{i}",))
        check_finite_tensors(enc, f"{path.name} (CLT)", enc_file)
        check_finite_tensors(dec, f"{path.name} (CLT)", dec_file)
        encs.append(enc)
        decs.append(dec[f"W_dec_{i}"])
    m, d_in = encs[0]["W_enc_0"].shape
    d_out = decs[0].shape[-1]
    jump = "threshold_0" in encs[0]
    clt = CrossLayerTranscoder(d_in, m, n, d_out=d_out, in_sites=in_sites, out_sites=out_sites,
                               activation="jumprelu" if jump else "relu")
    arrays = {"W_enc": np.stack([e[f"W_enc_{i}"].T for i, e in enumerate(encs)]),
              "b_enc": np.stack([e[f"b_enc_{i}"] for i, e in enumerate(encs)]),
              "b_dec": np.stack([e[f"b_dec_{i}"] for i, e in enumerate(encs)])}
    arrays.update({f"W_dec_layers.{i}": w for i, w in enumerate(decs)})
    if jump:
        thr = np.stack([e[f"threshold_{i}"].reshape(-1) for i, e in enumerate(encs)])
        arrays["log_threshold"] = np.log(np.maximum(thr, 1e-30)).astype(np.float32)
    try:
        clt.load_arrays({k: mx.array(v) for k, v in arrays.items()})
    except ValueError as e:
        raise FormatError(f"{path}: inconsistent CLT files: {e}") from e
    return clt
