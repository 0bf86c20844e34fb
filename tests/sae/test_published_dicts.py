"""Published dictionary formats written by hand (SAELens folders, circuit-tracer sets and CLTs).

Every folder here is built from raw tensors and a hand-written config, never by our
exporters; each imported dictionary is compared with a NumPy float64 evaluation of the
format's published equations (JumpReLU f = pre * (pre > threshold), TopK, ReLU, the
transcoder skip term), and its sites with the hooks the metadata names.
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

import sae  # noqa: F401  (BLAS preload before mlx)
from attribution import capture, load_model
from attribution.sites import Site
from attribution.tiny import make_tiny_model
from sae.errors import FormatError, NonFiniteWeightsError, UnknownArchitectureError
from sae.io import (
    NormFoldError,
    UnsupportedHookError,
    export_circuit_tracer,
    export_clt,
    hook_site,
    import_circuit_tracer,
    import_clt,
    import_saelens,
    read_config,
)

D, M = 12, 24


# ------------------------------------------------------------------ hand-made files
def _rand(rng, *shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _x(seed=0, n=32, d=D):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _saelens(tmp_path, cfg: dict, tensors: dict, name="sl"):
    p = tmp_path / name
    p.mkdir()
    (p / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(p / "sae_weights.safetensors"))
    return p


def _sae_tensors(rng, d_in=D, m=M, d_out=None, threshold=True):
    d_out = d_in if d_out is None else d_out
    t = {"W_enc": _rand(rng, d_in, m), "b_enc": _rand(rng, m, scale=0.2),
         "W_dec": _rand(rng, m, d_out), "b_dec": _rand(rng, d_out, scale=0.2)}
    if threshold:
        t["threshold"] = rng.uniform(0.05, 0.4, m).astype(np.float32)
    return t


def _write_yaml(path, text: str):
    (path / "config.yaml").write_text(text)


def _jump(pre, thr):
    assert np.abs(pre - thr).min() > 1e-5, "test data too close to a threshold"
    return pre * (pre > thr)


def _topk_relu(pre, k):  # SAELens: the k largest, then ReLU
    kth = np.sort(pre, axis=-1)[:, [-k]]
    assert (np.sort(pre, axis=-1)[:, -k - 1] < kth[:, 0]).all()  # no ties at the boundary
    return np.where(pre >= kth, np.maximum(pre, 0), 0)


def _enc(d, x):
    return np.array(d.encode(mx.array(x)), np.float64)


def _fwd(d, x):
    return np.array(d(mx.array(x)), np.float64)


def _one_line(exc):
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


# ----------------------------------------------------------------------- SAELens
@pytest.mark.parametrize("layout", ["v6_metadata", "top_level", "pre6_hook_point"])
def test_gemma_scope_style_jumprelu(layout, tmp_path):
    rng = np.random.default_rng(1)
    t = _sae_tensors(rng)
    hook = "blocks.3.hook_resid_post"
    cfg = {"architecture": "jumprelu", "d_in": D, "d_sae": M, "dtype": "float32",
           "apply_b_dec_to_input": False, "normalize_activations": None}
    if layout == "v6_metadata":
        cfg["metadata"] = {"hook_name": hook, "model_name": "gemma-2-2b"}
    elif layout == "top_level":
        cfg["hook_name"] = hook
    else:
        cfg.pop("architecture")  # pre-6 configs default to standard; Gemma Scope names jumprelu
        cfg.update(architecture="jumprelu", hook_point=hook, hook_point_layer=3)
    d = import_saelens(_saelens(tmp_path, cfg, t))
    assert d.in_site == d.out_site == Site(3, "resid_post")
    x = _x(2).astype(np.float64)
    pre = x @ t["W_enc"] + t["b_enc"]  # no b_dec subtraction (apply_b_dec_to_input False)
    f = _jump(pre, t["threshold"])
    assert 0 < (f > 0).mean() < 1
    np.testing.assert_allclose(_enc(d, x.astype(np.float32)), f, atol=1e-5)
    np.testing.assert_allclose(_fwd(d, x.astype(np.float32)), f @ t["W_dec"] + t["b_dec"],
                               atol=1e-4)


def test_standard_and_topk_saes_subtract_b_dec(tmp_path):
    rng = np.random.default_rng(2)
    t = _sae_tensors(rng, threshold=False)
    base = {"d_in": D, "d_sae": M, "dtype": "float32", "apply_b_dec_to_input": True,
            "normalize_activations": "none", "metadata": {"hook_name": "blocks.0.hook_resid_pre"}}
    relu = import_saelens(_saelens(tmp_path, {**base, "architecture": "standard"}, t, "a"))
    topk = import_saelens(_saelens(tmp_path, {**base, "architecture": "topk",
                                              "activation_fn_kwargs": {"k": 5}}, t, "b"))
    x = _x(3).astype(np.float64)
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    np.testing.assert_allclose(_enc(relu, x.astype(np.float32)), np.maximum(pre, 0), atol=1e-5)
    f = _topk_relu(pre, 5)
    np.testing.assert_allclose(_enc(topk, x.astype(np.float32)), f, atol=1e-5)
    np.testing.assert_allclose(_fwd(topk, x.astype(np.float32)), f @ t["W_dec"] + t["b_dec"],
                               atol=1e-4)
    assert relu.in_site == topk.in_site == Site(0, "resid_pre")


@pytest.mark.parametrize("hook,site", [
    ("blocks.2.hook_resid_pre", Site(2, "resid_pre")),
    ("blocks.2.hook_resid_mid", Site(2, "resid_mid")),
    ("blocks.2.hook_resid_post", Site(2, "resid_post")),
    ("blocks.2.hook_attn_out", Site(2, "attn_out")),
    ("blocks.2.hook_mlp_out", Site(2, "mlp_out")),
    ("blocks.2.attn.hook_z", Site(2, "attn_z")),
    ("blocks.2.hook_mlp_in", Site(2, "resid_mid")),  # TransformerLens: the MLP block's input
    ("blocks.2.mlp.hook_in", Site(2, "mlp_in")),     # circuit-tracer: after the norm's affine
])
def test_hook_names_map_to_sites(hook, site, tmp_path):
    t = _sae_tensors(np.random.default_rng(3))
    cfg = {"architecture": "jumprelu", "d_in": D, "d_sae": M, "apply_b_dec_to_input": False,
           "metadata": {"hook_name": hook}}
    d = import_saelens(_saelens(tmp_path, cfg, t))
    assert (d.in_site, d.out_site) == (site, site)
    assert hook_site(hook).site == site


@pytest.mark.parametrize("hook", ["blocks.1.mlp.hook_post", "hook_embed",
                                  "blocks.1.ln1.hook_normalized",
                                  "blocks.1.attn.hook_pattern", "blocks.x.hook_resid_pre"])
def test_unknown_hook_is_one_line_listing_supported(hook, tmp_path):
    t = _sae_tensors(np.random.default_rng(4))
    cfg = {"architecture": "jumprelu", "d_in": D, "d_sae": M, "hook_name": hook}
    with pytest.raises(UnsupportedHookError) as e:
        import_saelens(_saelens(tmp_path, cfg, t))
    msg = _one_line(e)
    assert repr(hook) in msg and "blocks.{l}.hook_resid_post" in msg
    assert "ln2.hook_normalized" in msg


@pytest.mark.parametrize("arch,skip", [("transcoder", False), ("skip_transcoder", True),
                                       ("jumprelu_transcoder", False),
                                       ("jumprelu_skip_transcoder", True)])
def test_saelens_transcoders(arch, skip, tmp_path):
    rng = np.random.default_rng(5)
    jump = arch.startswith("jumprelu")
    t = _sae_tensors(rng, d_out=10, threshold=jump)
    if skip:
        t["W_skip"] = _rand(rng, 10, D)  # SAELens: [d_out, d_in], applied as x @ W_skip.T
    cfg = {"architecture": arch, "d_in": D, "d_sae": M, "d_out": 10,
           "apply_b_dec_to_input": True,  # SAELens transcoders never subtract b_dec
           "metadata": {"hook_name": "blocks.1.hook_resid_mid",
                        "hook_name_out": "blocks.1.hook_mlp_out"}}
    d = import_saelens(_saelens(tmp_path, cfg, t))
    assert (d.in_site, d.out_site) == (Site(1, "resid_mid"), Site(1, "mlp_out"))
    x = _x(5).astype(np.float64)
    pre = x @ t["W_enc"] + t["b_enc"]
    f = _jump(pre, t["threshold"]) if jump else np.maximum(pre, 0)
    y = f @ t["W_dec"] + t["b_dec"] + (x @ t["W_skip"].T if skip else 0)
    np.testing.assert_allclose(_enc(d, x.astype(np.float32)), f, atol=1e-5)
    np.testing.assert_allclose(_fwd(d, x.astype(np.float32)), y, atol=1e-4)


def test_transcoder_without_output_hook_is_refused(tmp_path):
    t = _sae_tensors(np.random.default_rng(6), threshold=False)
    cfg = {"architecture": "transcoder", "d_in": D, "d_sae": M, "d_out": D,
           "metadata": {"hook_name": "blocks.1.hook_resid_mid"}}
    with pytest.raises(FormatError, match="without hook_name_out"):
        import_saelens(_saelens(tmp_path, cfg, t))


def test_normalize_activations(tmp_path):
    rng = np.random.default_rng(7)
    t = _sae_tensors(rng)
    cfg = {"architecture": "jumprelu", "d_in": D, "d_sae": M, "apply_b_dec_to_input": True,
           "hook_name": "blocks.0.hook_resid_post",
           "normalize_activations": "expected_average_only_in"}
    p = _saelens(tmp_path, cfg, t)
    with pytest.raises(FormatError, match="norm_scaling_factor") as e:
        import_saelens(p)
    _one_line(e)
    s = 0.37
    d = import_saelens(p, norm_scaling_factor=s)
    x = _x(7).astype(np.float64)
    pre = (x * s - t["b_dec"]) @ t["W_enc"] + t["b_enc"]  # SAELens: the SAE sees x * s
    f = _jump(pre, t["threshold"])
    np.testing.assert_allclose(_enc(d, x.astype(np.float32)), f, atol=1e-5)
    np.testing.assert_allclose(_fwd(d, x.astype(np.float32)), (f @ t["W_dec"] + t["b_dec"]) / s,
                               atol=1e-4)
    for mode in ("constant_norm_rescale", "layer_norm"):
        q = _saelens(tmp_path, {**cfg, "normalize_activations": mode}, t, mode)
        with pytest.raises(FormatError, match="rescales each token") as e:
            import_saelens(q)
        _one_line(e)


def test_finetuning_scaling_factor_and_bf16(tmp_path):
    rng = np.random.default_rng(8)
    t = _sae_tensors(rng, threshold=False)
    scale = rng.uniform(0.5, 2.0, M).astype(np.float32)
    p = tmp_path / "sl"
    p.mkdir()
    (p / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": D, "d_sae": M, "dtype": "bfloat16",
        "apply_b_dec_to_input": False, "finetuning_scaling_factor": True,
        "hook_name": "blocks.1.hook_resid_post"}))
    mx.save_safetensors(str(p / "sae_weights.safetensors"),
                        {**{k: mx.array(v).astype(mx.bfloat16) for k, v in t.items()},
                         "scaling_factor": mx.array(scale)})
    d = import_saelens(p)
    assert d.W_enc.dtype == mx.float32
    bf = {k: np.array(mx.array(v).astype(mx.bfloat16).astype(mx.float32), np.float64)
          for k, v in t.items()}  # the stored values, exactly
    x = _x(8).astype(np.float64)
    f = np.maximum(x @ bf["W_enc"] + bf["b_enc"], 0)
    np.testing.assert_allclose(_enc(d, x.astype(np.float32)), f, atol=1e-5)
    # SAELens decodes (f * scaling_factor) @ W_dec + b_dec
    np.testing.assert_allclose(_fwd(d, x.astype(np.float32)),
                               (f * scale) @ bf["W_dec"] + bf["b_dec"], atol=1e-4)


def test_saelens_bad_folders_are_one_line(tmp_path):
    rng = np.random.default_rng(9)
    t = _sae_tensors(rng)
    cfg = {"architecture": "jumprelu", "d_in": D, "d_sae": M,
           "hook_name": "blocks.0.hook_resid_post"}
    with pytest.raises(FormatError, match="missing file .*cfg.json") as e:
        import_saelens(tmp_path / "nothing")
    _one_line(e)
    p = tmp_path / "noweights"
    p.mkdir()
    (p / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="missing weights file .*sae_weights.safetensors") as e:
        import_saelens(p)
    _one_line(e)
    bad = {**t, "W_enc": t["W_enc"].T.copy()}  # circuit-tracer orientation in a SAELens folder
    with pytest.raises(FormatError,
                       match=r"W_enc has shape \[24, 12\], cfg.json implies \[12, 24\]") as e:
        import_saelens(_saelens(tmp_path, cfg, bad, "transposed"))
    _one_line(e)
    with pytest.raises(FormatError, match=r"lacks tensors \['threshold'\]") as e:
        import_saelens(_saelens(tmp_path, cfg, {k: v for k, v in t.items() if k != "threshold"},
                                "nothr"))
    _one_line(e)
    with pytest.raises(UnknownArchitectureError, match="'temporal'.*supported: standard") as e:
        import_saelens(_saelens(tmp_path, {**cfg, "architecture": "temporal"}, t, "temporal"))
    _one_line(e)
    with pytest.raises(FormatError, match="hook_head_index") as e:
        import_saelens(_saelens(tmp_path, {**cfg, "hook_head_index": 3}, t, "head"))
    with pytest.raises(FormatError, match="2 negative values") as e:
        neg = {**t, "threshold": np.where(np.arange(M) < 2, -0.1, 0.2).astype(np.float32)}
        import_saelens(_saelens(tmp_path, cfg, neg, "neg"))
    _one_line(e)
    nan = {**t, "b_dec": np.where(np.arange(D) == 3, np.nan, 0.1).astype(np.float32)}
    with pytest.raises(NonFiniteWeightsError, match=r"tensor b_dec has 1 NaN"):
        import_saelens(_saelens(tmp_path, cfg, nan, "nan"))
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "cfg.json").write_text(json.dumps(cfg))
    data = (tmp_path / "transposed" / "sae_weights.safetensors").read_bytes()
    (tmp_path / "trunc" / "sae_weights.safetensors").write_bytes(data[:-100])
    with pytest.raises(FormatError, match="truncated or corrupt") as e:
        import_saelens(tmp_path / "trunc")
    _one_line(e)


# ------------------------------------------------- norms folded from a real (tiny) model
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {a: load_model(make_tiny_model(a, root / a, seed=1))
            for a in ("gemma2", "gpt2", "llama")}


def _normalized(model, layer, tokens):
    """TransformerLens's ln2.hook_normalized computed independently from resid_mid."""
    rm = np.array(capture(model, tokens, [Site(layer, "resid_mid")])[Site(layer, "resid_mid")][0],
                  np.float64)
    eps = model.layers[layer].pre_mlp_norm.eps
    if model.arch == "gpt2":
        rm = rm - rm.mean(-1, keepdims=True)
    return rm / np.sqrt((rm ** 2).mean(-1, keepdims=True) + eps)


