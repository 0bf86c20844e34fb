"""Integrity: NaN/inf in weights and activations, broken model directories, model identity.

Every corrupt input is built by hand (a NaN written into a saved safetensors
file, a config.json edited, a tokenizer file removed) and the expected counts
and names are known from the construction, not from the code under test.
"""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

import attribution
from attribution import (
    NonFiniteError,
    NotAModelError,
    ReplacementModel,
    TokenizerNotFoundError,
    UnsupportedModelTypeError,
    WeightsMismatchError,
    check_finite,
    load_model,
    model_identity,
)
from attribution.model.arch import SUPPORTED_MODEL_TYPES
from attribution.model.integrity import (
    check_all_finite,
    describe_identity,
    identity_mismatch,
    nonfinite_counts,
)
from attribution.testing_dicts import random_transcoders
from attribution.tiny import make_tiny_model

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("integrity") / "llama", seed=3)


@pytest.fixture
def copy_dir(base_dir, tmp_path):
    """A fresh copy of the tiny llama directory that a test may corrupt."""
    return shutil.copytree(base_dir, tmp_path / "model")


def _edit_weight(model_dir, name, edit):
    """Load model.safetensors, apply ``edit`` (numpy, in place) to tensor ``name``, save."""
    path = model_dir / "model.safetensors"
    weights = mx.load(str(path))
    a = np.array(weights[name].astype(mx.float32))
    edit(a)
    weights[name] = mx.array(a).astype(weights[name].dtype)
    mx.save_safetensors(str(path), weights, metadata={"format": "mlx"})


