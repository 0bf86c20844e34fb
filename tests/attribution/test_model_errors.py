"""Bad inputs raise specific errors naming the fix; hooks never leak, even on exceptions."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest
from model_reference import make_tokens

from attribution import (
    Ablate,
    AttributionError,
    ContextLengthError,
    EmptySequenceError,
    LayerRangeError,
    ModelNotFoundError,
    NotAModelError,
    Scale,
    Site,
    SiteError,
    SiteKindError,
    TokenRangeError,
    capture,
    frozen,
    intervene,
    load_model,
    run,
    site_grads,
)
from attribution.model.hooks import active_count, base_class


def _classes(model):
    return {id(m): type(m) for _, m in model.module.named_modules()}


def _sdpa_functions():
    import sys

    return {n: getattr(m, "scaled_dot_product_attention", None) for n, m in list(sys.modules.items())
            if n.startswith("mlx_lm.models.")}


class Boom(RuntimeError):
    pass


def test_exception_inside_intervene_and_frozen_restores_everything(model, tokens):
    before = model(tokens)
    mx.eval(before)
    classes, sdpa = _classes(model), _sdpa_functions()
    ivs = [Ablate(Site(0, "attn_z"), head=0), Scale(Site(1, "attn_pattern"), 0.5),
           Scale(Site(0, "resid_mid"), 0.9)]
    with pytest.raises(Boom):
        with intervene(model, ivs):
            with frozen(model):
                mx.eval(model(tokens))
                raise Boom
    assert active_count() == 0
    assert _classes(model) == classes and _sdpa_functions() == sdpa
    assert all(base_class(m) is type(m) for _, m in model.module.named_modules())
    assert mx.array_equal(model(tokens), before)


def test_exception_inside_forward_restores(model, tokens):
    before = model(tokens)
    mx.eval(before)

    def bad_metric(logits):
        raise Boom

    with pytest.raises(Boom):
        site_grads(model, tokens, [Site(0, "attn_pattern")], bad_metric, freeze=True)
    with pytest.raises(AttributionError):  # shape error raised from inside a hook
        run(model, tokens, [Ablate(Site(1, "mlp_out"), "mean", reference=mx.zeros((2, 3, 5, 7)))])
    assert active_count() == 0
    assert mx.array_equal(model(tokens), before)


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_directory_that_is_not_a_model(tmp_path, tiny_dirs):
    with pytest.raises(NotAModelError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4}))
    with pytest.raises(NotAModelError, match="model_type"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(NotAModelError, match="safetensors"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_arch"}))
    (tmp_path / "model.safetensors").write_bytes((tiny_dirs["llama"] / "model.safetensors").read_bytes())
    with pytest.raises(NotAModelError, match="could not load"):
        load_model(tmp_path)


def test_unknown_site_kind(tiny_models):
    model = tiny_models["llama"]
    toks = make_tokens(model)
    with pytest.raises(SiteKindError, match="valid kinds"):
        capture(model, toks, ["L0.not_a_kind"])
    with pytest.raises(SiteError, match="unknown site kind"):
        Site(0, "bogus")  # type: ignore[arg-type]


def test_layer_out_of_range(tiny_models):
    model = tiny_models["gpt2"]
    toks = make_tokens(model)
    with pytest.raises(LayerRangeError, match=r"has 2 layers \(0..1\)"):
        capture(model, toks, [Site(2, "resid_post")])
    with pytest.raises(LayerRangeError):
        run(model, toks, [Ablate(Site(5, "mlp_out"))])
    with pytest.raises(LayerRangeError):
        model.W_O(-1)


def test_sequence_longer_than_context(tiny_models):
    model = tiny_models["gemma2"]
    with pytest.raises(ContextLengthError, match="exceeds the model's context of 64"):
        model(mx.zeros((1, 65), dtype=mx.int32))


def test_token_ids_outside_vocab(tiny_models):
    model = tiny_models["qwen2"]
    with pytest.raises(TokenRangeError, match="outside the vocabulary"):
        run(model, [[2, model.vocab_size]])
    with pytest.raises(TokenRangeError):
        capture(model, [[2, -1]], [Site(0, "resid_pre")])


def test_empty_token_sequence(tiny_models):
    model = tiny_models["phi3"]
    with pytest.raises(EmptySequenceError, match="at least one token"):
        model([])
    with pytest.raises(EmptySequenceError):
        capture(model, mx.zeros((2, 0), dtype=mx.int32), [Site(0, "resid_pre")])


def test_stop_after_before_captured_site(tiny_models):
    model = tiny_models["llama"]
    with pytest.raises(AttributionError, match="stop_after"):
        run(model, make_tokens(model), capture=[Site(1, "mlp_out")], stop_after=Site(0, "mlp_out"))


def test_negative_layer_and_int_stop_after(tiny_models):
    model = tiny_models["llama"]
    toks = make_tokens(model)
    with pytest.raises(LayerRangeError, match="numbered from 0"):
        capture(model, toks, [(-1, "resid_pre")])
    res = run(model, toks, capture=[Site(0, "resid_post")], stop_after=0)
    assert res.logits is None and Site(0, "resid_post") in res.cache


def test_attention_outside_the_hookable_kernel_raises(tiny_models, monkeypatch):
    """A model calling the fused kernel directly cannot silently skip pattern hooks."""
    import sys

    from attribution.errors import UnsupportedArchitectureError

    model = tiny_models["llama"]
    llama = sys.modules["mlx_lm.models.llama"]
    attn_cls = type(model.layers[0].attn)
    fused = mx.fast.scaled_dot_product_attention

    def direct(self, x, mask=None, cache=None):  # like an arch that inlines mx.fast sdpa
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.n_heads, -1).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(b, t, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, t, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        o = fused(q, k, v, scale=self.scale, mask=mask)
        return self.o_proj(o.transpose(0, 2, 1, 3).reshape(b, t, -1))

    monkeypatch.setattr(attn_cls, "__call__", direct)
    assert hasattr(llama, "scaled_dot_product_attention")
    with pytest.raises(UnsupportedArchitectureError, match="hookable kernel"):
        capture(model, make_tokens(model), [Site(0, "attn_pattern")])
    assert active_count() == 0


def test_hook_point_never_reached_raises(tiny_models, monkeypatch):
    """A block that bypasses its MLP: captures and edits there are reported, not silently empty."""
    from attribution import Add
    from attribution.errors import UnsupportedArchitectureError

    model = tiny_models["llama"]
    block_cls = base_class(model.layers[0].block)

    def attention_only(self, x, mask=None, cache=None):
        return x + self.self_attn(self.input_layernorm(x), mask, cache)

    monkeypatch.setattr(block_cls, "__call__", attention_only)
    toks = make_tokens(model)
    with pytest.raises(UnsupportedArchitectureError, match=r"never reached L1\.mlp_in"):
        capture(model, toks, [Site(1, "mlp_in")])
    with pytest.raises(UnsupportedArchitectureError, match=r"Add\(L0\.mlp_out\)"):
        run(model, toks, [Add(Site(0, "mlp_out"), 1.0)])
    assert active_count() == 0