def _mlp_in(model, layer, tokens):
    return np.array(capture(model, tokens, [Site(layer, "mlp_in")])[Site(layer, "mlp_in")][0])


@pytest.mark.parametrize("arch", ["gemma2", "gpt2"])
@pytest.mark.parametrize("apply", [True, False])
def test_ln2_hook_normalized_sae_folds_the_norm_affine(arch, apply, models, tmp_path):
    model = models[arch]
    rng = np.random.default_rng(10)
    t = _sae_tensors(rng, d_in=model.d_model, m=32)
    cfg = {"architecture": "jumprelu", "d_in": model.d_model, "d_sae": 32,
           "apply_b_dec_to_input": apply, "metadata": {"hook_name": "blocks.1.ln2.hook_normalized"}}
    p = _saelens(tmp_path, cfg, t)
    with pytest.raises(NormFoldError, match="pass model=") as e:
        import_saelens(p)
    _one_line(e)
    d = import_saelens(p, model=model)
    assert d.in_site == d.out_site == Site(1, "mlp_in")
    tokens = mx.array([model.encode("the cat sat on the mat and the dog")])
    xn = _normalized(model, 1, tokens)
    pre = (xn - (t["b_dec"] if apply else 0)) @ t["W_enc"] + t["b_enc"]
    f = _jump(pre, t["threshold"])
    assert 0 < (f > 0).mean() < 1
    np.testing.assert_allclose(_enc(d, _mlp_in(model, 1, tokens)), f, atol=2e-5)


