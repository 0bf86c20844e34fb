"""CLI bad-input matrix: corrupt models and dictionaries give one clear line and no output.

Each broken model directory is a copy of a tiny random llama with one defect
built by hand (a NaN written into a weight, the tokenizer removed, an unknown
model_type, config sizes that do not fit the weights); the NaN dictionary set
is a valid set with one decoder entry overwritten.
"""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from cli_harness import assert_bad_input
from safetensors.numpy import load_file, save_file

import attribution  # noqa: F401  (BLAS preload before mlx)
from attribution.sites import Site
from attribution.tiny import make_tiny_model

COMMANDS = ("attribute", "evaluate", "train")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("bad_integrity")


@pytest.fixture(scope="module")
def good_model(root):
    return make_tiny_model("llama", root / "good", seed=0)


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _nan_weights(d):
    f = d / "model.safetensors"
    w = mx.load(str(f))
    a = np.array(w["model.layers.1.mlp.up_proj.weight"])
    a[0, :3] = np.nan
    w["model.layers.1.mlp.up_proj.weight"] = mx.array(a)
    mx.save_safetensors(str(f), w, metadata={"format": "mlx"})


def _no_tokenizer(d):
    (d / "tokenizer.json").unlink()


def _unknown_type(d):
    _edit_config(d, model_type="transformer_xl_9000")


def _mismatched_shapes(d):
    _edit_config(d, hidden_size=32)


BAD_MODELS = {
    "nan_weights": (_nan_weights, r"model weight model\.layers\.1\.mlp\.up_proj\.weight has 3 NaN "
                                  r"and 0 inf values: .*re-convert"),
    "no_tokenizer": (_no_tokenizer, r"no tokenizer files.*tokenizer\.json.*vocab\.json \+ merges\.txt"),
    "unknown_model_type": (_unknown_type, r"config\.json has model_type 'transformer_xl_9000', "
                                          r"which is not a supported architecture \(supported: llama"),
    "mismatched_shapes": (_mismatched_shapes, r"weights .* do not fit .*config\.json .*Expected "
                                              r"shape.*supported architectures: llama"),
}


@pytest.fixture(scope="module")
def bad_models(root, good_model):
    out = {}
    for name, (make, _) in BAD_MODELS.items():
        d = shutil.copytree(good_model, root / name)
        make(d)
        out[name] = d
    return out


@pytest.fixture(scope="module")
def dicts(root):
    """A valid dictionary set for the tiny llama (two transcoders, width 16)."""
    from sae import ReLUDictionary, save_dictionaries

    ds = []
    for layer in range(2):
        d = ReLUDictionary(64, 16, in_site=Site(layer, "mlp_in"), out_site=Site(layer, "mlp_out"))
        d.init_weights(mx.random.key(layer))
        ds.append(d)
    return save_dictionaries(ds, root / "dicts")


@pytest.fixture(scope="module")
def nan_dicts(root, dicts):
    d = shutil.copytree(dicts, root / "nan_dicts")
    f = d / "L1.mlp_in--L1.mlp_out" / "weights.safetensors"
    arrays = load_file(str(f))
    arrays["W_dec"] = arrays["W_dec"].copy()
    arrays["W_dec"][4, 7] = np.nan
    save_file(arrays, str(f), metadata={"schema": "mlx-circuits.dictionary", "version": "1",
                                        "arch": "relu"})
    return d


def _argv(cmd, model, dicts, out):
    argv = [cmd, "--model", model, "--out", out]
    if cmd in ("attribute", "evaluate"):
        argv += ["--dicts", dicts]
    return argv


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("bad", sorted(BAD_MODELS))
def test_bad_model(capsys, tmp_path, bad_models, dicts, cmd, bad):
    out = tmp_path / "out"
    model = bad_models[bad]
    assert_bad_input(capsys, _argv(cmd, model, dicts, out), BAD_MODELS[bad][1], out=out,
                     watch=(model, dicts))


@pytest.mark.parametrize("cmd", ("attribute", "evaluate"))
def test_nan_dictionary_weights(capsys, tmp_path, good_model, nan_dicts, cmd):
    out = tmp_path / "out"
    assert_bad_input(capsys, _argv(cmd, good_model, nan_dicts, out),
                     r"dictionary L1\.mlp_in--L1\.mlp_out \(.*weights\.safetensors\): tensor W_dec "
                     r"has 1 NaN and 0 inf values: .*retrain",
                     out=out, watch=(good_model, nan_dicts))
