"""Dictionary files: the recorded model identity, and NaN/inf weights refused on load.

Models are tiny random mlx-lm directories; a NaN is written by hand into a
saved safetensors file, so the expected tensor name and counts are known.
"""

from __future__ import annotations

import json
import warnings

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import attribution
import sae  # noqa: F401  (BLAS preload before mlx)
from attribution import load_model, model_identity
from attribution.sites import Site
from attribution.tiny import make_tiny_model
from sae.arch import CrossLayerTranscoder, ReLUDictionary
from sae.errors import (
    DictionaryModelMismatchError,
    DictionaryModelMismatchWarning,
    FormatError,
    NonFiniteWeightsError,
)
from sae.io import (
    export_circuit_tracer,
    export_clt,
    export_saelens,
    import_circuit_tracer,
    import_clt,
    import_saelens,
    load_dictionaries,
    load_dictionary,
    save_dictionaries,
    save_dictionary,
)
from sae_test_helpers import random_dictionary

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("io_identity")
    return {"a": load_model(make_tiny_model("llama", root / "a", seed=1)),
            "b": load_model(make_tiny_model("llama", root / "b", seed=2)),
            "gpt2": load_model(make_tiny_model("gpt2", root / "gpt2", seed=1))}


def _transcoders(d_model=64, n_layers=2, width=16):
    out = []
    for layer in range(n_layers):
        d = ReLUDictionary(d_model, width, in_site=Site(layer, "mlp_in"),
                           out_site=Site(layer, "mlp_out"))
        d.init_weights(mx.random.key(layer))
        out.append(d)
    return out