def test_ct_ln2_hook_normalized_and_mlp_hook_out(models, tmp_path):
    """Gemma Scope transcoders through circuit-tracer's config (Gemma Scope .npz layout)."""
    gemma = models["gemma2"]
    rng = np.random.default_rng(11)
    d = gemma.d_model
    p = tmp_path / "gs"
    p.mkdir()
    layers = {}
    for i in range(2):
        layers[i] = {"w_enc": _rand(rng, d, 32), "w_dec": _rand(rng, 32, d),
                     "b_enc": _rand(rng, 32, scale=0.2), "b_dec": _rand(rng, d, scale=0.2),
                     "threshold": rng.uniform(0.05, 0.4, 32).astype(np.float32)}
        (p / f"layer_{i}").mkdir()
        np.savez(p / f"layer_{i}" / "params.npz", **layers[i])
    uris = [f"hf://google/gemma-scope-2b-pt-transcoders/layer_{i}/params.npz" for i in range(2)]
    _write_yaml(p, 'model_name: "google/gemma-2-2b"\nmodel_kind: transcoder_set\n'
                   'feature_input_hook: "ln2.hook_normalized"\n'
                   'feature_output_hook: "hook_mlp_out"\n'
                   "transcoders:\n" + "".join(f'  - "{u}"\n' for u in uris))
    with pytest.raises(NormFoldError):
        import_circuit_tracer(p)
    tcs = import_circuit_tracer(p, model=gemma)
    assert [(tc.in_site, tc.out_site) for tc in tcs.values()] == [
        (Site(i, "mlp_in"), Site(i, "mlp_out")) for i in range(2)]
    tokens = mx.array([gemma.encode("the cat sat on the mat")])
    for i in range(2):
        xn, L = _normalized(gemma, i, tokens), layers[i]
        f = _jump(xn @ L["w_enc"] + L["b_enc"], L["threshold"])
        np.testing.assert_allclose(_enc(tcs[i], _mlp_in(gemma, i, tokens)), f, atol=2e-5)
        np.testing.assert_allclose(_fwd(tcs[i], _mlp_in(gemma, i, tokens)),
                                   f @ L["w_dec"] + L["b_dec"], atol=1e-4)
    # mlp.hook_out is the MLP module's output: not our mlp_out when a post-norm follows
    _write_yaml(p, 'feature_input_hook: "ln2.hook_normalized"\n'
                   'feature_output_hook: "mlp.hook_out"\n'
                   "transcoders:\n" + "".join(f'  - "{u}"\n' for u in uris))
    with pytest.raises(UnsupportedHookError, match="post-feedforward norm") as e:
        import_circuit_tracer(p, model=gemma)
    _one_line(e)