def _edit_config(model_dir, **changes):
    cfg = json.loads((model_dir / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (model_dir / "config.json").write_text(json.dumps(cfg))


def _save_copy(model, out, config_extra=None):
    """Save ``model`` (possibly converted) as a loadable directory beside the original."""
    from mlx_lm.utils import save_config, save_model

    out.mkdir()
    save_model(out, model.module)
    save_config({**model.config, **(config_extra or {})}, out / "config.json")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model.path / f, out / f)
    return out


# ------------------------------------------------------------------ check_finite
def test_check_finite_counts_nan_and_inf_and_names_the_tensor():
    check_finite("ok", mx.array([1.0, -2.0, 3e38]))
    check_finite("ints", mx.array([1, 2, 3]))  # integers cannot hold NaN
    with pytest.raises(NonFiniteError) as e:
        check_finite("L2.mlp_out", mx.array([[1.0, NAN], [INF, -INF]]))
    assert isinstance(e.value, ValueError)
    assert (e.value.name, e.value.n_nan, e.value.n_inf) == ("L2.mlp_out", 1, 2)
    msg = str(e.value)
    assert msg.startswith("L2.mlp_out has 1 NaN and 2 inf values: ") and "\n" not in msg
    with pytest.raises(NonFiniteError, match="do this"):
        check_finite("x", np.array([NAN], np.float32), fix="do this")
    assert attribution.check_finite is check_finite
    assert attribution.NonFiniteError is NonFiniteError


def test_check_all_finite_reports_the_first_bad_tensor_in_order():
    arrays = [("a", mx.ones(3)), ("b", mx.array([NAN, NAN, 0.0])), ("c", mx.array([INF])),
              ("d", np.array([NAN]))]
    with pytest.raises(NonFiniteError, match=r"^b has 2 NaN and 0 inf values \(2 more tensors"):
        check_all_finite(arrays)
    assert nonfinite_counts(mx.array([NAN, INF, -INF, 1.0])) == (1, 2)
    check_all_finite({"a": mx.ones(2), "q": mx.array([7], mx.uint32)})


# ---------------------------------------------------------------- load_model
def test_nan_in_a_saved_weight_stops_load_model(copy_dir):
    def corrupt(a):
        a[0, :3] = NAN
        a[2, 5] = INF
    _edit_weight(copy_dir, "model.layers.1.mlp.up_proj.weight", corrupt)
    with pytest.raises(NonFiniteError) as e:
        load_model(copy_dir)
    msg = str(e.value)
    assert msg.startswith("model weight model.layers.1.mlp.up_proj.weight has 3 NaN and 1 inf "
                          "values: the checkpoint")
    assert str(copy_dir) in msg and "re-convert" in msg
    assert isinstance(e.value, attribution.AttributionError)
    # opting out loads it (the caller takes responsibility)
    m = load_model(copy_dir, check_weights=False)
    assert np.isnan(np.array(m.module.model.layers[1].mlp.up_proj.weight)).sum() == 3


def test_second_bad_tensor_is_counted(copy_dir):
    _edit_weight(copy_dir, "model.norm.weight", lambda a: a.__setitem__(0, NAN))
    _edit_weight(copy_dir, "model.layers.0.self_attn.q_proj.weight",
                 lambda a: a.__setitem__((1, 1), -INF))
    with pytest.raises(NonFiniteError, match=r"has 0 NaN and 1 inf values \(1 more tensor also"):
        load_model(copy_dir)


def test_quantized_model_scales_are_checked(base_dir, tmp_path):
    import mlx.nn as nn

    m = load_model(base_dir)
    nn.quantize(m.module, group_size=32, bits=4)
    qdir = _save_copy(m, tmp_path / "q4", {"quantization": {"group_size": 32, "bits": 4}})
    q = load_model(qdir)  # a clean quantized model loads
    assert q.module.model.layers[0].mlp.down_proj.scales.dtype == mx.float32
    _edit_weight(qdir, "model.layers.0.mlp.down_proj.scales", lambda a: a.__setitem__((0, 0), NAN))
    with pytest.raises(NonFiniteError, match=r"model\.layers\.0\.mlp\.down_proj\.scales has 1 NaN"):
        load_model(qdir)


def test_missing_tokenizer_names_the_files_looked_for(copy_dir):
    (copy_dir / "tokenizer.json").unlink()
    with pytest.raises(TokenizerNotFoundError) as e:
        load_model(copy_dir)
    msg = str(e.value)
    for name in ("tokenizer.json", "tokenizer.model", "vocab.json + merges.txt", "tokenizer_config.json"):
        assert name in msg
    assert "\n" not in msg and isinstance(e.value, NotAModelError)


def test_corrupt_tokenizer_is_one_line(copy_dir):
    (copy_dir / "tokenizer.json").write_text("{not json")
    with pytest.raises(NotAModelError, match="could not load the tokenizer") as e:
        load_model(copy_dir)
    assert "\n" not in str(e.value)


def test_unknown_model_type_names_config_and_supported(copy_dir):
    _edit_config(copy_dir, model_type="llama_9000")
    with pytest.raises(UnsupportedModelTypeError) as e:
        load_model(copy_dir)
    msg = str(e.value)
    assert str(copy_dir / "config.json") in msg and "'llama_9000'" in msg
    assert all(t in msg for t in SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("case", ["other_arch_weights", "hidden_size", "extra_layer"])
def test_weights_that_do_not_fit_the_config(case, copy_dir, tmp_path):
    if case == "other_arch_weights":
        gpt2 = make_tiny_model("gpt2", tmp_path / "gpt2")
        for f in copy_dir.glob("model*.safetensors*"):
            f.unlink()
        for f in gpt2.glob("model*.safetensors*"):
            shutil.copy(f, copy_dir / f.name)
        expect = r"Received \d+ parameters not in model: model\.h\.0\..*\(\d+ more\)"
    elif case == "hidden_size":
        _edit_config(copy_dir, hidden_size=32)
        expect = "Expected shape"
    else:
        _edit_config(copy_dir, num_hidden_layers=3)
        expect = r"Missing \d+ parameters: model\.layers\.2\."
    with pytest.raises(WeightsMismatchError, match=expect) as e:
        load_model(copy_dir)
    msg = str(e.value)
    assert "\n" not in msg and str(copy_dir / "config.json") in msg and "llama, mistral" in msg


def test_config_missing_a_field_and_truncated_weights_are_one_line(copy_dir):
    _edit_config(copy_dir, num_hidden_layers=None)
    with pytest.raises(NotAModelError, match="config.json does not describe a valid llama model"):
        load_model(copy_dir)
    _edit_config(copy_dir, num_hidden_layers=2)
    data = (copy_dir / "model.safetensors").read_bytes()
    (copy_dir / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(NotAModelError, match="unreadable") as e:
        load_model(copy_dir)
    assert "\n" not in str(e.value)
    (copy_dir / "config.json").write_text("[1, 2]")
    with pytest.raises(NotAModelError, match="not an object"):
        load_model(copy_dir)


# ------------------------------------------------------- first-forward check
def test_clean_forward_names_the_first_non_finite_site(copy_dir):
    m = load_model(copy_dir)
    ids = m.encode("the cat sat on the mat")
    dicts = random_transcoders(m, 16)
    ReplacementModel(m, dicts).clean(ids)  # finite: no error
    up = m.module.model.layers[1].mlp.up_proj
    w = np.array(up.weight)
    w[:, :] = INF  # every L1 MLP output becomes inf - inf = NaN
    up.weight = mx.array(w)
    with pytest.raises(NonFiniteError) as e:
        ReplacementModel(m, dicts).clean(ids)
    # the inputs of layer 1 are still finite, so L1.mlp_out is the first site in forward order
    assert str(e.value).startswith("activation L1.mlp_out has ")
    assert e.value.n_nan + e.value.n_inf == len(ids) * m.d_model
    assert "model" in str(e.value)


def test_clean_forward_names_a_dictionary_that_overflows(copy_dir):
    m = load_model(copy_dir)
    ids = m.encode("the cat sat on the mat")
    dicts = random_transcoders(m, 16)
    w = np.array(dicts[1].W_dec_)
    w[0, 5] = NAN
    dicts[1].W_dec_ = mx.array(w)
    with pytest.raises(NonFiniteError) as e:
        ReplacementModel(m, dicts).clean(ids)
    msg = str(e.value)
    # one NaN decoder entry reaches column 5 at every position: T NaNs, nothing else
    assert msg.startswith(f"reconstruction error at L1.mlp_out has {len(ids)} NaN and 0 inf")
    assert "transcoder_L1" in msg


# ------------------------------------------------------------ model identity
def test_identity_facts_and_stability(base_dir):
    a, b = load_model(base_dir), load_model(base_dir)
    ia, ib = model_identity(a), model_identity(b)
    assert ia == ib
    assert (ia["architecture"], ia["d_model"], ia["n_layers"], ia["vocab_size"]) == (
        "llama", a.d_model, a.n_layers, a.W_E.shape[0])
    assert ia["quantized"] is False and len(ia["fingerprint"]) == 64
    assert ia["name"] == base_dir.name
    assert describe_identity(ia).startswith(f"{base_dir.name} (llama, d=64, 2 layers, fingerprint "
                                            f"{ia['fingerprint'][:12]})")
    json.dumps(ia)  # recordable in index.json


def test_bf16_copy_agrees_and_another_seed_does_not(base_dir, tmp_path):
    m = load_model(base_dir)
    ref = model_identity(m)
    m.module.set_dtype(mx.bfloat16)
    half = load_model(_save_copy(m, tmp_path / "bf16"))
    assert half.load_info.stored_dtypes == ("bfloat16",)  # computed in float32 after load
    assert model_identity(half)["fingerprint"] == ref["fingerprint"]
    other = model_identity(load_model(make_tiny_model("llama", tmp_path / "seed9", seed=9)))
    assert other["fingerprint"] != ref["fingerprint"]
    assert identity_mismatch(ref, other) == "different weights (fingerprint)"


def test_fingerprint_sees_norms_and_first_embedding_rows_only(copy_dir):
    ref = model_identity(load_model(copy_dir))
    vocab = ref["vocab_size"]
    _edit_weight(copy_dir, "model.embed_tokens.weight", lambda a: a.__setitem__((vocab - 1, 0), 5.0))
    late = model_identity(load_model(copy_dir))
    assert late == {**ref, "name": late["name"]}  # documented blind spot: late rows
    _edit_weight(copy_dir, "model.embed_tokens.weight", lambda a: a.__setitem__((0, 0), 5.0))
    early = model_identity(load_model(copy_dir))
    assert early["fingerprint"] != ref["fingerprint"]
    assert early["norms_fingerprint"] == ref["norms_fingerprint"]
    _edit_weight(copy_dir, "model.layers.1.post_attention_layernorm.weight",
                 lambda a: a.__setitem__(3, a[3] + 0.5))
    norm = model_identity(load_model(copy_dir))
    assert norm["norms_fingerprint"] != ref["norms_fingerprint"]


def test_quantized_copy_matches_through_its_norms(base_dir, tmp_path):
    import mlx.nn as nn

    m = load_model(base_dir)
    ref = model_identity(m)
    nn.quantize(m.module, group_size=32, bits=4)
    q = model_identity(load_model(_save_copy(m, tmp_path / "q",
                                             {"quantization": {"group_size": 32, "bits": 4}})))
    assert q["quantized"] is True and q["fingerprint"] != ref["fingerprint"]
    assert q["norms_fingerprint"] == ref["norms_fingerprint"]
    assert identity_mismatch(ref, q) is None


def test_identity_mismatch_rules():
    base = {"version": 1, "architecture": "llama", "d_model": 64, "n_layers": 2,
            "vocab_size": 65, "quantized": False, "fingerprint": "aa", "norms_fingerprint": "nn"}
    assert identity_mismatch(base, dict(base)) is None
    assert identity_mismatch(base, {**base, "d_model": 128}) == "d model 64 vs 128"
    assert identity_mismatch(base, {**base, "architecture": "gpt2"}) == "architecture llama vs gpt2"
    assert identity_mismatch(base, {**base, "fingerprint": "bb"}) is not None
    assert identity_mismatch(base, {**base, "fingerprint": "bb", "quantized": True}) is None
    assert identity_mismatch(base, {**base, "norms_fingerprint": "mm", "quantized": True}) is not None
    assert identity_mismatch({"architecture": "llama"}, base) is None  # partial: not compared
    assert identity_mismatch({**base, "version": 0, "fingerprint": "zz"}, base) is None
