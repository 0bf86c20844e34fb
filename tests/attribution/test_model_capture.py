"""Capture: values against an independent numpy forward, shapes, no side effects."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from model_reference import Reference

from attribution import SITE_KINDS, Site, capture, run
from attribution.model.hooks import active_count
from attribution.model.plan import norm_forms

ALL_KINDS = list(SITE_KINDS)


def _np(a):
    return np.array(a, dtype=np.float64)


def test_resid_post_matches_reference_forward(model, tokens):
    ref = Reference(model)
    ref_logits = ref.forward(np.array(tokens))
    for layer in range(model.n_layers):
        site = Site(layer, "resid_post")
        got = _np(capture(model, tokens, [site])[site])
        want = ref.acts[(layer, "resid_post")]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(_np(model(tokens)), ref_logits, rtol=1e-4, atol=1e-4)


def test_every_site_kind_matches_reference(model, tokens):
    ref = Reference(model)
    ref.forward(np.array(tokens))
    sites = [Site(layer, k) for layer in range(model.n_layers) for k in ALL_KINDS]
    cache = capture(model, tokens, sites)
    for s in sites:
        want = ref.acts[(s.layer, s.kind)]
        np.testing.assert_allclose(_np(cache[s]), want, rtol=1e-4, atol=1e-4 * np.abs(want).max() + 1e-6,
                                   err_msg=str(s))


def test_shapes_of_every_site_kind(model, tokens):
    b, t = tokens.shape
    sites = [Site(model.n_layers - 1, k) for k in ALL_KINDS]
    cache = capture(model, tokens, sites)
    expect = {"attn_z": (b, t, model.n_heads, model.d_head), "attn_pattern": (b, model.n_heads, t, t)}
    for s in sites:
        assert cache[s].shape == expect.get(s.kind, (b, t, model.d_model)), s


def test_capture_changes_no_logits(model, tokens):
    base = model(tokens)
    mx.eval(base)
    sites = [Site(layer, k) for layer in range(model.n_layers) for k in ALL_KINDS]
    res = run(model, tokens, capture=sites)
    assert float(mx.max(mx.abs(res.logits - base))) <= 1e-6
    assert active_count() == 0
    again = model(tokens)
    assert mx.array_equal(again, base)


def test_attention_pattern_rows_sum_to_one_and_causal(model, tokens):
    sites = [Site(layer, "attn_pattern") for layer in range(model.n_layers)]
    cache = capture(model, tokens, sites)
    t = tokens.shape[1]
    upper = np.triu(np.ones((t, t), bool), k=1)
    for s in sites:
        p = _np(cache[s])
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
        assert np.all(p[..., upper] == 0), f"{s} attends to the future"


def test_capture_stops_early(model, tokens):
    res = run(model, tokens, capture=[Site(0, "mlp_in")], stop_after=Site(0, "mlp_in"))
    assert res.logits is None and Site(0, "mlp_in") in res.cache
    full = run(model, tokens, capture=[Site(0, "mlp_in")])
    assert mx.array_equal(full.cache[Site(0, "mlp_in")], res.cache[Site(0, "mlp_in")])


def test_embed_and_unembed_relations(model, tokens):
    """resid_pre[0] = W_E[tok]*scale (+W_pos); logits = softcap(final_norm(resid_post[-1]) @ W_U)."""
    emb = _np(model.embed(tokens))
    want = _np(model.W_E)[np.array(tokens)] * model.embed_scale
    if model.W_pos is not None:
        want = want + _np(model.W_pos)[: tokens.shape[1]][None]
    np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-5)
    last = Site(model.n_layers - 1, "resid_post")
    h = run(model, tokens, capture=[last]).cache[last]
    z = _np(model.final_norm(h)) @ _np(model.W_U)
    if model.logit_softcap:
        z = np.tanh(z / model.logit_softcap) * model.logit_softcap
    np.testing.assert_allclose(z, _np(model(tokens)), rtol=1e-4, atol=1e-4)


def test_W_O_per_head_writes(model, tokens):
    """attn = sum_h z_h @ W_O[h] + bias; Gemma adds its post-attention norm on top."""
    layer = model.n_layers - 1
    zs, out = Site(layer, "attn_z"), Site(layer, "attn_out")
    cache = capture(model, tokens, [zs, out])
    w_o = _np(model.W_O(layer))
    assert w_o.shape == (model.n_heads, model.d_head, model.d_model)
    summed = np.einsum("bthd,hde->bte", _np(cache[zs]), w_o)
    proj = model.layers[layer].out_proj
    if "bias" in proj:
        summed = summed + _np(proj.bias)
    if model.arch.startswith("gemma"):
        post_norm = model.layers[layer].norms["post_attention_layernorm"]
        summed = _np(post_norm(mx.array(summed.astype(np.float32))))
    np.testing.assert_allclose(summed, _np(cache[out]), rtol=1e-4, atol=1e-5)


def test_dimensions_and_handles(model, tiny_dirs, arch):
    cfg = model.config
    assert model.n_layers == cfg.get("num_hidden_layers", cfg.get("n_layer"))
    assert model.d_model == 64 and model.n_heads == 4 and model.d_head == 16
    assert model.n_kv_heads == (4 if arch == "gpt2" else 2)
    assert model.vocab_size == len(model.tokenizer.get_vocab())
    assert model.max_context == 64
    assert model.W_E.shape == (model.vocab_size, 64) and model.W_U.shape == (64, model.vocab_size)
    for h in model.layers:
        assert h.block is model.module.layers[h.index]
        assert len(h.norms) == (4 if arch.startswith("gemma") else 2)
    forms = {f for _, f in norm_forms(model)}
    assert forms == ({"layer"} if arch == "gpt2" else {"rms_1p"} if arch.startswith("gemma") else {"rms"})
    ids = model.encode("the cat sat")
    assert ids[0] == model.tokenizer.bos_token_id and model.encode("the cat sat", bos=False) == ids[1:]
    assert model.decode(ids[1:]) == "the cat sat"
    # Each token as it reads inside a text: joined, they give the decoded text back.
    assert model.to_str_tokens(ids[1:]) == [" the", " cat", " sat"]
    assert "".join(model.to_str_tokens(ids[1:])).strip() == model.decode(ids[1:])


@pytest.mark.parametrize("kind", ["resid_mid", "attn_pattern"])
def test_capture_equals_run_cache(tiny_models, kind):
    m = tiny_models["llama"]
    from model_reference import make_tokens

    toks = make_tokens(m, seed=3)
    s = Site(1, kind)
    assert mx.array_equal(capture(m, toks, [s])[s], run(m, toks, capture=[s]).cache[s])


def test_tiny_model_directory_is_a_real_mlx_lm_model(tiny_dirs, arch):
    import json

    from mlx_lm.utils import load_model as mlx_load_model

    path = tiny_dirs[arch]
    cfg = json.loads((path / "config.json").read_text())
    vocab = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    assert cfg["vocab_size"] == len(vocab)
    assert 0 <= cfg["bos_token_id"] < len(vocab) and 0 <= cfg["eos_token_id"] < len(vocab)
    module, _ = mlx_load_model(path)
    assert len(module.layers) == cfg.get("num_hidden_layers", cfg.get("n_layer"))


@pytest.mark.parametrize("extra", ["gpt_neox", "mixtral"])
def test_extra_architectures_smoke(tmp_path, extra):
    """Parallel-residual and MoE models: every defined site captures without changing logits."""
    from model_reference import make_tokens

    from attribution import load_model, site_grads
    from attribution.errors import UnsupportedArchitectureError
    from attribution.tiny import make_tiny_model

    model = load_model(make_tiny_model(extra, tmp_path / extra))
    toks = make_tokens(model)
    base = model(toks)
    kinds = [k for k in ALL_KINDS if not (extra == "gpt_neox" and k == "resid_mid")]
    res = run(model, toks, capture=[Site(1, k) for k in kinds])
    assert float(mx.max(mx.abs(res.logits - base))) <= 1e-6
    assert res.cache[Site(1, "attn_z")].shape == (2, 8, 4, 16)
    if extra == "gpt_neox":
        with pytest.raises(UnsupportedArchitectureError, match="parallel"):
            capture(model, toks, [Site(0, "resid_mid")])
    value, grads = site_grads(model, toks, [Site(0, "resid_pre")], lambda lg: lg[:, -1, 4].sum(), freeze=True)
    assert float(mx.sum(mx.abs(grads[Site(0, "resid_pre")]))) > 0


def test_handles_follow_replaced_modules(tiny_dirs):
    """Swapping a block's MLP after loading: hooks attach to the new module."""
    import mlx.nn as nn
    from model_reference import make_tokens

    from attribution import Ablate, load_model

    model = load_model(tiny_dirs["llama"])  # private copy: this test mutates it
    toks = make_tokens(model)
    old = model.module.layers[1].mlp

    class Doubled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def __call__(self, x):
            return 2 * self.inner(x)

    model.module.layers[1].mlp = Doubled(old)
    site = Site(1, "mlp_out")
    out = capture(model, toks, [site, Site(1, "mlp_in")])
    np.testing.assert_allclose(np.array(out[site]), 2 * np.array(old(out[Site(1, "mlp_in")])), rtol=1e-5,
                               atol=1e-6)
    assert model.layers[1].mlp is model.module.layers[1].mlp
    assert float(mx.max(mx.abs(run(model, toks, [Ablate(site)]).logits - model(toks)))) > 0