# ------------------------------------------------------------- circuit-tracer sets
def _ct_layer(rng, d_in=D, m=M, d_out=D, jump=True, skip=False):
    t = {"W_enc": _rand(rng, m, d_in), "W_dec": _rand(rng, m, d_out),
         "b_enc": _rand(rng, m, scale=0.2), "b_dec": _rand(rng, d_out, scale=0.2)}
    if jump:
        t["activation_function.threshold"] = rng.uniform(0.05, 0.4, m).astype(np.float32)
    if skip:
        t["W_skip"] = _rand(rng, d_out, d_in, scale=0.2)
    return t


def test_ct_set_sites_from_config_and_published_equations(tmp_path):
    rng = np.random.default_rng(12)
    p = tmp_path / "ct"
    (p / "weights").mkdir(parents=True)
    layers = {i: _ct_layer(rng, skip=True) for i in range(3)}
    for i, t in layers.items():
        save_file(t, str(p / "weights" / f"tc_{i}.safetensors"))
    _write_yaml(p, 'model_name: "meta-llama/Llama-3.2-1B"\nmodel_kind: transcoder_set\n'
                   'feature_input_hook: "hook_resid_mid"\nfeature_output_hook: "hook_mlp_out"\n'
                   'scan: "some-scan"\ntranscoders:\n'
                   '  - "weights/tc_0.safetensors"\n'
                   '  - "hf://mntss/some-repo/weights/tc_1.safetensors"\n'
                   f'  - "{p / "weights" / "tc_2.safetensors"}"\n')
    cfg = read_config(p)
    assert cfg.model_name == "meta-llama/Llama-3.2-1B" and cfg.scan == "some-scan"
    tcs = import_circuit_tracer(p)
    assert sorted(tcs) == [0, 1, 2]
    for i, t in layers.items():
        tc = tcs[i]
        assert (tc.in_site, tc.out_site) == (Site(i, "resid_mid"), Site(i, "mlp_out"))
        x = _x(20 + i).astype(np.float64)
        pre = x @ t["W_enc"].T + t["b_enc"]  # circuit-tracer: F.linear(x, W_enc, b_enc)
        f = _jump(pre, t["activation_function.threshold"])
        y = f @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"].T
        np.testing.assert_allclose(_enc(tc, x.astype(np.float32)), f, atol=1e-5)
        np.testing.assert_allclose(_fwd(tc, x.astype(np.float32)), y, atol=1e-4)
    assert list(import_circuit_tracer(p, layers=[2])) == [2]


