"""SAELens folders: ``cfg.json`` + ``sae_weights.safetensors`` (+ ``sparsity.safetensors``).

Export (SAEs only; transcoders go to circuit-tracer):
  1. relu -> "standard", topk -> "topk" (k in cfg), jumprelu / batchtopk / matryoshka
     / gated -> "jumprelu" with ``threshold`` (Gated via its exact JumpReLU form).
  2. Weights: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec (+ threshold).
  3. ``sparsity.safetensors`` holds ``sparsity`` = log10 feature density when given.
Import reads the same keys (and SAELens "gated": b_gate, r_mag, b_mag) and refuses
NaN/inf weights (``NonFiniteWeightsError`` naming the folder and tensor).
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from attribution.sites import Site
from sae.arch import GatedDictionary
from sae.errors import FormatError, UnknownArchitectureError
from sae.io._files import (
    atomic_dir,
    check_finite_tensors,
    read_json,
    read_tensors,
    write_json,
    write_tensors,
)
from sae.io.convert import build_from_parts, encoder_parts

_ARCH_NAME = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}


def export_saelens(d, path, *, model_name: str = "", context_size: int = 0,
                   prepend_bos: bool = True, log10_density: np.ndarray | None = None) -> Path:
    """Write ``d`` (an SAE) as a SAELens folder, atomically."""
    if d.W_skip is not None or (d.out_site is not None and d.out_site != d.in_site):
        raise FormatError("SAELens folders hold SAEs; export transcoders with export_circuit_tracer")
    W, b, kind, thr, k = encoder_parts(d, fold_b_dec=False)
    cfg = {"d_in": d.d_in, "d_sae": d.width, "dtype": "float32", "device": "cpu",
           "architecture": _ARCH_NAME[kind], "apply_b_dec_to_input": d.apply_b_dec_to_input,
           "normalize_activations": "none", "model_name": model_name,
           "hook_name": "" if d.in_site is None else _tl_hook(d.in_site),
           "hook_layer": -1 if d.in_site is None else d.in_site.layer,
           "context_size": context_size, "prepend_bos": prepend_bos,
           "metadata": {"model_name": model_name, "context_size": context_size,
                        "prepend_bos": prepend_bos, "mlx_circuits_arch": d.arch,
                        "mlx_circuits_site": None if d.in_site is None else str(d.in_site)}}
    if kind == "topk":
        cfg["k"] = k
        cfg["activation_fn"] = "topk"
        cfg["activation_fn_kwargs"] = {"k": k}
    arrays = {"W_enc": W, "W_dec": np.array(d.W_dec), "b_enc": b, "b_dec": np.array(d.b_dec)}
    if thr is not None:
        arrays["threshold"] = thr
    with atomic_dir(path) as tmp:
        write_json(tmp / "cfg.json", cfg)
        write_tensors(tmp / "sae_weights.safetensors", arrays)
        if log10_density is not None:
            write_tensors(tmp / "sparsity.safetensors", {"sparsity": np.asarray(log10_density)})
    return Path(path)


def _tl_hook(site: Site) -> str:
    return f"blocks.{site.layer}.hook_{site.kind}"


def import_saelens(path, site: Site | None = None):
    """Read a SAELens folder into one of our dictionaries (raw units)."""
    path = Path(path)
    cfg = read_json(path / "cfg.json")
    arch = cfg.get("architecture", "standard")
    w = read_tensors(path / "sae_weights.safetensors", required=("W_dec", "b_dec"))
    check_finite_tensors(w, path.name, path / "sae_weights.safetensors")
    if site is None:
        s = (cfg.get("metadata") or {}).get("mlx_circuits_site") or cfg.get("hook_name")
        try:
            site = Site.parse(s) if s else None
        except ValueError:
            site = None
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise FormatError(f"{path}: normalize_activations={cfg['normalize_activations']!r} is "
                          "not supported; fold the scale into the weights first")
    apply = bool(cfg.get("apply_b_dec_to_input", True))
    if arch == "gated":
        return _gated(cfg, w, site, apply)
    kinds = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu"}
    if arch not in kinds:
        raise UnknownArchitectureError(f"{path}: unknown SAELens architecture {arch!r}")
    kind = kinds[arch]
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if kind == "topk" and k is None:
        raise FormatError(f"{path}: topk SAE without k in cfg.json")
    for key in ("W_enc", "b_enc") + (("threshold",) if kind == "jumprelu" else ()):
        if key not in w:
            raise FormatError(f"{path}: sae_weights.safetensors lacks {key}")
    if w["W_enc"].shape != (cfg["d_in"], cfg["d_sae"]):
        raise FormatError(f"{path}: W_enc has shape {w['W_enc'].shape}, cfg says "
                          f"[{cfg['d_in']}, {cfg['d_sae']}]")
    return build_from_parts(w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], kind,
                            w.get("threshold"), k, in_site=site, out_site=site,
                            apply_b_dec_to_input=apply)


def _gated(cfg, w, site, apply):
    for key in ("W_enc", "b_gate", "r_mag", "b_mag"):
        if key not in w:
            raise FormatError(f"gated SAELens weights lack {key}")
    d = GatedDictionary(cfg["d_in"], cfg["d_sae"], in_site=site, out_site=site,
                        apply_b_dec_to_input=apply)
    d.W_enc, d.b_enc = mx.array(w["W_enc"]), mx.array(w["b_gate"])
    d.r_mag, d.b_mag = mx.array(w["r_mag"]), mx.array(w["b_mag"])
    d.W_dec, d.b_dec = mx.array(w["W_dec"]), mx.array(w["b_dec"])
    return d


def read_sparsity(path) -> np.ndarray | None:
    """log10 feature density from ``sparsity.safetensors`` (None when absent)."""
    p = Path(path) / "sparsity.safetensors"
    return read_tensors(p, required=("sparsity",))["sparsity"] if p.exists() else None
