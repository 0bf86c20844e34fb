"""``sae.open_dictionaries`` / ``dictionary_format``: every supported directory, detected.

Each case writes dictionaries with random weights in one format (our own set, a
circuit-tracer transcoder set or CLT, a SAELens folder or a folder of them), then checks
that ``dictionary_format`` names the format and that ``open_dictionaries`` returns the
keys ``load_dictionaries`` would (input Site, or a name for a CLT) holding the same
dictionaries: every encode and forward of a random batch equals the written
dictionary's within 1e-6, and equals what the format's own importer returns.
Directories that cannot be read correctly (circuit-tracer files without the hooks, two
SAELens folders on one site, nothing recognisable, a file) raise one-line FormatErrors
that name the fix.
"""

from __future__ import annotations

import json
import re
import warnings

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

import sae  # noqa: F401  (BLAS preload before mlx)
from attribution import load_model
from attribution.sites import Site
from attribution.tiny import make_tiny_model
from sae.arch import CrossLayerTranscoder
from sae.errors import DictionaryModelMismatchError, DictionaryModelMismatchWarning, FormatError
from sae.io import (
    FORMATS,
    dictionary_format,
    export_circuit_tracer,
    export_clt,
    export_saelens,
    import_circuit_tracer,
    import_clt,
    import_saelens,
    open_dictionaries,
    save_dictionaries,
)
from sae_test_helpers import random_dictionary

D, M, TOL = 12, 24, 1e-6


