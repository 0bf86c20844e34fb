"""Harvesting from a tiny mlx-lm model, training on it, cache checks, spliced CE/KL."""

import mlx.core as mx
import numpy as np
import pytest

import sae
from attribution import Site, capture, load_model
from attribution.tiny import make_tiny_model
from sae import TrainConfig, evaluate_spliced, train_on_model
from sae.arch import ReLUDictionary
from sae.data import harvest, pack_tokens, read_texts
from sae.errors import CacheMismatchError

TEXT = ["the cat sat on the mat and the dog ran to the park",
        "a bird flew over the house while the sun was warm",
        "one two three four five six seven eight nine ten"] * 20


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return load_model(make_tiny_model("llama", root / "llama", seed=0))


def test_read_texts_formats(tmp_path):
    import pandas as pd
    (tmp_path / "a.txt").write_text("hello world\n\nsecond line\n")
    pd.DataFrame({"text": ["x y", "z"]}).to_json(tmp_path / "b.jsonl", orient="records", lines=True)
    assert list(read_texts(tmp_path / "a.txt")) == ["hello world", "second line"]
    assert list(read_texts(tmp_path / "b.jsonl")) == ["x y", "z"]
    assert list(read_texts(iter(["u"]))) == ["u"]
    try:
        import pyarrow  # noqa: F401  (parquet needs an engine; not a project dependency)
    except ImportError:
        return
    pd.DataFrame({"text": ["p q"]}).to_parquet(tmp_path / "c.parquet")
    assert list(read_texts(tmp_path / "c.parquet")) == ["p q"]


def test_pack_tokens_keeps_every_token():
    """With BOS insertion the contexts, minus their BOS, are the token stream in order."""
    from sae.data.harvest import pack_tokens as pack

    class Enc:
        def encode(self, t):
            return [int(w) for w in t.split()]
    docs = [" ".join(str(10 + i) for i in range(j * 7, j * 7 + 7)) for j in range(6)]  # 42 tokens
    ctxs = list(pack(Enc(), docs, 8, bos_id=1))
    assert all(len(c) == 8 and c[0] == 1 for c in ctxs)
    stream = [t for c in ctxs for t in c[1:]]
    assert stream == list(range(10, 10 + len(stream))) and len(stream) == 42  # 6 x 7, no remainder
    # a stream that already carries BOS at a context start is not given a second one
    ctxs = list(pack(Enc(), ["1 2 3 4", "1 5 6 7"], 4, bos_id=1))
    assert [list(c) for c in ctxs] == [[1, 2, 3, 4], [1, 5, 6, 7]]
    assert [list(c) for c in pack(Enc(), ["5 6 7 8 9"], 4)] == [[5, 6, 7, 8]]  # no BOS: plain chunks


def test_harvest_matches_capture_and_drops_bos(model):
    sites = [Site(0, "mlp_in"), Site(1, "resid_post")]
    chunk = next(harvest(model, TEXT, sites, context_len=16, batch_size=4))
    ctxs = np.stack([c for _, c in zip(range(4), pack_tokens(model, TEXT, 16,
                                                              model.tokenizer.bos_token_id))])
    ref = capture(model, mx.array(ctxs), sites)
    keep = np.ones(ctxs.shape, bool)
    keep[:, 0] = False
    keep &= ctxs != model.tokenizer.bos_token_id
    for s in sites:
        want = np.array(ref[s]).reshape(-1, model.d_model)[keep.reshape(-1)]
        np.testing.assert_allclose(chunk[s], want, atol=1e-5)


def test_train_on_model_with_cache(model, tmp_path):
    cfgs = [TrainConfig(kind="transcoder", arch="topk", sites=(Site(0, "mlp_in"),), width=64, k=4,
                        total_tokens=64 * 20, batch_tokens=64, warmup_steps=5, log_every=10, lr=1e-3),
            TrainConfig(kind="sae", arch="batchtopk", sites=(Site(1, "resid_post"),), width=64,
                        k=4, total_tokens=64 * 20, batch_tokens=64, warmup_steps=5, log_every=10,
                        lr=1e-3)]
    r = train_on_model(model, TEXT, cfgs, context_len=16, batch_size=4, buffer_tokens=512,
                       cache_dir=tmp_path / "cache")
    assert len(r.dictionaries) == 2 and r.history[-1]["fvu"] < 1.5
    assert (tmp_path / "cache" / "manifest.json").exists()
    other = load_model(make_tiny_model("llama", tmp_path / "other", seed=1, hidden_size=32))
    with pytest.raises(CacheMismatchError):
        train_on_model(other, TEXT, cfgs, cache_dir=tmp_path / "cache")
    df = evaluate_spliced(model, r.dictionaries, _tokens(model))
    assert np.isfinite(df.ce_spliced).all() and (df.kl_spliced >= 0).all()
    # the D2 form train(model, texts, cfg) harvests too (no cache here)
    r2 = sae.train(model, TEXT, cfgs[0], context_len=16, batch_size=4, buffer_tokens=512)
    assert r2.dictionaries[0].in_site == Site(0, "mlp_in")


def _tokens(model):
    return np.stack([c for _, c in zip(range(2), pack_tokens(model, TEXT, 16))])


def test_spliced_ce_exact_and_zero_dictionaries(model):
    d = model.d_model
    site = Site(1, "mlp_out")
    exact = ReLUDictionary(d, 2 * d, in_site=site)  # relu(x) - relu(-x) == x
    eye = np.eye(d, dtype=np.float32)
    exact.W_enc = mx.array(np.concatenate([eye, -eye], 1))
    exact.W_dec = mx.array(np.concatenate([eye, -eye], 0))
    zero = ReLUDictionary(d, 4, in_site=site)
    df = evaluate_spliced(model, [exact, zero], _tokens(model), names=["exact", "zero"])
    assert df.loc["exact", "ce_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert df.loc["exact", "kl_spliced"] == pytest.approx(0.0, abs=1e-5)
    assert df.loc["zero", "ce_recovered"] == pytest.approx(0.0, abs=1e-5)
    assert df.loc["zero", "kl_spliced"] == pytest.approx(df.loc["zero", "kl_baseline"], rel=1e-5)
    mean = evaluate_spliced(model, [exact], _tokens(model), baseline="mean")
    assert mean.iloc[0].ce_recovered == pytest.approx(1.0, abs=1e-4)


def test_context_len_follows_the_model(model, monkeypatch):
    """Default context = min(128, model context); a longer explicit one is refused, named."""
    import importlib

    fm = importlib.import_module("sae.train.from_model")  # sae.train is also the function
    from sae.errors import ConfigError

    cfg = TrainConfig(kind="sae", arch="topk", sites=(Site(0, "resid_post"),), width=16, k=2,
                      total_tokens=64, batch_tokens=32)
    seen = {}

    class Stop(Exception):
        pass

    def fake_source(m, texts, sites, *, context_len, **kw):
        seen["ctx"] = context_len
        raise Stop

    monkeypatch.setattr(fm, "harvest_source", fake_source)
    monkeypatch.setattr(model, "max_context", 48)
    with pytest.raises(Stop):
        fm.train_on_model(model, TEXT, cfg)
    assert seen["ctx"] == 48
    with pytest.raises(ConfigError, match="exceeds the model's context of 48"):
        fm.train_on_model(model, TEXT, cfg, context_len=64)
    monkeypatch.setattr(model, "max_context", None)
    with pytest.raises(Stop):
        fm.train_on_model(model, TEXT, cfg)
    assert seen["ctx"] == 128
