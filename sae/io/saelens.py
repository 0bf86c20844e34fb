"""SAELens folders: ``cfg.json`` + ``sae_weights.safetensors`` (+ ``sparsity.safetensors``).

Import (``import_saelens``), for SAELens 6 configs and older ones (``hook_point``,
``activation_fn_str``, boolean ``normalize_activations``), Gemma Scope releases included:
  1. Architectures: standard -> ReLU, topk -> TopK (k from ``k`` or
     ``activation_fn_kwargs``; TopK then ReLU, as SAELens), jumprelu -> JumpReLU
     (f = pre * (pre > threshold)), gated -> Gated; transcoder / skip_transcoder /
     jumprelu_transcoder / jumprelu_skip_transcoder -> transcoders (no b_dec input
     subtraction, ``W_skip`` stored [d_out, d_in]). Anything else is refused.
  2. Sites from ``hook_name`` (top level, ``metadata`` or ``meta``; older ``hook_point``)
     and, for transcoders, ``hook_name_out`` (``sae.io.hooks``); our own exports carry
     ``metadata.mlx_circuits_site``, which wins. ``ln2.hook_normalized`` folds the
     model's pre-MLP norm affine into the weights (needs ``model=``).
  3. Weights: W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc, b_dec, threshold,
     W_skip; shapes are checked against cfg.json; any float dtype (cast to float32 once).
     A ``scaling_factor`` tensor (SAELens fine-tuning scale) is folded into W_dec rows.
  4. ``normalize_activations``: none -> as is; expected_average_only_in (or ``True``)
     needs the release's ``norm_scaling_factor`` s, folded as SAELens does (W_enc * s,
     W_dec / s, b_dec / s); constant_norm_rescale and layer_norm rescale every token by
     its own norm, which no linear dictionary represents: refused.
  5. Shapes are checked from the header before any data is read; tensors are then read
     one at a time without a second copy (``sae.io._files``), and NaN/inf is refused
     (``NonFiniteWeightsError`` naming the folder and tensor).
Export (SAEs only; transcoders go to circuit-tracer):
  6. relu -> "standard", topk -> "topk" (k in cfg), jumprelu / batchtopk / matryoshka
     / gated -> "jumprelu" with ``threshold`` (Gated via its exact JumpReLU form).
  7. Weights: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec (+ threshold);
     ``sparsity.safetensors`` holds ``sparsity`` = log10 feature density when given.
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
    read_checked,
    read_json,
    read_tensors,
    write_json,
    write_tensors,
)
from sae.io.convert import assign_arrays, build_dictionary, encoder_parts, f32, fold_affine
from sae.io.hooks import HookSite, check_on_model, hook_site, norm_affine, tl_hook_name

_ARCH_NAME = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}
# SAELens architecture -> (our activation kind, is a transcoder, has W_skip)
SAELENS_ARCHS = {
    "standard": ("relu", False, False), "relu": ("relu", False, False),
    "topk": ("topk", False, False), "jumprelu": ("jumprelu", False, False),
    "gated": ("gated", False, False),
    "transcoder": ("relu", True, False), "skip_transcoder": ("relu", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
}
"""SAELens inference architectures this importer reads (see the module docstring)."""
_WEIGHTS = "sae_weights.safetensors"


def export_saelens(d, path, *, model_name: str = "", context_size: int = 0,
                   prepend_bos: bool = True, log10_density: np.ndarray | None = None) -> Path:
    """Write ``d`` (an SAE) as a SAELens folder, atomically."""
    if d.W_skip is not None or (d.out_site is not None and d.out_site != d.in_site):
        raise FormatError("SAELens folders hold SAEs; export transcoders with "
                          "export_circuit_tracer")
    W, b, kind, thr, k = encoder_parts(d, fold_b_dec=False)
    hook = "" if d.in_site is None else tl_hook_name(d.in_site)
    meta = {"model_name": model_name, "hook_name": hook, "context_size": context_size,
            "prepend_bos": prepend_bos, "mlx_circuits_arch": d.arch,
            "mlx_circuits_site": None if d.in_site is None else str(d.in_site)}
    cfg = {"d_in": d.d_in, "d_sae": d.width, "dtype": "float32", "device": "cpu",
           "architecture": _ARCH_NAME[kind], "apply_b_dec_to_input": d.apply_b_dec_to_input,
           "normalize_activations": "none", "model_name": model_name, "hook_name": hook,
           "hook_layer": -1 if d.in_site is None else d.in_site.layer,
           "context_size": context_size, "prepend_bos": prepend_bos, "metadata": meta}
    if kind == "topk":
        cfg["k"] = k
        cfg["activation_fn"] = "topk"
        cfg["activation_fn_kwargs"] = {"k": k}
    arrays = {"W_enc": W, "W_dec": np.array(d.W_dec), "b_enc": b, "b_dec": np.array(d.b_dec)}
    if thr is not None:
        arrays["threshold"] = thr
    with atomic_dir(path) as tmp:
        write_json(tmp / "cfg.json", cfg)
        write_tensors(tmp / _WEIGHTS, arrays)
        if log10_density is not None:
            write_tensors(tmp / "sparsity.safetensors", {"sparsity": np.asarray(log10_density)})
    return Path(path)


def _field(cfg: dict, *names):
    """First non-empty value among ``names`` at the top level, then in metadata / meta."""
    for scope in (cfg, cfg.get("metadata") or {}, cfg.get("meta") or {}):
        if isinstance(scope, dict):
            for n in names:
                if scope.get(n) not in (None, ""):
                    return scope[n]
    return None


def _sites(cfg: dict, path: Path, site, transcoder: bool, model):
    """(HookSite in, HookSite out) from cfg.json (``site`` overrides an SAE's hook)."""
    where = str(path)
    if _field(cfg, "hook_head_index", "hook_point_head_index") is not None:
        raise FormatError(f"{where}: SAE on a single attention head (hook_head_index) has no "
                          "site here; use an SAE on all heads (attn.hook_z)")
    ours = _field(cfg, "mlx_circuits_site")
    if site is not None or ours:
        s = Site.parse(site if site is not None else ours)
        hin = HookSite(str(s), s)
    else:
        name = _field(cfg, "hook_name", "hook_point")
        if name is None:  # an SAE trained on unnamed data: no site (pass site= to set one)
            return None, None
        hin = hook_site(name, where=where)
    hout = hin
    if transcoder:
        name = _field(cfg, "hook_name_out")
        if name is None:
            raise FormatError(f"{where}/cfg.json is a transcoder without hook_name_out; add the "
                              "hook it writes (e.g. blocks.3.hook_mlp_out)")
        hout = hook_site(name, where=where)
    for h in (hin, hout):
        check_on_model(h, model, where)
    return hin, hout


def _normalisation_scale(cfg: dict, path: Path, norm_scaling_factor):
    mode = cfg.get("normalize_activations", "none")
    mode = {True: "expected_average_only_in", False: "none", None: "none"}.get(mode, mode)
    if mode == "none":
        return None
    if mode == "expected_average_only_in":
        if norm_scaling_factor is None:
            raise FormatError(f"{path}: normalize_activations=expected_average_only_in scales "
                              "inputs by the release's norm_scaling_factor; pass "
                              "norm_scaling_factor= (SAELens's pretrained_saes.yaml) to fold it")
        return float(norm_scaling_factor)
    raise FormatError(f"{path}: normalize_activations={mode!r} rescales each token by its own "
                      "norm, which a linear dictionary cannot represent; use an SAE trained "
                      "without it")


def _check_shapes(w: dict, shapes: dict, path: Path) -> None:
    for key, want in shapes.items():
        if key in w and tuple(w[key].shape) != want:
            raise FormatError(f"{path}/{_WEIGHTS}: {key} has shape {list(w[key].shape)}, "
                              f"cfg.json implies {list(want)}")


def import_saelens(path, site: Site | None = None, *, model=None,
                   norm_scaling_factor: float | None = None):
    """Read a SAELens folder into one of our dictionaries (raw units); see the module docstring.

    ``site``: the SAE's site when cfg.json's hook is missing or to override it.
    ``model``: an ``attribution.Model``: checks layer and width and folds the norm affine
    of ``ln2.hook_normalized``. ``norm_scaling_factor``: for expected_average_only_in."""
    path = Path(path)
    cfg = read_json(path / "cfg.json")
    arch = cfg.get("architecture", "standard")
    if arch not in SAELENS_ARCHS:
        raise UnknownArchitectureError(f"{path}: unsupported SAELens architecture {arch!r}; "
                                       f"supported: {', '.join(SAELENS_ARCHS)}")
    kind, transcoder, skip = SAELENS_ARCHS[arch]
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise FormatError(f"{path}: rescale_acts_by_decoder_norm is not supported; fold the "
                          "decoder norms into W_enc / W_dec first")
    scale = _normalisation_scale(cfg, path, norm_scaling_factor)
    hin, hout = _sites(cfg, path, site, transcoder, model)
    try:
        d_in, m = int(cfg["d_in"]), int(cfg["d_sae"])
        d_out = int(cfg.get("d_out", d_in)) if transcoder else d_in
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{path}/cfg.json lacks integer d_in / d_sae ({e})") from e
    required = ("W_enc", "W_dec", "b_dec") + (("b_gate", "r_mag", "b_mag") if kind == "gated"
                                             else ("b_enc",))
    required += (("threshold",) if kind == "jumprelu" else ()) + (("W_skip",) if skip else ())
    if model is not None and hin is not None:
        _check_width(hin.site, d_in, model, path)
        _check_width(hout.site, d_out, model, path)
    site_in, site_out = (None, None) if hin is None else (hin.site, hout.site)
    shapes = {"W_enc": (d_in, m), "W_dec": (m, d_out), "b_enc": (m,), "b_dec": (d_out,),
              "W_skip": (d_out, d_in), "b_gate": (m,), "r_mag": (m,), "b_mag": (m,)}
    raw = read_checked(path / _WEIGHTS, required, dictionary=path.name,
                       validate=lambda lazy: _check_shapes(lazy, shapes, path))
    apply = bool(cfg.get("apply_b_dec_to_input", True)) and not transcoder
    parts = _parts(raw, skip, scale)
    where = f"{path}/{_WEIGHTS}"
    if kind == "gated":
        if hin is not None and hin.pre_affine:
            raise FormatError(f"{path}: a gated SAE on ln2.hook_normalized is not supported")
        d = _gated(d_in, m, parts, raw, site_in, apply, where)
    else:
        parts["b_enc"] = f32(raw["b_enc"])
        parts = _fold_norms(parts, hin, hout, model, path, apply)
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
        if kind == "topk" and k is None:
            raise FormatError(f"{path}: topk SAE without k in cfg.json")
        d = build_dictionary(kind, parts["W_enc"], parts["b_enc"], parts["W_dec"], parts["b_dec"],
                             threshold=raw.get("threshold"), k=k, W_skip=parts.get("W_skip"),
                             in_site=site_in, out_site=site_out, apply_b_dec_to_input=apply,
                             where=where)
    del raw, parts  # what is kept is referenced by ``d``; folded-away originals go now
    mx.eval(d.arrays())
    return d


def _parts(raw: dict, skip: bool, scale: float | None) -> dict:
    """W_enc, W_dec, b_dec (and W_skip) in our orientation, SAELens's scales folded in."""
    parts = {k: f32(raw[k]) for k in ("W_enc", "W_dec", "b_dec")}
    if "scaling_factor" in raw:  # SAELens decodes (f * scaling_factor) @ W_dec
        parts["W_dec"] = parts["W_dec"] * f32(raw["scaling_factor"]).reshape(-1, 1)
    if skip:
        parts["W_skip"] = f32(raw["W_skip"]).T  # SAELens applies x @ W_skip.T; ours x @ W_skip
    if scale is not None:  # SAELens's fold_activation_norm_scaling_factor
        parts["W_enc"], parts["W_dec"] = parts["W_enc"] * scale, parts["W_dec"] / scale
        parts["b_dec"] = parts["b_dec"] / scale
    return parts


def _check_width(site: Site, width: int, model, path: Path) -> None:
    want = model.n_heads * model.d_head if site.kind == "attn_z" else model.d_model
    if width != want:
        raise FormatError(f"{path}: the dictionary is {width} wide at {site} but the model's "
                          f"{site.kind} is {want} wide; is it for another model?")


def _fold_norms(parts, hin: HookSite, hout: HookSite, model, path, apply):
    if hin is None or not (hin.pre_affine or hout.pre_affine):
        return parts
    g_in = s_in = g_out = s_out = None
    if hin.pre_affine:
        g_in, s_in = norm_affine(model, hin.site.layer, str(path))
    if hout.pre_affine:
        g_out, s_out = norm_affine(model, hout.site.layer, str(path))
    return fold_affine(parts, gain_in=g_in, shift_in=s_in, gain_out=g_out, shift_out=s_out,
                       apply_b_dec_to_input=apply)


def _gated(d_in, m, parts, raw, site, apply, where):
    d = GatedDictionary(d_in, m, in_site=site, out_site=site, apply_b_dec_to_input=apply)
    assign_arrays(d, {"W_enc": parts["W_enc"], "b_enc": f32(raw["b_gate"]),
                      "r_mag": f32(raw["r_mag"]), "b_mag": f32(raw["b_mag"]),
                      "W_dec": parts["W_dec"], "b_dec": parts["b_dec"]}, where)
    return d


def read_sparsity(path) -> np.ndarray | None:
    """log10 feature density from ``sparsity.safetensors`` (None when absent)."""
    p = Path(path) / "sparsity.safetensors"
    return read_tensors(p, required=("sparsity",))["sparsity"] if p.exists() else None


__all__ = ["SAELENS_ARCHS", "export_saelens", "import_saelens", "read_sparsity"]