def test_ct_activation_rules(tmp_path):
    rng = np.random.default_rng(13)
    t = _ct_layer(rng)
    p = tmp_path / "ct"
    p.mkdir()
    save_file(t, str(p / "layer_0.safetensors"))
    hooks = 'feature_input_hook: "mlp.hook_in"\nfeature_output_hook: "mlp.hook_out"\n'
    x = _x(30).astype(np.float64)
    pre = x @ t["W_enc"].T + t["b_enc"]
    _write_yaml(p, hooks + "activation: topk\nk: 4\n")
    tc = import_circuit_tracer(p)[0]
    assert (tc.in_site, tc.out_site) == (Site(0, "mlp_in"), Site(0, "mlp_out"))
    assert (np.sort(pre, -1)[:, -4] > 0).all()  # where circuit-tracer's TopK (no ReLU) = ours
    kth = np.sort(pre, -1)[:, [-4]]
    np.testing.assert_allclose(_enc(tc, x.astype(np.float32)), np.where(pre >= kth, pre, 0),
                               atol=1e-5)
    _write_yaml(p, hooks + "activation: relu\n")  # the threshold in the file is ignored
    np.testing.assert_allclose(_enc(import_circuit_tracer(p)[0], x.astype(np.float32)),
                               np.maximum(pre, 0), atol=1e-5)
    _write_yaml(p, hooks + "activation: softplus\n")
    with pytest.raises(FormatError, match="unsupported activation 'softplus'") as e:
        import_circuit_tracer(p)
    _one_line(e)
    _write_yaml(p, hooks + "activation: topk\n")
    with pytest.raises(FormatError, match="neither config.yaml nor the file gives k"):
        import_circuit_tracer(p)


