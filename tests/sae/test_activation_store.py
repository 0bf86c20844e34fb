"""The on-disk activation store (``sae.data.store``): harvest into shards, read back
shuffled with bounded memory, exact training resume, atomic writes, refusals.

Independent computations: the store's contents are compared with ``harvest``'s own
chunks, with ``safetensors``/``mx.load`` reading the shard files, and with MLX's
bfloat16 rounding; the shuffled stream with the order the module docstring specifies
(recomputed here from the seed), and memory with ``getrusage`` in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from attribution import Site, load_model, model_identity
from attribution.tiny import DEFAULT_WORDS, make_tiny_model
from sae import TrainConfig, train
from sae.data import harvest
from sae.data.shards import bf16_to_f32, to_bf16
from sae.data.store import (
    ActivationStore,
    HarvestConfig,
    StoreMismatchError,
    StoreWriter,
    harvest_store,
)
from sae.errors import ConfigError, EmptyDatasetError, FormatError, TrainingInterrupted
from sae.train.checkpoint import ResumeMismatchError
from sae.train.from_model import train_on_model, train_on_store

A, B = Site(0, "mlp_in"), Site(1, "mlp_out")
RNG = np.random.default_rng(7)
TEXT = [" ".join(RNG.choice(DEFAULT_WORDS, int(RNG.integers(5, 60)))) for _ in range(300)]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama", seed=0))


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    return load_model(make_tiny_model("llama", tmp_path_factory.mktemp("o") / "other", seed=1))


def _cfg(tokens=1000, **kw):
    base = dict(sites=(B, A), tokens=tokens, shard_tokens=128, context_len=16, batch_size=4)
    base.update(kw)
    return HarvestConfig(**base)


def _direct(model, n, sites=(A, B)):
    """The first n rows of ``harvest`` (the store's source, run independently)."""
    out = {s: [] for s in sites}
    for chunk in harvest(model, TEXT, sites, context_len=16, batch_size=4):
        for s in sites:
            out[s].append(chunk[s])
        if sum(len(a) for a in out[sites[0]]) >= n:
            break
    return {s: np.concatenate(v)[:n] for s, v in out.items()}


def _synthetic_store(path, n=1000, d=8, shard=300, dtype="float32", seed=0, big=()):
    """A store of known rows written through ``StoreWriter``: row i of site A is
    (i, i, ...) + noise so ids can be read back from the data; ``big`` rows are outliers."""
    rng = np.random.default_rng(seed)
    x = {A: (np.arange(n)[:, None] + rng.random((n, d)) * 0.1 + 1).astype(np.float32),
         B: rng.standard_normal((n, d + 2)).astype(np.float32)}
    for i in big:
        x[B][i] *= 1000.0
    path.mkdir(parents=True)
    w = StoreWriter(path, [A, B], {A: d, B: d + 2}, dtype, shard)
    o = 0
    while o < n:  # uneven pieces, so shards are filled across chunk boundaries
        t = min(w.space, 77, n - o)
        w.put({s: x[s][o:o + t] for s in (A, B)})
        o += t
        if w.space == 0:
            w.flush()
    w.finish(model={"architecture": "synthetic", "d_model": d, "fingerprint": "f" * 64,
                    "version": 1})
    return x


# ------------------------------------------------------------------- harvest ----
def test_harvest_writes_the_models_activations_in_shards(model, tmp_path):
    man = harvest_store(model, TEXT, tmp_path / "s", _cfg(1000))
    assert man["schema"] == "mlx-circuits.activation-store" and man["version"] == 1
    assert man["model"] == model_identity(model)
    assert man["sites"] == ["L0.mlp_in", "L1.mlp_out"]  # forward order, whatever was given
    assert man["dims"] == {"L0.mlp_in": 64, "L1.mlp_out": 64} and man["dtype"] == "float32"
    assert [s["tokens"] for s in man["shards"]] == [128] * 7 + [104] and man["n_tokens"] == 1000
    assert man["context"] == {"context_len": 16, "batch_size": 4, "drop_bos": True, "bos_id": 2}
    assert man["corpus"]["exhausted"] is False
    on_disk = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert on_disk == man
    want = _direct(model, 1000)
    # read back three independent ways: our reader, safetensors' numpy loader, mx.load
    from safetensors.numpy import load_file

    store = ActivationStore(tmp_path / "s")
    got = {s: np.concatenate([c[s] for c in store.chunks()]) for s in (A, B)}
    files = sorted((tmp_path / "s").glob("shard_*.safetensors"))
    st = {s: np.concatenate([load_file(str(f))[str(s)] for f in files]) for s in (A, B)}
    mlx = {s: np.concatenate([np.array(mx.load(str(f))[str(s)]) for f in files]) for s in (A, B)}
    for s in (A, B):
        np.testing.assert_array_equal(got[s], want[s])
        np.testing.assert_array_equal(st[s], want[s])
        np.testing.assert_array_equal(mlx[s], want[s])
    norms = np.concatenate([load_file(str(f))["__norms__"] for f in files])
    np.testing.assert_allclose(norms[:, 1], np.linalg.norm(want[B], axis=1), rtol=1e-6)


def test_bfloat16_store_rounds_like_mlx_and_halves_the_disk(model, tmp_path):
    f32 = harvest_store(model, TEXT, tmp_path / "f", _cfg(600))
    b16 = harvest_store(model, TEXT, tmp_path / "b", _cfg(600, dtype="bfloat16"))
    size = lambda m: sum(s["bytes"] for s in m["shards"])
    assert 0.5 < size(b16) / size(f32) < 0.56  # the norms stay float32
    want = _direct(model, 600)
    store = ActivationStore(tmp_path / "b")
    for s in (A, B):
        got = np.concatenate([c[s] for c in store.chunks()])
        assert got.dtype == np.float32
        ref = np.array(mx.array(want[s]).astype(mx.bfloat16).astype(mx.float32))
        np.testing.assert_array_equal(got, ref)
        assert not np.array_equal(got, want[s])  # the rounding did happen
    f = next((tmp_path / "b").glob("shard_*.safetensors"))
    assert mx.load(str(f))["L0.mlp_in"].dtype == mx.bfloat16


def test_to_bf16_equals_mlx_rounding_on_edge_cases():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10000) * 10.0 ** rng.integers(-40, 38, 10000),
                        [0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, 1.0 + 2 ** -8,
                         1.0 + 3 * 2 ** -8, 1.0 + 2 ** -9]]).astype(np.float32)
    ours = to_bf16(x)
    theirs = np.array(mx.array(x).astype(mx.bfloat16).view(mx.uint16))
    np.testing.assert_array_equal(ours, theirs)
    assert np.isnan(bf16_to_f32(to_bf16(np.array([np.nan], np.float32)))).all()
    np.testing.assert_array_equal(bf16_to_f32(ours)[np.isfinite(x)],
                                  np.array(mx.array(x).astype(mx.bfloat16).astype(mx.float32))[np.isfinite(x)])


