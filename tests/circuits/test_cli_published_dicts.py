"""``circuits attribute --dicts`` reads published formats, not only our own sets.

The same random transcoders (one per layer of a tiny llama, and of a tiny gpt2) and the
same cross-layer transcoder are written twice: as our own set (``sae.save_dictionaries``) and in
circuit-tracer's layout (``sae.export_circuit_tracer`` with its config.yaml,
``sae.export_clt``). ``circuits attribute`` run on each, with the same prompt and flags,
must write the same graph: the same node keys in the same order, the same activations
and an adjacency equal within 1e-6. A ``--dicts`` directory that holds no dictionaries,
or circuit-tracer files without their hooks, is a bad input (``assert_bad_input``): one
line naming what to provide, a non-zero exit and nothing written.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import attribution  # noqa: F401  (BLAS preload before mlx)
from attribution import load_model
from attribution.graph import Graph
from attribution.sites import Site
from attribution.tiny import make_tiny_model
from cli_harness import assert_bad_input, run_cli

PROMPT = "the cat sat on the mat"


def _randomise(d, rng):
    new = {}
    for name, cur in d.arrays().items():
        a = rng.standard_normal(cur.shape).astype(np.float32) * 0.3
        if name == "log_threshold":  # low thresholds: many features active on the prompt
            a = np.log(rng.uniform(0.02, 0.1, cur.shape)).astype(np.float32)
        new[name] = mx.array(a)
    d.load_arrays(new)
    return d


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def d(request, tmp_path_factory):
    """A tiny model (gpt2: the README's example), its transcoders / CLT in both formats."""
    import sae
    from sae.arch import CrossLayerTranscoder, JumpReLUDictionary

    d = tmp_path_factory.mktemp(f"published-{request.param}")
    model_dir = make_tiny_model(request.param, d / "model", seed=3)
    model = load_model(model_dir)
    w, n = model.d_model, model.n_layers
    rng = np.random.default_rng(0)
    tcs = {i: _randomise(JumpReLUDictionary(w, 32, in_site=Site(i, "mlp_in"),
                                            out_site=Site(i, "mlp_out")), rng) for i in range(n)}
    sae.save_dictionaries(tcs, d / "transcoders-ours", model=model)
    sae.export_circuit_tracer(tcs, d / "transcoders-ct", model_name="tiny")
    clt = _randomise(CrossLayerTranscoder(w, 16, n, activation="jumprelu"), rng)
    sae.save_dictionaries([clt], d / "clt-ours", model=model)
    sae.export_clt(clt, d / "clt-ct", model_name="tiny")
    assert (d / "transcoders-ct" / "config.yaml").is_file()
    assert not (d / "transcoders-ct" / "index.json").exists()
    nohooks = d / "transcoders-nohooks"  # circuit-tracer layer files, config.yaml removed
    sae.export_circuit_tracer(tcs, nohooks)
    (nohooks / "config.yaml").unlink()
    (d / "empty").mkdir()
    return d


def _attribute(d, capsys, dicts: str, out, *flags) -> Graph:
    code, _, err = run_cli(capsys, "attribute", "--model", d / "model", "--dicts", d / dicts,
                           "--prompt", PROMPT, "--out", out, *flags)
    assert code == 0, err
    return Graph.load(out)


@pytest.mark.parametrize("kind", ["transcoders", "clt"])
@pytest.mark.parametrize("convention", ["ours", "circuit-tracer"])
def test_published_dicts_give_the_same_graph(d, tmp_path, capsys, kind, convention):
    flags = ("--convention", convention)
    ours = _attribute(d, capsys, f"{kind}-ours", tmp_path / "g_ours", *flags)
    ct = _attribute(d, capsys, f"{kind}-ct", tmp_path / "g_ct", *flags)
    feats = ours.nodes["type"] == "feature"
    assert feats.sum() > 10, "the dictionaries should contribute features"
    assert list(ours.nodes["key"]) == list(ct.nodes["key"])
    np.testing.assert_allclose(ct.nodes["activation"].to_numpy(np.float64),
                               ours.nodes["activation"].to_numpy(np.float64), atol=1e-6, rtol=0)
    a, b = ours.adjacency.toarray(), ct.adjacency.toarray()
    assert a.shape == b.shape and np.abs(a).max() > 0
    np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)
    assert ours.metadata["tokens"] == ct.metadata["tokens"]


@pytest.mark.parametrize("dicts,match", [
    ("empty", r"no dictionaries at .*empty: expected index\.json.*config\.yaml.*"
              r"layer_<i>\.safetensors.*W_enc_0\.safetensors.*cfg\.json"),
    ("transcoders-nohooks", r"feature_input_hook / feature_output_hook.*write a config\.yaml"),
    ("model", r"no dictionaries at .*model: expected index\.json.*config\.yaml.*cfg\.json"),
])
def test_unrecognised_dicts_directory_is_a_bad_input(d, tmp_path, capsys, dicts, match):
    out = tmp_path / "graph"
    assert_bad_input(capsys, ["attribute", "--model", d / "model", "--dicts", d / dicts,
                              "--prompt", PROMPT, "--out", out],
                     match, out=out, watch=(d / dicts,))