def test_ct_bad_sets_are_one_line(tmp_path):
    rng = np.random.default_rng(14)
    p = tmp_path / "ct"
    p.mkdir()
    save_file(_ct_layer(rng), str(p / "layer_0.safetensors"))
    with pytest.raises(FormatError, match="pass in_hook= and out_hook=") as e:
        import_circuit_tracer(p)  # no config.yaml
    _one_line(e)
    assert import_circuit_tracer(p, in_hook="mlp.hook_in", out_hook="hook_mlp_out")[0].out_site \
        == Site(0, "mlp_out")
    _write_yaml(p, 'feature_input_hook: "mlp.hook_pre"\nfeature_output_hook: "hook_mlp_out"\n')
    with pytest.raises(UnsupportedHookError, match="'blocks.0.mlp.hook_pre'|'mlp.hook_pre'") as e:
        import_circuit_tracer(p)
    assert "supported: blocks.{l}.hook_resid_pre" in _one_line(e)
    _write_yaml(p, 'feature_input_hook: "mlp.hook_in"\nfeature_output_hook: "hook_mlp_out"\n'
                   'transcoders:\n  - "layer_0.safetensors"\n  - "hf://org/repo/layer_1.safetensors"\n')
    with pytest.raises(FormatError, match="layer 1 file 'hf://org/repo/layer_1.safetensors' is "
                                          "not here") as e:
        import_circuit_tracer(p)
    _one_line(e)
    _write_yaml(p, 'feature_input_hook: "mlp.hook_in"\nfeature_output_hook: "hook_mlp_out"\n')
    t = _ct_layer(rng)
    save_file({**t, "W_enc": t["W_enc"].T.copy()}, str(p / "layer_0.safetensors"))
    with pytest.raises(FormatError,
                       match=r"W_enc has shape \[12, 24\], expected \[d_tc, d_in\]") as e:
        import_circuit_tracer(p)
    _one_line(e)
    save_file({k: v for k, v in t.items() if k != "b_dec"}, str(p / "layer_0.safetensors"))
    with pytest.raises(FormatError, match=r"lacks tensors \['b_dec'\]") as e:
        import_circuit_tracer(p)
    _one_line(e)
    (p / "config.yaml").write_text("feature_input_hook: [unclosed\n")
    with pytest.raises(FormatError, match="not valid YAML") as e:
        import_circuit_tracer(p)
    _one_line(e)


