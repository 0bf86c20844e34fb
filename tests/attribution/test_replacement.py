"""Replacement model: exact forward with error terms, linearised forward, input validation."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import attribution  # noqa: F401  (BLAS preload before mlx)
from attribution import (
    ContextLengthError,
    EmptySequenceError,
    Site,
    TokenRangeError,
    run,
)
from attribution.attribute import GraphConfig, LogitTarget, build_graph
from attribution.graph import GraphMemoryError
from attribution.replacement import (
    DictionaryMismatchError,
    LogitTargetError,
    ReplacementModel,
    linear_forward,
    spliced_forward,
)
from attribution.replacement.linear import zero_deltas
from attribution.testing_dicts import random_clt, random_dictionary, random_transcoders

TOKENS = [2, 5, 9, 14, 7, 22, 31, 11]


def _dict_sets(model):
    n = model.n_layers
    return {
        "transcoder": random_transcoders(model, 32, seed=1),
        "skip": random_transcoders(model, 32, seed=2, kind="skip"),
        "clt": random_clt(model, 24, seed=3),
        "sae_resid": [random_dictionary(model.d_model, l, 32, seed=4 + l, kind="sae", site="resid_post")
                      for l in range(n)],
        "mixed": [random_dictionary(model.d_model, 0, 32, seed=9, kind="sae", site="attn_out")]
        + [random_dictionary(model.d_model, l, 32, seed=9 + l) for l in range(1, n)],
    }


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "qwen3"])
def test_spliced_forward_reproduces_logits(tiny_models, arch):
    model = tiny_models[arch]
    toks = mx.array([TOKENS])
    ref = np.asarray(run(model, toks).logits)
    for name, dicts in _dict_sets(model).items():
        rm = ReplacementModel(model, dicts)
        state = rm.clean(toks)
        out = spliced_forward(rm, toks, state)
        err = np.abs(np.asarray(out.logits) - ref).max()
        assert err < 1e-4, f"{arch}/{name}: spliced logits differ by {err:.2e}"
        # A splice without the error term must differ: the error term is what makes it exact.
        assert float(mx.abs(state.error[rm.layers[-1]]).max()) > 1e-3
        lin = linear_forward(rm, state, zero_deltas(rm, state, 2))
        assert np.abs(np.asarray(lin.norm_out[1]) - np.asarray(state.norm_out)).max() < 1e-4


def test_live_error_splice_is_the_model(tiny_models):
    model = tiny_models["llama"]
    toks = mx.array([TOKENS])
    rm = ReplacementModel(model, random_transcoders(model, 32, seed=1, kind="skip"))
    out = spliced_forward(rm, toks, None, live_error=True)
    assert np.abs(np.asarray(out.logits) - np.asarray(run(model, toks).logits)).max() < 1e-5


def test_dictionary_mismatch(tiny_models):
    model = tiny_models["llama"]
    d_model = model.d_model
    with pytest.raises(DictionaryMismatchError, match="layers"):
        ReplacementModel(model, [random_dictionary(d_model, 5, 16)])
    with pytest.raises(DictionaryMismatchError, match="d_model"):
        ReplacementModel(model, [random_dictionary(d_model + 8, 0, 16)])
    with pytest.raises(DictionaryMismatchError, match="layer 0"):
        ReplacementModel(model, [random_dictionary(d_model, 0, 16), random_dictionary(d_model, 0, 16, seed=1)])
    clt = random_clt(tiny_models["mistral"], 8)  # 3 layers on a 2-layer model
    with pytest.raises(DictionaryMismatchError, match="CLT"):
        ReplacementModel(model, clt)
    with pytest.raises(DictionaryMismatchError, match="not a dictionary"):
        ReplacementModel(model, [object()])
    with pytest.raises(DictionaryMismatchError):
        ReplacementModel(model, [])


def test_bad_prompts_and_targets(tiny_models):
    model = tiny_models["llama"]
    dicts = random_transcoders(model, 16)
    with pytest.raises(ContextLengthError):
        build_graph(model, dicts, [2] + [5] * (model.max_context + 3))
    with pytest.raises(EmptySequenceError):
        build_graph(model, dicts, "")
    with pytest.raises(EmptySequenceError):
        build_graph(model, dicts, [])
    with pytest.raises(TokenRangeError):
        build_graph(model, dicts, [2, model.vocab_size + 1])
    with pytest.raises(LogitTargetError, match="vocabulary"):
        build_graph(model, dicts, TOKENS, targets=[model.vocab_size])
    with pytest.raises(LogitTargetError):
        build_graph(model, dicts, TOKENS, targets=LogitTarget("diff", mx.zeros((model.d_model + 1,))))
    with pytest.raises(LogitTargetError, match="logit_diff"):
        build_graph(model, dicts, TOKENS, targets="logit_diff")
    assert issubclass(LogitTargetError, TokenRangeError)


def test_memory_refused_before_work(tiny_models):
    model = tiny_models["llama"]
    rm = ReplacementModel(model, random_transcoders(model, 16))

    def no_forward(*a, **k):
        raise AssertionError("a forward pass ran before the memory check")

    rm.clean = no_forward
    with pytest.raises(GraphMemoryError) as info:
        build_graph(rm, None, TOKENS, config=GraphConfig(available_memory_bytes=1000))
    msg = str(info.value)
    for knob in ("edges_per_target", "batch_size", "max_feature_nodes"):
        assert knob in msg
    # The measured-L0 check also runs before any backward pass.
    calls = []
    rm2 = ReplacementModel(model, random_transcoders(model, 16))
    cfg = GraphConfig(available_memory_bytes=400_000)
    with pytest.raises(GraphMemoryError):
        build_graph(rm2, None, TOKENS, config=cfg, progress=lambda *a: calls.append(a))
    assert calls == []


def test_sae_sites_validated(tiny_models):
    model = tiny_models["llama"]
    bad = random_dictionary(model.d_model, 0, 16)
    object.__setattr__(bad, "in_site", Site(1, "mlp_in"))  # reads a later layer than it writes
    with pytest.raises(DictionaryMismatchError, match="same layer"):
        ReplacementModel(model, [bad])