def test_a_failed_harvest_leaves_no_store_and_keeps_the_old_one(model, tmp_path):
    def stop(p):
        if p.shards >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        harvest_store(model, TEXT, tmp_path / "s", _cfg(1000), progress=stop)
    assert os.listdir(tmp_path) == []  # neither the store nor a temporary directory
    harvest_store(model, TEXT, tmp_path / "s", _cfg(300))
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    with pytest.raises(KeyboardInterrupt):
        harvest_store(model, TEXT, tmp_path / "s", _cfg(1000), progress=stop)
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_a_resumed_harvest_equals_an_uninterrupted_one(model, tmp_path, monkeypatch):
    import attribution

    harvest_store(model, TEXT, tmp_path / "full", _cfg(1000))
    real, calls = attribution.capture, []

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(attribution, "capture", counting)

    def stop(p):
        if p.shards >= 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        harvest_store(model, TEXT, tmp_path / "s", _cfg(1000), progress=stop, resume=True)
    assert not (tmp_path / "s").exists() and (tmp_path / ".s.partial" / "harvest_state.json").is_file()
    first = len(calls)
    with pytest.raises(ConfigError, match=r"other settings .*dtype: 'float32' -> 'bfloat16'"):
        harvest_store(model, TEXT, tmp_path / "s", _cfg(1000, dtype="bfloat16"), resume=True)
    calls.clear()
    man = harvest_store(model, TEXT, tmp_path / "s", _cfg(1000), resume=True)
    resumed = len(calls)
    calls.clear()
    harvest_store(model, TEXT, tmp_path / "again", _cfg(1000))
    full_calls = len(calls)
    assert resumed < full_calls and first + resumed <= full_calls + 1  # finished batches skipped
    assert not (tmp_path / ".s.partial").exists() and man["n_tokens"] == 1000
    for f in sorted((tmp_path / "full").glob("shard_*")):
        assert (tmp_path / "s" / f.name).read_bytes() == f.read_bytes(), f.name