def _poke(path, name, index, value):
    """Write ``value`` at ``index`` of tensor ``name`` in a safetensors file (keeps metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    arrays = load_file(str(path))
    a = arrays[name].copy()
    a[index] = value
    arrays[name] = a
    save_file(arrays, str(path), metadata=meta)


def _same_weights(a, b):
    for k, v in a.arrays().items():
        np.testing.assert_array_equal(np.array(v), np.array(b.arrays()[k]))


# ------------------------------------------------------------------ identity
def test_save_records_the_model_identity(models, tmp_path):
    m = models["a"]
    save_dictionaries(_transcoders(), tmp_path / "d", metadata={"note": "x"}, model=m)
    index = json.loads((tmp_path / "d" / "index.json").read_text())
    assert index["metadata"]["model_identity"] == model_identity(m)
    assert index["metadata"]["note"] == "x"
    cfg = json.loads((tmp_path / "d" / "L0.mlp_in--L0.mlp_out" / "config.json").read_text())
    assert cfg["metadata"]["model_identity"]["fingerprint"] == model_identity(m)["fingerprint"]


def test_same_model_loads_other_model_is_refused(models, tmp_path):
    dicts = _transcoders()
    save_dictionaries(dicts, tmp_path / "d", model=models["a"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = load_dictionaries(tmp_path / "d", model=models["a"])
    assert sorted(map(str, back)) == ["L0.mlp_in", "L1.mlp_in"]
    with pytest.raises(DictionaryModelMismatchError) as e:
        load_dictionaries(tmp_path / "d", model=models["b"])
    msg = str(e.value)
    ia, ib = model_identity(models["a"]), model_identity(models["b"])
    assert msg.startswith(f"dictionaries in {tmp_path / 'd'} were trained on model a (llama, d=64, "
                          f"2 layers, fingerprint {ia['fingerprint'][:12]}) but this model is b ")
    assert ib["fingerprint"][:12] in msg and msg.endswith("pass --force (force=True) to use them anyway")
    assert "\n" not in msg and isinstance(e.value, ValueError)


def test_force_warns_and_loads_the_same_weights(models, tmp_path):
    dicts = _transcoders()
    save_dictionaries(dicts, tmp_path / "d", model=models["a"])
    with pytest.warns(DictionaryModelMismatchWarning, match="using them anyway"):
        back = load_dictionaries(tmp_path / "d", model=models["b"], force=True)
    for d in dicts:
        _same_weights(d, back[d.in_site])


def test_shape_difference_is_named(models, tmp_path):
    save_dictionaries(_transcoders(), tmp_path / "d", model=models["a"])
    with pytest.raises(DictionaryModelMismatchError, match=r"\(architecture llama vs gpt2\)"):
        load_dictionaries(tmp_path / "d", model=models["gpt2"])


def test_without_recorded_identity_or_model_loads_as_before(models, tmp_path):
    save_dictionaries(_transcoders(), tmp_path / "plain")
    index = json.loads((tmp_path / "plain" / "index.json").read_text())
    assert "model_identity" not in index["metadata"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_dictionaries(tmp_path / "plain", model=models["b"])) == 2
    save_dictionaries(_transcoders(), tmp_path / "rec", model=models["a"])
    assert len(load_dictionaries(tmp_path / "rec")) == 2  # no model given: no comparison
    assert len(load_dictionaries(tmp_path / "rec", None)) == 2  # positional site_dims still works


def test_single_dictionary_identity(models, tmp_path):
    d = _transcoders()[0]
    save_dictionary(d, tmp_path / "one", model=models["a"])
    _same_weights(d, load_dictionary(tmp_path / "one", model=models["a"]))
    with pytest.raises(DictionaryModelMismatchError):
        load_dictionary(tmp_path / "one", model=models["b"])
    with pytest.warns(DictionaryModelMismatchWarning):
        load_dictionary(tmp_path / "one", model=models["b"], force=True)


# ------------------------------------------------------------ NaN / inf weights
def test_nan_in_native_weights_names_dictionary_and_tensor(tmp_path):
    save_dictionaries(_transcoders(), tmp_path / "d")
    f = tmp_path / "d" / "L1.mlp_in--L1.mlp_out" / "weights.safetensors"
    _poke(f, "W_dec", (0, slice(0, 3)), NAN)
    _poke(f, "b_enc", 2, -INF)
    with pytest.raises(NonFiniteWeightsError) as e:
        load_dictionaries(tmp_path / "d")
    msg = str(e.value)
    # tensors are checked in file order (alphabetical): W_dec before b_enc
    assert msg.startswith(f"dictionary L1.mlp_in--L1.mlp_out ({f}): tensor W_dec has 3 NaN and "
                          "0 inf values (1 more tensor also)")
    assert isinstance(e.value, attribution.NonFiniteError) and isinstance(e.value, ValueError)
    assert (e.value.name, e.value.n_nan, e.value.n_inf) == ("W_dec", 3, 0)


def test_nan_in_saelens_import(tmp_path):
    d = random_dictionary("relu")
    export_saelens(d, tmp_path / "sl")
    _poke(tmp_path / "sl" / "sae_weights.safetensors", "W_enc", (1, 1), INF)
    with pytest.raises(NonFiniteWeightsError, match=r"^dictionary sl \(.*sae_weights\.safetensors\): "
                                                    r"tensor W_enc has 0 NaN and 1 inf"):
        import_saelens(tmp_path / "sl")


def test_nan_in_circuit_tracer_import(tmp_path):
    d = random_dictionary("relu", transcoder=True)
    export_circuit_tracer({1: d}, tmp_path / "ct")
    _poke(tmp_path / "ct" / "layer_1.safetensors", "b_dec", 0, NAN)
    with pytest.raises(NonFiniteWeightsError, match=r"dictionary ct layer 1 .*layer_1\.safetensors"
                                                    r"\): tensor b_dec has 1 NaN"):
        import_circuit_tracer(tmp_path / "ct")


def test_nan_in_clt_import(tmp_path):
    clt = CrossLayerTranscoder(6, 8, 3, activation="relu")
    clt.load_arrays({k: mx.ones(v.shape) * 0.1 for k, v in clt.arrays().items()})
    export_clt(clt, tmp_path / "clt")
    import_clt(tmp_path / "clt")  # clean files load
    _poke(tmp_path / "clt" / "W_dec_2.safetensors", "W_dec_2", (0, 0, 0), NAN)
    with pytest.raises(NonFiniteWeightsError, match=r"W_dec_2\.safetensors\): tensor W_dec_2 has 1 NaN"):
        import_clt(tmp_path / "clt")


# ------------------------------------------------------------ bad directories
def test_missing_or_malformed_set_is_one_clear_line(tmp_path):
    with pytest.raises(FormatError, match=r"no dictionaries at .*index\.json does not exist"):
        load_dictionaries(tmp_path / "nope")
    save_dictionaries(_transcoders(), tmp_path / "d")
    index = json.loads((tmp_path / "d" / "index.json").read_text())
    (tmp_path / "d" / "index.json").write_text(json.dumps({**index, "entries": [{"name": 1}]}))
    with pytest.raises(FormatError, match="no valid 'entries'"):
        load_dictionaries(tmp_path / "d")
    cfg_path = tmp_path / "d" / "L0.mlp_in--L0.mlp_out" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["d_in"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="lacks the field 'd_in'"):
        load_dictionary(cfg_path.parent)