def test_model_checks_width_and_layers(models, tmp_path):
    llama = models["llama"]
    rng = np.random.default_rng(15)
    p = tmp_path / "ct"
    p.mkdir()
    _write_yaml(p, 'feature_input_hook: "mlp.hook_in"\nfeature_output_hook: "mlp.hook_out"\n')
    save_file(_ct_layer(rng), str(p / "layer_0.safetensors"))  # d_in 12, the model's is 64
    with pytest.raises(FormatError, match="d_in=12 but the model's d_model is 64") as e:
        import_circuit_tracer(p, model=llama)
    _one_line(e)
    save_file(_ct_layer(rng, d_in=64, d_out=64), str(p / "layer_0.safetensors"))
    save_file(_ct_layer(rng, d_in=64, d_out=64), str(p / "layer_5.safetensors"))
    with pytest.raises(UnsupportedHookError, match="layer 5 but the model has 2 layers") as e:
        import_circuit_tracer(p, model=llama)
    _one_line(e)
    (p / "layer_5.safetensors").unlink()
    tc = import_circuit_tracer(p, model=llama)[0]  # llama: mlp.hook_out is mlp_out
    assert tc.out_site == Site(0, "mlp_out")


# -------------------------------------------------------------------------- CLTs
def _clt_files(p, rng, n=3, m=8, d=6, jump=True):
    p.mkdir()
    enc, dec = {}, {}
    for i in range(n):
        enc[i] = {f"W_enc_{i}": _rand(rng, m, d), f"b_enc_{i}": _rand(rng, m, scale=0.2),
                  f"b_dec_{i}": _rand(rng, d, scale=0.2)}
        if jump:
            enc[i][f"threshold_{i}"] = rng.uniform(0.05, 0.3, m).astype(np.float32)
        dec[i] = {f"W_dec_{i}": _rand(rng, m, n - i, d)}
        save_file(enc[i], str(p / f"W_enc_{i}.safetensors"))
        save_file(dec[i], str(p / f"W_dec_{i}.safetensors"))
    return enc, dec


def test_clt_from_circuit_tracer_files(tmp_path):
    rng = np.random.default_rng(16)
    p = tmp_path / "clt"
    enc, dec = _clt_files(p, rng)
    with pytest.raises(FormatError, match="no config.yaml naming feature_input_hook") as e:
        import_clt(p)
    _one_line(e)
    _write_yaml(p, 'model_kind: cross_layer_transcoder\nfeature_input_hook: "hook_resid_mid"\n'
                   'feature_output_hook: "hook_mlp_out"\n')
    clt = import_clt(p)
    assert clt.in_sites == [Site(i, "resid_mid") for i in range(3)]
    assert clt.out_sites == [Site(i, "mlp_out") for i in range(3)]
    xs = [_x(40 + i, n=10, d=6).astype(np.float64) for i in range(3)]
    fs = [_jump(x @ enc[i][f"W_enc_{i}"].T + enc[i][f"b_enc_{i}"], enc[i][f"threshold_{i}"])
          for i, x in enumerate(xs)]
    ours = clt([mx.array(x.astype(np.float32)) for x in xs])
    np.testing.assert_allclose(np.array(clt.encode([mx.array(x.astype(np.float32)) for x in xs])),
                               np.stack(fs, axis=-2), atol=1e-5)
    for j in range(3):  # y_j = b_dec_j + sum_{i<=j} f_i W_dec_i[:, j-i, :]
        y = enc[j][f"b_dec_{j}"] + sum(fs[i] @ dec[i][f"W_dec_{i}"][:, j - i, :]
                                       for i in range(j + 1))
        np.testing.assert_allclose(np.array(ours[j]), y, atol=1e-4)
    relu = import_clt(p, in_hook="mlp.hook_in", out_hook="mlp.hook_out")  # explicit hooks win
    assert relu.in_sites[1] == Site(1, "mlp_in")