def test_a_short_corpus_is_recorded_as_exhausted(model, tmp_path):
    man = harvest_store(model, TEXT[:5], tmp_path / "s", _cfg(10 ** 6))
    assert man["corpus"]["exhausted"] is True and 0 < man["n_tokens"] < 10 ** 6
    with pytest.raises(EmptyDatasetError, match="holds no documents"):
        harvest_store(model, [], tmp_path / "e", _cfg(100))
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("kw, match", [
    ({"dtype": "float16"}, "dtype must be one of float32, bfloat16"),
    ({"tokens": 0}, "tokens must be an integer >= 1"),
    ({"shard_tokens": 0}, "shard_tokens must be an integer >= 1"),
    ({"sites": ()}, "sites is empty"),
    ({"sites": (A, A)}, "repeats a site"),
])
def test_bad_harvest_configs(kw, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(**kw)


# ------------------------------------------------------------------- reading ----
def _stream(store, seed, n):
    """The first n ids of the stream as the module docstring defines it (no outliers)."""
    offs = np.cumsum([0] + [s["tokens"] for s in store.manifest["shards"]])
    out, e = [], 0
    while sum(map(len, out)) < n:
        for f in np.random.default_rng([seed, e]).permutation(len(offs) - 1):
            out.append(np.arange(offs[f], offs[f + 1]))
        e += 1
    return np.concatenate(out)[:n]


def test_batches_follow_the_documented_stream_and_carry_the_right_rows(tmp_path):
    x = _synthetic_store(tmp_path / "s")
    store = ActivationStore(tmp_path / "s", buffer_tokens=256, outlier_factor=None)
    b, cap = 64, store.buffer_rows(64)
    assert cap == 256
    it = store.batches(b, seed=5)
    emitted = []
    for k in range(40):
        batch = next(it)
        np.testing.assert_array_equal(batch[A], x[A][batch.ids])
        np.testing.assert_array_equal(batch["L1.mlp_out"], x[B][batch.ids])
        # before batch k's slots are refilled: everything emitted before it plus the buffer
        # is exactly the first cap + k·b ids of the stream
        held = batch._mixer.slot_ids
        consumed = _stream(store, 5, cap + k * b)
        assert Counter(np.concatenate(emitted + [held]).tolist()) == Counter(consumed.tolist())
        emitted.append(batch.ids)
    # mixed: a batch is not a run of consecutive rows, nor drawn from one shard
    assert np.mean(np.abs(np.diff(emitted[3]))) > 50
    assert len(set(np.searchsorted([300, 600, 900], emitted[10], side="right").tolist())) > 1
    # deterministic given the seed; another seed gives another order
    again = next(ActivationStore(tmp_path / "s", buffer_tokens=256, outlier_factor=None)
                 .batches(b, 5)).ids
    np.testing.assert_array_equal(again, emitted[0])
    assert not np.array_equal(next(store.batches(b, 6)).ids, emitted[0])
    # the shard order is reshuffled every epoch
    orders = [np.random.default_rng([5, e]).permutation(4).tolist() for e in range(4)]
    assert len({tuple(o) for o in orders}) > 1


def test_bfloat16_reads_are_float32(tmp_path):
    x = _synthetic_store(tmp_path / "s", dtype="bfloat16")
    batch = next(ActivationStore(tmp_path / "s", outlier_factor=None).batches(100, 0))
    ref = np.array(mx.array(x[B][batch.ids]).astype(mx.bfloat16).astype(mx.float32))
    assert batch[B].dtype == np.float32
    np.testing.assert_array_equal(batch[B], ref)


def test_skipped_batches_read_nothing_and_later_batches_are_unchanged(tmp_path):
    x = _synthetic_store(tmp_path / "s", n=3000)
    full = ActivationStore(tmp_path / "s", buffer_tokens=512)
    ref = [dict(b) for _, b in zip(range(40), full.batches(64, 1))]
    lazy = ActivationStore(tmp_path / "s", buffer_tokens=512)
    it = lazy.batches(64, 1)
    kept = []
    for k in range(40):
        batch = next(it)
        if k == 0 or k >= 30:
            kept.append((k, dict(batch)))
        if k == 29:
            assert not batch.loaded
            late = batch  # never read while current
    for k, got in kept:
        for s in (A, B):
            np.testing.assert_array_equal(got[s], ref[k][s])
    # only the buffer was reloaded at batch 30: far fewer rows than replaying 30 batches
    assert lazy.rows_read <= 2 * 512 + 11 * 64 < full.rows_read
    np.testing.assert_array_equal(late[A], ref[29][A])  # read after the stream moved on
    np.testing.assert_array_equal(late[A], x[A][late.ids])


def test_outliers_are_dropped_from_the_stored_norms(tmp_path):
    big = [5, 400, 401, 999]
    _synthetic_store(tmp_path / "s", big=big)
    def ids(store):  # 80 batches of 50: four epochs, so every streamed row has come out
        return set(np.concatenate([b.ids for _, b in zip(range(80), store.batches(50, 0))]).tolist())

    kept = ids(ActivationStore(tmp_path / "s", buffer_tokens=256))
    assert not set(big) & kept and len(kept) == 1000 - len(big)
    assert set(big) <= ids(ActivationStore(tmp_path / "s", buffer_tokens=256, outlier_factor=None))
    # reading only site A, B's outliers are not outliers
    assert set(big) <= ids(ActivationStore(tmp_path / "s", sites=[A], buffer_tokens=256))
    with pytest.raises(EmptyDatasetError, match="dropped as an outlier"):
        next(ActivationStore(tmp_path / "s", outlier_factor=1e-9).batches(10, 0))


def test_finite_epochs_emit_every_row_once(tmp_path):
    _synthetic_store(tmp_path / "s", n=1000)
    store = ActivationStore(tmp_path / "s", buffer_tokens=256, outlier_factor=None, epochs=1)
    ids = np.concatenate([b.ids for b in store.batches(64, 0)])
    assert ids.size == 1000 // 64 * 64 and np.unique(ids).size == ids.size  # last partial dropped
    for batch in store.batches(64, 0):  # row i of site A holds i + 1 + noise < 0.1
        np.testing.assert_array_equal(np.floor(batch[A][:, 0]) - 1, batch.ids)


def test_data_parallel_shards_partition_the_rows(tmp_path):
    _synthetic_store(tmp_path / "s", n=1000, shard=300)  # 4 files
    store = ActivationStore(tmp_path / "s", buffer_tokens=128, outlier_factor=None, epochs=1)
    for world in (2, 5):  # by file for 2 ranks, by row for 5 (more ranks than files)
        parts = [np.concatenate([b.ids for b in store.shard(r, world).batches(10, 0)])
                 for r in range(world)]
        every = np.concatenate(parts)
        assert np.unique(every).size == every.size and every.size > 1000 - world * 10
        assert all(p.size for p in parts)
    assert store.shard(0, 1) is store
    first = np.concatenate([c[A] for c in store.shard(1, 2).chunks()])
    assert first.shape[0] == 300 + 100 and np.floor(first[0, 0]) - 1 == 300  # files 1 and 3


# -------------------------------------------------------------------- checks ----
def test_a_store_of_another_model_is_refused_naming_both(model, other_model, tmp_path):
    harvest_store(model, TEXT, tmp_path / "s", _cfg(200))
    ActivationStore(tmp_path / "s", model=model)
    with pytest.raises(StoreMismatchError) as e:
        ActivationStore(tmp_path / "s", model=other_model)
    msg = str(e.value)
    mine, theirs = model_identity(model)["fingerprint"][:12], model_identity(other_model)["fingerprint"][:12]
    assert mine in msg and theirs in msg and "llama" in msg and "\n" not in msg
    with pytest.raises(StoreMismatchError, match=r"no activations for L1\.resid_post"):
        ActivationStore(tmp_path / "s", sites=["L1.resid_post"])


def test_damaged_stores_are_named(tmp_path):
    _synthetic_store(tmp_path / "s")
    man = tmp_path / "s" / "manifest.json"
    good = man.read_text()
    cases = [
        ("{not json", r"manifest\.json is not valid JSON"),
        ('{"schema": "other"}', r"is not an activation store \(schema 'other'"),
        (good.replace('"dtype": "float32"', '"dtype": "int8"'), "inconsistent"),
        (good.replace('"version": 1', '"version": 99'), "newer than this reader"),
        (json.dumps({**json.loads(good), "n_tokens": 5}), "inconsistent"),
        (json.dumps({k: v for k, v in json.loads(good).items() if k != "shards"}), "shards"),
    ]
    for text, match in cases:
        man.write_text(text)
        with pytest.raises(FormatError, match=match):
            ActivationStore(tmp_path / "s")
    man.write_text(good)
    shard = tmp_path / "s" / "shard_000001.safetensors"
    blob = shard.read_bytes()
    shard.write_bytes(blob[:-10])
    with pytest.raises(FormatError, match=r"shard_000001\.safetensors has \d+ bytes, the manifest says"):
        ActivationStore(tmp_path / "s")
    shard.write_bytes(blob)
    ActivationStore(tmp_path / "s").verify()  # intact
    shard.write_bytes(b"\x00" * len(blob))  # right size, garbage inside: found when read
    with pytest.raises(FormatError, match="not a readable safetensors file"):
        list(ActivationStore(tmp_path / "s").chunks())
    with pytest.raises(FormatError, match=r"shard_000001\.safetensors does not match the sha256"):
        ActivationStore(tmp_path / "s").verify()
    shard.unlink()
    with pytest.raises(FormatError, match=r"shard .*shard_000001\.safetensors is missing"):
        ActivationStore(tmp_path / "s")
    man.unlink()
    with pytest.raises(FormatError, match="no manifest.json"):
        ActivationStore(tmp_path / "s")
    with pytest.raises(FormatError, match="does not exist"):
        ActivationStore(tmp_path / "nope")


# ------------------------------------------------------------------ training ----
def _tcfg(**kw):
    base = dict(kind="transcoder", arch="topk", sites=(A,), targets=(B,), width=32, k=4,
                total_tokens=128 * 30, batch_tokens=128, warmup_steps=3, log_every=5, lr=3e-3,
                compile=False)
    base.update(kw)
    return TrainConfig(**base)


def _weights(result):
    return {f"{n}/{k}": np.array(v) for n, d in zip(result.names, result.dictionaries)
            for k, v in d.arrays().items()}


def test_resumed_training_from_a_store_is_bit_identical_and_skips_the_reads(tmp_path):
    _synthetic_store(tmp_path / "s", n=3000, d=8, shard=250)
    full = train_on_store(tmp_path / "s", _tcfg(), buffer_tokens=1024)

    def stop(p):
        if p.step == 25:
            raise TrainingInterrupted("stop")
    with pytest.raises(TrainingInterrupted):
        train_on_store(tmp_path / "s", _tcfg(), buffer_tokens=1024, callback=stop,
                       checkpoint_dir=tmp_path / "ck", checkpoint_every=10)
    store = ActivationStore(tmp_path / "s", sites=[A, B], buffer_tokens=1024)
    resumed = train_on_store(store, _tcfg(), checkpoint_dir=tmp_path / "ck",
                             checkpoint_every=10, resume=True)
    w1, w2 = _weights(full), _weights(resumed)
    assert w1.keys() == w2.keys()
    for k in w1:
        np.testing.assert_array_equal(w1[k], w2[k], err_msg=k)
    # resumed at step 20 of 30: the first batch, the buffer reload, then 9 batches of refills
    assert store.rows_read <= 2 * 1024 + 11 * 128 < 1024 + 30 * 128
    _synthetic_store(tmp_path / "s2", n=3000, d=8, shard=250, seed=1)
    with pytest.raises(ResumeMismatchError, match=r"run\.store: '[0-9a-f]+' -> '[0-9a-f]+'"):
        train_on_store(tmp_path / "s2", _tcfg(), buffer_tokens=1024,
                       checkpoint_dir=tmp_path / "ck", resume=True)


def test_train_reads_a_store_as_a_source_and_from_model_caches_into_one(model, other_model,
                                                                        tmp_path):
    harvest_store(model, TEXT, tmp_path / "s", _cfg(1500))
    r = train(ActivationStore(tmp_path / "s", buffer_tokens=512), _tcfg(total_tokens=128 * 8))
    assert r.steps == 8 and np.isfinite(r.history[-1]["fvu"])
    r = train_on_model(model, TEXT, _tcfg(total_tokens=128 * 8), context_len=16, batch_size=4,
                       buffer_tokens=512, cache_dir=tmp_path / "cache")
    man = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert man["schema"] == "mlx-circuits.activation-store" and man["corpus"]["exhausted"]
    assert man["sites"] == ["L0.mlp_in", "L1.mlp_out"]
    with pytest.raises(StoreMismatchError, match="harvested from .*, not from "):
        train_on_store(tmp_path / "s", _tcfg(), model=other_model)
    with pytest.raises(StoreMismatchError, match=r"no activations for L0\.resid_post"):
        train_on_store(tmp_path / "s", _tcfg(kind="sae", sites=("L0.resid_post",), targets=None))


# -------------------------------------------------------------------- memory ----
_READER = textwrap.dedent("""
    import resource, sys, json
    import attribution  # noqa: F401  (before mlx)
    from sae.data.store import ActivationStore
    import numpy as np
    store = ActivationStore(sys.argv[1], buffer_tokens=int(sys.argv[2]))
    it = store.batches(256, 0)
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    base = rss()
    seen = 0
    total = 0.0
    while seen < 2 * store.n_tokens:  # two epochs: every row read at least once
        b = next(it)
        total += float(b["L0.mlp_in"][:, 0].sum())
        seen += 256
    print(json.dumps({"growth": rss() - base, "rows_read": store.rows_read, "base": base}))
""")


def test_reader_memory_stays_near_the_buffer_not_the_store(tmp_path):
    """A store ~10x the buffer, read twice over: the reader's peak RSS grows by about the
    buffer, not by the store."""
    big = load_model(make_tiny_model("llama", tmp_path / "m", seed=0, hidden_size=256,
                                     intermediate_size=256, num_attention_heads=4,
                                     num_key_value_heads=4, max_position_embeddings=128))
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(DEFAULT_WORDS, 200)) for _ in range(400)]
    man = harvest_store(big, texts, tmp_path / "s", HarvestConfig(
        sites=(A, B), tokens=40000, shard_tokens=2048, context_len=128, batch_size=16))
    store_bytes = sum(s["bytes"] for s in man["shards"])
    buffer_tokens = 4096
    buffer_bytes = buffer_tokens * 2 * 256 * 4
    assert store_bytes > 9 * buffer_bytes
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Through sh, in a forked child of it: a process started straight from pytest inherits
    # pytest's peak RSS as its own ru_maxrss (exec keeps the caller's high-water mark), which
    # would hide the reader's growth entirely.
    out = subprocess.run(["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, "-c", _READER,
                          str(tmp_path / "s"), str(buffer_tokens)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print("reader peak RSS growth", res, "buffer", buffer_bytes, "store", store_bytes)
    assert res["rows_read"] >= 1.9 * man["n_tokens"]
    # the buffer is really allocated and filled (the measurement sees it) ...
    assert res["growth"] > 0.5 * buffer_bytes, res
    # ... and that is about all: buffer + one batch + read temporaries (RUN_ROWS rows of one
    # site) + allocator slack, while the store is ten times the buffer
    assert res["growth"] < 1.5 * buffer_bytes + 16 * 2 ** 20, res
    assert res["growth"] < store_bytes / 3, res


_HARVESTER = textwrap.dedent("""
    import json, resource, sys
    import attribution  # noqa: F401  (before mlx)
    import numpy as np
    from attribution import load_model
    from attribution.tiny import DEFAULT_WORDS
    from sae.data.store import HarvestConfig, harvest_store
    model = load_model(sys.argv[1])
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(DEFAULT_WORDS, 200)) for _ in range(800)]
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    base = rss()
    man = harvest_store(model, texts, sys.argv[2], HarvestConfig(
        sites=("L0.mlp_in", "L1.mlp_out"), tokens=int(sys.argv[3]), shard_tokens=2048,
        context_len=128, batch_size=16))
    print(json.dumps({"growth": rss() - base, "bytes": sum(s["bytes"] for s in man["shards"])}))
""")


@pytest.mark.slow
def test_harvest_memory_does_not_grow_with_the_store(tmp_path):
    """Two harvests, one four times the other: the peak RSS (model, forward, one shard
    buffer) is the same, so the store is never held in memory."""
    path = make_tiny_model("llama", tmp_path / "m", seed=0, hidden_size=256, intermediate_size=256,
                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = {}
    for n in (10000, 40000):  # via sh: see test_reader_memory_stays_near_the_buffer_not_the_store
        out = subprocess.run(["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, "-c",
                              _HARVESTER, str(path), str(tmp_path / f"s{n}"), str(n)],
                             capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
        assert out.returncode == 0, out.stderr
        res[n] = json.loads(out.stdout.strip().splitlines()[-1])
    print("harvest peak RSS growth", res)
    extra_store = res[40000]["bytes"] - res[10000]["bytes"]
    assert extra_store > 50 * 2 ** 20
    assert res[40000]["growth"] - res[10000]["growth"] < extra_store / 4, res