def _x(seed, n=16, d=D):
    return mx.array(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


def _tc(arch, layer, seed, **kw):
    """A random transcoder mlp_in@layer -> mlp_out@layer."""
    d = random_dictionary(arch, transcoder=True, seed=seed, **kw)
    d.in_site, d.out_site = Site(layer, "mlp_in"), Site(layer, "mlp_out")
    return d


def _sae_at(site, seed, arch="jumprelu"):
    d = random_dictionary(arch, seed=seed)
    d.in_site = d.out_site = site
    return d


def _clt(n_layers=3, width=16, seed=0):
    rng = np.random.default_rng(seed)
    clt = CrossLayerTranscoder(D, width, n_layers, activation="jumprelu")
    new = {}
    for name, cur in clt.arrays().items():
        a = rng.standard_normal(cur.shape).astype(np.float32) * 0.5
        if name == "log_threshold":
            a = np.log(rng.uniform(0.05, 0.6, cur.shape)).astype(np.float32)
        new[name] = mx.array(a)
    clt.load_arrays(new)
    return clt


def _close(a, b, what, rtol=0.0):
    a, b = np.array(a, np.float64), np.array(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    np.testing.assert_allclose(a, b, atol=TOL, rtol=rtol, err_msg=what)


def _same_dict(got, want, seed, rtol=0.0):
    """Same sites and kind, and the same encode / forward on a random batch."""
    assert type(got) is type(want), (type(got), type(want))
    assert (got.in_site, got.out_site) == (want.in_site, want.out_site)
    assert (got.d_in, got.d_out, got.width) == (want.d_in, want.d_out, want.width)
    x = _x(seed, d=want.d_in)
    f = want.encode(x)
    assert 0 < float((f != 0).mean()) < 1, "test batch should activate some latents, not all"
    _close(got.encode(x), f, f"encode {want.in_site}", rtol)
    _close(got(x), want(x), f"forward {want.in_site}", rtol)


def _same_clt(got, want, seed):
    assert isinstance(got, CrossLayerTranscoder)
    assert (got.in_sites, got.out_sites) == (want.in_sites, want.out_sites)
    xs = [_x(seed + i, d=want.d_in) for i in range(want.n_layers)]
    f = want.encode(xs)
    assert 0 < float((f != 0).mean()) < 1
    _close(got.encode(xs), f, "CLT encode")
    for j, (a, b) in enumerate(zip(got(xs), want(xs), strict=True)):
        _close(a, b, f"CLT output {j}")


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


# ---------------------------------------------------------------------------- ours
def test_native_set(tmp_path):
    dicts = [_sae_at(Site(0, "resid_post"), 1), _tc("topk", 1, 2), _tc("jumprelu", 2, 3),
             _clt(seed=4)]
    p = save_dictionaries(dicts, tmp_path / "native")
    assert dictionary_format(p) == "native" and "native" in FORMATS
    got = open_dictionaries(p)
    assert set(got) == {Site(0, "resid_post"), Site(1, "mlp_in"), Site(2, "mlp_in"), "clt"}
    for i, d in enumerate(dicts[:3]):
        _same_dict(got[d.in_site], d, 10 + i)
        for k, v in d.arrays().items():  # our own format: bit-identical weights
            assert np.array_equal(np.array(got[d.in_site].arrays()[k]), np.array(v)), k
    _same_clt(got["clt"], dicts[3], 20)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [load_model(make_tiny_model("llama", root / f"m{s}", seed=s)) for s in (1, 2)]


def test_model_checks_pass_through(models, tmp_path):
    """Our sets keep the model-identity check (and --force); imports get the width check."""
    a, b = models
    w = a.d_model
    tcs = [_tc("jumprelu", i, 30 + i, d_in=w) for i in range(a.n_layers)]
    p = save_dictionaries(tcs, tmp_path / "native", model=a)
    assert set(open_dictionaries(p, model=a)) == {d.in_site for d in tcs}
    with pytest.raises(DictionaryModelMismatchError):
        open_dictionaries(p, model=b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(open_dictionaries(p, model=b, force=True)) == a.n_layers
    assert any(issubclass(c.category, DictionaryModelMismatchWarning) for c in caught)
    ct = export_circuit_tracer({i: _tc("jumprelu", i, 40 + i) for i in range(2)},
                               tmp_path / "ct")  # d_in 12, the model's d_model is 64
    with pytest.raises(FormatError, match=f"d_in={D} but the model's d_model is {w}") as e:
        open_dictionaries(ct, model=a)
    _one_line(e)
    ok = export_circuit_tracer({i: d for i, d in enumerate(tcs)}, tmp_path / "ct_ok")
    got = open_dictionaries(ok, model=a)
    for i, d in enumerate(tcs):
        _same_dict(got[d.in_site], d, 50 + i)


# ------------------------------------------------------------------ circuit-tracer
@pytest.mark.parametrize("arch,kw", [("jumprelu", {}), ("topk", {}), ("relu", {"skip": True}),
                                     ("jumprelu", {"apply_b_dec_to_input": True})],
                         ids=["jumprelu", "topk", "relu-skip", "jumprelu-bdec-folded"])
def test_circuit_tracer_set_with_config(arch, kw, tmp_path):
    tcs = {i: _tc(arch, i, 60 + i, **kw) for i in range(3)}
    p = export_circuit_tracer(tcs, tmp_path / "ct", model_name="tiny")
    assert (p / "config.yaml").is_file()
    assert dictionary_format(p) == "circuit-tracer"
    got = open_dictionaries(p)
    assert list(got) == [Site(i, "mlp_in") for i in range(3)]
    direct = import_circuit_tracer(p)
    # circuit-tracer has no b_dec subtraction: export folds it into b_enc, which rounds
    # differently in float32 (about 1 ulp of the outputs); the files are read as they are
    rtol = 2e-6 if kw.get("apply_b_dec_to_input") else 0.0
    for i, d in tcs.items():
        _same_dict(got[d.in_site], d, 70 + i, rtol)
        _same_dict(got[d.in_site], direct[i], 80 + i)


def test_circuit_tracer_layer_files_without_hooks_are_refused(tmp_path):
    """layer_<i>.safetensors alone is detected, but its sites are unknown: one line that says
    to write the hooks into config.yaml; never a guessed mapping."""
    tcs = {i: _tc("jumprelu", i, 90 + i) for i in range(2)}
    for d in tcs.values():  # resid_mid -> mlp_out: a guess of mlp.hook_in would be wrong
        d.in_site = Site(d.in_site.layer, "resid_mid")
    p = export_circuit_tracer(tcs, tmp_path / "ct")
    (p / "config.yaml").unlink()
    assert sorted(f.name for f in p.iterdir()) == ["layer_0.safetensors", "layer_1.safetensors"]
    assert dictionary_format(p) == "circuit-tracer"
    for config in (None, 'model_kind: transcoder_set\nfeature_output_hook: "hook_mlp_out"\n'):
        if config is not None:  # a config.yaml that lacks one of the hooks: the same refusal
            (p / "config.yaml").write_text(config)
        with pytest.raises(FormatError) as e:
            open_dictionaries(p)
        msg = _one_line(e)
        assert "feature_input_hook" in msg and "feature_output_hook" in msg, msg
        assert re.search(r"write a config\.yaml", msg), msg  # a fix open_dictionaries takes
    (p / "config.yaml").write_text('feature_input_hook: "hook_resid_mid"\n'
                                   'feature_output_hook: "hook_mlp_out"\n')  # the fix
    got = open_dictionaries(p)
    assert list(got) == [Site(0, "resid_mid"), Site(1, "resid_mid")]
    for i, d in tcs.items():
        _same_dict(got[d.in_site], d, 100 + i)


def test_circuit_tracer_clt(tmp_path):
    clt = _clt(seed=5)
    p = export_clt(clt, tmp_path / "my_clt")
    assert dictionary_format(p) == "circuit-tracer-clt"
    got = open_dictionaries(p)
    assert list(got) == ["my_clt"]
    _same_clt(got["my_clt"], clt, 110)
    _same_clt(got["my_clt"], import_clt(p), 120)
    (p / "config.yaml").unlink()  # W_enc_0.safetensors alone: detected, sites unknown
    assert dictionary_format(p) == "circuit-tracer-clt"
    with pytest.raises(FormatError) as e:
        open_dictionaries(p)
    msg = _one_line(e)
    assert "feature_input_hook" in msg and re.search(r"write a config\.yaml", msg), msg
    q = tmp_path / "gs2"  # config.yaml alone is enough to detect a CLT
    q.mkdir()
    (q / "config.yaml").write_text("model_kind: cross_layer_transcoder\n")
    assert dictionary_format(q) == "circuit-tracer-clt"


# ------------------------------------------------------------------------ SAELens
def test_single_saelens_folder(tmp_path):
    d = _sae_at(Site(2, "resid_post"), 130)
    assert d.apply_b_dec_to_input  # SAELens' b_dec subtraction is exercised
    p = export_saelens(d, tmp_path / "sl")
    assert dictionary_format(p) == "saelens"
    got = open_dictionaries(p)
    assert list(got) == [Site(2, "resid_post")]
    _same_dict(got[d.in_site], d, 131)
    _same_dict(got[d.in_site], import_saelens(p), 132)


def test_saelens_set_of_sub_folders(tmp_path):
    sites = [Site(0, "resid_pre"), Site(1, "resid_post"), Site(1, "attn_out")]
    dicts = [_sae_at(s, 140 + i, arch) for i, (s, arch) in enumerate(zip(
        sites, ["jumprelu", "topk", "relu"], strict=True))]
    root = tmp_path / "release"
    for i, d in enumerate(dicts):
        export_saelens(d, root / f"sae_{i}")
    (root / "notes").mkdir()  # neither a sub-folder without cfg.json nor a stray file counts
    (root / "notes" / "README.md").write_text("x")
    (root / "README.md").write_text("x")
    assert dictionary_format(root) == "saelens-set"
    got = open_dictionaries(root)
    assert set(got) == set(sites) and len(got) == 3
    for i, d in enumerate(dicts):
        _same_dict(got[d.in_site], d, 150 + i)
        _same_dict(got[d.in_site], import_saelens(root / f"sae_{i}"), 160 + i)


def test_two_saelens_folders_on_one_site_are_refused(tmp_path):
    root = tmp_path / "release"
    export_saelens(_sae_at(Site(1, "resid_post"), 170), root / "width_16k")
    export_saelens(_sae_at(Site(1, "resid_post"), 171), root / "width_65k")
    export_saelens(_sae_at(Site(0, "resid_post"), 172), root / "other")
    assert dictionary_format(root) == "saelens-set"
    with pytest.raises(FormatError) as e:
        open_dictionaries(root)
    msg = _one_line(e)
    assert "SAELens folders" in msg and str(Site(1, "resid_post")) in msg, msg
    assert "width_65k" in msg and "one per site" in msg, msg


# ------------------------------------------------------------------- nothing there
def _unknown_dirs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    model_dir = tmp_path / "a_model"  # a model directory passed as --dicts by mistake
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"w": np.zeros(3, np.float32)}, str(model_dir / "model.safetensors"))
    nested = tmp_path / "nested"  # SAELens folders two levels down are not looked for
    export_saelens(_sae_at(Site(0, "resid_post"), 180), nested / "layer_0" / "width_16k")
    one_native = tmp_path / "set"  # one dictionary of a set, not the set (no index.json)
    save_dictionaries([_sae_at(Site(0, "resid_post"), 181)], one_native)
    return [empty, model_dir, nested, one_native / str(Site(0, "resid_post"))]


def test_unknown_directory_names_the_formats(tmp_path):
    for p in _unknown_dirs(tmp_path):
        assert p.is_dir()
        for call in (dictionary_format, open_dictionaries):
            with pytest.raises(FormatError) as e:
                call(p)
            msg = _one_line(e)
            assert str(p) in msg, msg
            for name in ("index.json", "config.yaml", "cfg.json", "layer_<i>.safetensors",
                         "W_enc_0.safetensors"):
                assert name in msg, (name, msg)


def test_a_file_or_missing_path_is_not_a_directory(tmp_path):
    f = tmp_path / "index.json"
    f.write_text("{}")
    for p in (f, tmp_path / "absent"):
        for call in (dictionary_format, open_dictionaries):
            with pytest.raises(FormatError, match="not a directory") as e:
                call(p)
            assert str(p) in _one_line(e)