def test_clt_bad_directories(tmp_path):
    rng = np.random.default_rng(17)
    p = tmp_path / "clt"
    _clt_files(p, rng, jump=False)
    _write_yaml(p, 'feature_input_hook: "hook_resid_mid"\nfeature_output_hook: "hook_mlp_out"\n')
    assert import_clt(p).hparams["activation"] == "relu"
    (p / "W_dec_1.safetensors").unlink()
    with pytest.raises(FormatError, match="W_dec_1.safetensors is missing") as e:
        import_clt(p)
    _one_line(e)
    save_file({"W_dec_1": _rand(rng, 8, 3, 6)}, str(p / "W_dec_1.safetensors"))
    with pytest.raises(FormatError,
                       match=r"W_dec_1 has shape \[8, 3, 6\], expected \[8, 2, 6\]") as e:
        import_clt(p)
    _one_line(e)
    save_file({"W_dec_1": _rand(rng, 8, 2, 6)}, str(p / "W_dec_1.safetensors"))
    e0 = {"W_enc_0": _rand(rng, 8, 6), "b_enc_0": _rand(rng, 8), "b_dec_0": _rand(rng, 6),
          "W_skip_0": _rand(rng, 6, 6)}
    save_file(e0, str(p / "W_enc_0.safetensors"))
    with pytest.raises(FormatError, match="skip CLTs") as e:
        import_clt(p)
    _one_line(e)
    with pytest.raises(FormatError, match="no CLT at"):
        import_clt(tmp_path / "absent")


# ------------------------------------------------------------------------- exports
def test_exports_write_circuit_tracer_configs(tmp_path):
    from sae_test_helpers import random_dictionary

    tcs = {i: random_dictionary("topk", transcoder=True, seed=i) for i in range(2)}
    for i, d in tcs.items():
        d.in_site, d.out_site = Site(i, "resid_mid"), Site(i, "mlp_out")
    export_circuit_tracer(tcs, tmp_path / "ct", model_name="tiny")
    cfg = read_config(tmp_path / "ct")
    assert (cfg.model_kind, cfg.feature_input_hook, cfg.feature_output_hook) == (
        "transcoder_set", "hook_resid_mid", "hook_mlp_out")
    assert (cfg.activation, cfg.k, cfg.transcoders) == (
        "topk", 4, ("layer_0.safetensors", "layer_1.safetensors"))
    back = import_circuit_tracer(tmp_path / "ct")
    assert [(b.in_site, b.out_site) for b in back.values()] == [
        (Site(i, "resid_mid"), Site(i, "mlp_out")) for i in range(2)]
    other = random_dictionary("topk", transcoder=True, seed=5, k=6)
    with pytest.raises(FormatError, match="one activation"):
        export_circuit_tracer({0: tcs[0], 1: other}, tmp_path / "mixed")
    from sae.arch import CrossLayerTranscoder
    clt = CrossLayerTranscoder(6, 8, 2, activation="relu")
    export_clt(clt, tmp_path / "clt")
    c = read_config(tmp_path / "clt")
    assert (c.model_kind, c.feature_input_hook, c.feature_output_hook) == (
        "cross_layer_transcoder", "mlp.hook_in", "hook_mlp_out")
    assert import_clt(tmp_path / "clt").in_sites == [Site(0, "mlp_in"), Site(1, "mlp_in")]


def test_imported_set_builds_the_same_graph_as_contiguous_copies(models, tmp_path):
    """The imported W_enc is a transposed view of the file; attribution must not care."""
    from attribution import build_graph
    from sae.arch import JumpReLUDictionary

    llama = models["llama"]
    rng = np.random.default_rng(18)
    p = tmp_path / "ct"
    p.mkdir()
    _write_yaml(p, 'feature_input_hook: "mlp.hook_in"\nfeature_output_hook: "hook_mlp_out"\n')
    for i in range(llama.n_layers):
        t = _ct_layer(rng, d_in=64, m=48, d_out=64)
        t["activation_function.threshold"][:] = 0.02
        save_file(t, str(p / f"layer_{i}.safetensors"))
    imported = import_circuit_tracer(p, model=llama)
    copies = {}
    for i, d in imported.items():
        c = JumpReLUDictionary(64, 48, in_site=d.in_site, out_site=d.out_site)
        c.load_arrays({k: mx.array(np.array(v)) for k, v in d.arrays().items()})  # contiguous
        copies[i] = c
    prompt = "the cat sat on the mat"
    g1 = build_graph(llama, list(imported.values()), prompt)
    g2 = build_graph(llama, list(copies.values()), prompt)
    assert g1.n_nodes == g2.n_nodes and (g1.nodes["type"] == "feature").sum() > 0
    np.testing.assert_allclose(g1.adjacency.toarray(), g2.adjacency.toarray(), atol=1e-5)
