"""``circuits harvest`` and ``circuits train --activations``: a store on disk, training from
it (sites from the store, resume bit-identical), and the bad-input contract
(``tests/circuits/cli_harness.py``) for both commands."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from attribution import load_model, model_identity
from attribution.tiny import DEFAULT_WORDS, make_tiny_model
from circuits.cli import main
from cli_harness import assert_bad_input, run_cli
from sae.data.store import HarvestConfig, harvest_store

HARVEST = ["harvest", "--tokens", "3000", "--shard-tokens", "700"]
TRAIN = ["train", "--arch", "topk", "--width", "32", "--k", "4", "--tokens", "2048",
         "--batch-tokens", "256", "--buffer-tokens", "1024"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A float32 and a bfloat16 store of the shipped ioi organism, and one of a tiny model."""
    d = tmp_path_factory.mktemp("stores")
    assert main(["--quiet", *HARVEST, "--out", str(d / "f32")]) == 0
    assert main(["--quiet", *HARVEST, "--sites", "L0.mlp_in,L1.resid_post", "--dtype", "bfloat16",
                 "--out", str(d / "b16")]) == 0
    tiny = load_model(make_tiny_model("llama", d / "tiny", seed=0))
    harvest_store(tiny, [" ".join(DEFAULT_WORDS)] * 40, d / "other",
                  HarvestConfig(sites=("L0.mlp_in", "L0.mlp_out"), tokens=500, context_len=16))
    return d


def _weights(out: Path) -> dict:
    files = sorted((out / "dictionaries").rglob("*.safetensors"))
    assert files
    return {f"{f.parent.name}/{k}": np.array(v) for f in files for k, v in mx.load(str(f)).items()}


def test_harvest_writes_a_store_with_its_manifest(stores, capsys):
    man = json.loads((stores / "f32" / "manifest.json").read_text())
    ioi = load_model(Path(__file__).resolve().parents[2] / "circuits" / "organisms" / "shipped" / "ioi")
    assert man["model"] == model_identity(ioi)
    assert man["sites"] == [f"L{i}.{k}" for i in range(4) for k in ("mlp_in", "mlp_out")]
    assert man["n_tokens"] == 3000 and [s["tokens"] for s in man["shards"]] == [700] * 4 + [200]
    assert man["dtype"] == "float32" and man["corpus"]["spec"] == "organism"
    assert man["context"]["context_len"] == 64
    assert (stores / "f32" / "run.json").is_file()
    b16 = json.loads((stores / "b16" / "manifest.json").read_text())
    assert b16["dtype"] == "bfloat16" and b16["sites"] == ["L0.mlp_in", "L1.resid_post"]
    code, out, _ = run_cli(capsys, "--json", "harvest", "--tokens", "200", "--sites", "L0.mlp_in",
                           "--out", stores / "j")
    rec = json.loads(out)
    assert code == 0 and rec["tokens"] == 200 and rec["shards"] == 1 and rec["tokens_per_s"] > 0


def test_train_from_a_store_takes_sites_from_it(stores, tmp_path):
    assert main(["--quiet", *TRAIN, "--activations", str(stores / "f32"), "--out",
                 str(tmp_path / "tc")]) == 0
    names = sorted(p.name for p in (tmp_path / "tc" / "dictionaries").iterdir() if p.is_dir())
    assert len(names) == 4 and all("mlp_in" in n for n in names)  # every layer's transcoder
    assert main(["--quiet", *TRAIN, "--kind", "sae", "--activations", str(stores / "b16"),
                 "--out", str(tmp_path / "sae")]) == 0
    names = sorted(p.name for p in (tmp_path / "sae" / "dictionaries").iterdir() if p.is_dir())
    assert len(names) == 2  # one SAE per stored site
    assert main(["--quiet", *TRAIN, "--activations", str(stores / "f32"), "--sites", "L2.mlp_in",
                 "--out", str(tmp_path / "one")]) == 0
    assert len([p for p in (tmp_path / "one" / "dictionaries").iterdir() if p.is_dir()]) == 1


def test_train_from_a_store_resumes_bit_identically(stores, tmp_path):
    import importlib

    trainer = importlib.import_module("sae.train.trainer")
    base = [*TRAIN, "--sites", "L0.mlp_in,L1.mlp_in", "--activations", str(stores / "f32")]
    assert main(["--quiet", *base, "--out", str(tmp_path / "full")]) == 0
    real = trainer._log

    def stop_after_6(trainees, done, *a, **k):
        rows = real(trainees, done, *a, **k)
        if done == 6:
            raise KeyboardInterrupt
        return rows

    mp = pytest.MonkeyPatch()
    mp.setattr(trainer, "_log", stop_after_6)
    try:
        code = main(["--quiet", *base, "--checkpoint-dir", str(tmp_path / "ck"),
                     "--checkpoint-every", "4", "--out", str(tmp_path / "resumed")])
    finally:
        mp.undo()
    assert code == 130 and not (tmp_path / "resumed").exists()
    assert main(["--quiet", *base, "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-every",
                 "4", "--resume", "--out", str(tmp_path / "resumed")]) == 0
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert full.keys() == resumed.keys()
    for k in full:
        np.testing.assert_array_equal(full[k], resumed[k], err_msg=k)


def test_a_budget_beyond_the_store_warns(stores, tmp_path, capsys):
    code, _, err = run_cli(capsys, *TRAIN[:-4], "--tokens", "4096", "--batch-tokens", "512",
                           "--sites", "L0.mlp_in", "--activations", stores / "f32",
                           "--out", tmp_path / "o")
    assert code == 0 and "warning: --tokens 4096 exceeds the 3000 tokens" in err


# ------------------------------------------------------------------ bad input ----
def _damage(t: Path, stores: Path) -> None:
    import shutil

    for name in ("corrupt", "schema", "noshard", "truncated", "nomanifest"):
        shutil.copytree(stores / "b16", t / name)
    (t / "corrupt" / "manifest.json").write_text("{not json")
    (t / "schema" / "manifest.json").write_text('{"schema": "mlx-circuits.activation-cache"}')
    (t / "noshard" / "shard_000001.safetensors").unlink()
    f = t / "truncated" / "shard_000000.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    (t / "nomanifest" / "manifest.json").unlink()
    (t / "file.txt").write_text("not a store")


TRAIN_BAD = {  # id: (argv after TRAIN with {t} = tmp, {s} = stores, {out}; regex)
    "missing-store": (["--activations", "{t}/nope"], r"activation store .*nope does not exist.*circuits harvest"),
    "store-is-a-file": (["--activations", "{t}/file.txt"], r"file\.txt is a file"),
    "no-manifest": (["--activations", "{t}/nomanifest"], r"not an activation store \(no manifest\.json"),
    "corrupt-manifest": (["--activations", "{t}/corrupt"], r"manifest\.json is not valid JSON"),
    "other-schema": (["--activations", "{t}/schema"], r"not an activation store \(schema"),
    "missing-shard": (["--activations", "{t}/noshard"], r"shard_000001\.safetensors is missing"),
    "truncated-shard": (["--activations", "{t}/truncated"], r"shard_000000\.safetensors has 1000 bytes"),
    "another-model": (["--activations", "{s}/other", "--kind", "sae"],
                      r"harvested from tiny \(llama, .*fingerprint [0-9a-f]{12}\) at .*tiny, not from ioi "
                      r"\(.*fingerprint [0-9a-f]{12}\).*harvest a new store"),
    "sites-not-in-store": (["--activations", "{s}/b16", "--kind", "sae", "--sites", "L3.mlp_in"],
                           r"has no activations for L3\.mlp_in .*it holds L0\.mlp_in, L1\.resid_post"),
    "target-not-in-store": (["--activations", "{s}/b16", "--sites", "L0.mlp_in"],
                            r"has no activations for L0\.mlp_out"),
    "no-transcoder-pairs": (["--activations", "{s}/b16"],
                            r"holds no input site with its mlp_out target for --kind transcoder"),
    "corpus-and-store": (["--activations", "{s}/f32", "--corpus", "task:ioi"],
                         r"--corpus and --activations exclude each other"),
    "buffer-zero": (["--activations", "{s}/f32", "--buffer-tokens", "0"], r"--buffer-tokens.*>= 1"),
    "store-inside-out": (["--activations", "{out}/store", "--overwrite"], r"lies inside --out"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_BAD))
def test_train_from_store_bad_input(case, stores, tmp_path, capsys):
    _damage(tmp_path, stores)
    out = tmp_path / "out"
    if case == "store-inside-out":
        (out / "store").mkdir(parents=True)
    extra, match = TRAIN_BAD[case]
    argv = [*TRAIN, *[a.format(t=tmp_path, s=stores, out=out) for a in extra], "--out", out]
    assert_bad_input(capsys, argv, match, out=out, watch=(stores / "f32", stores / "b16"))


HARVEST_BAD = {  # id: (argv after "harvest", regex, exit code or None)
    "dtype-unknown": (["--dtype", "float16"], r"--dtype.*invalid choice.*bfloat16", 2),
    "tokens-zero": (["--tokens", "0"], r"--tokens.*>= 1", 2),
    "tokens-negative": (["--tokens", "-5"], r"--tokens.*>= 1", 2),
    "shard-tokens-zero": (["--shard-tokens", "0"], r"--shard-tokens.*>= 1", 2),
    "context-len-zero": (["--context-len", "0"], r"--context-len.*>= 1", 2),
    "batch-zero": (["--batch", "0"], r"--batch.*>= 1", 2),
    "context-too-long": (["--context-len", "100000"],
                         r"--context-len 100000 exceeds the model's context of \d+ tokens", 1),
    "site-out-of-range": (["--sites", "L9.mlp_in"], r"L9|layer", 1),
    "site-unparsable": (["--sites", "mlp_in"], r"cannot parse site 'mlp_in'", 1),
    "sites-empty": (["--sites", ""], r"--sites must name at least one site", 1),
    "site-twice": (["--sites", "L0.mlp_in,L0.mlp_in"], r"names a site twice", 1),
    "corpus-missing": (["--corpus", "{t}/missing.txt"], r"corpus file .*missing\.txt does not exist", 1),
    "corpus-empty": (["--corpus", "{t}/empty.txt"], r"empty\.txt holds no text", 1),
    "corpus-too-short": (["--corpus", "{t}/short.txt"], r"corpus is too short", 1),
    "unknown-task": (["--corpus", "task:nosuch"], r"unknown task 'nosuch'", 1),
    "out-is-a-file": (["--out", "{t}/file.txt"], r"--out .*file\.txt is a file", 1),
    "config-dtype": (["--config", "{t}/cfg.json"], r"'dtype'.*one of float32, bfloat16", 1),
}


@pytest.mark.parametrize("case", sorted(HARVEST_BAD))
def test_harvest_bad_input(case, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("hi there\n")
    (tmp_path / "file.txt").write_text("a file\n")
    (tmp_path / "cfg.json").write_text('{"dtype": "int8"}')
    extra, match, code = HARVEST_BAD[case]
    extra = [a.format(t=tmp_path) for a in extra]
    out = tmp_path / "out"
    argv = ["harvest", "--tokens", "300", *extra]
    if "--out" not in extra:
        argv += ["--out", out]
    else:
        out = Path(extra[extra.index("--out") + 1])
    assert_bad_input(capsys, argv, match, out=out, code=code, watch=(tmp_path / "file.txt",))


def test_resume_with_another_store_is_refused(stores, tmp_path, capsys):
    base = [*TRAIN, "--kind", "sae", "--sites", "L0.mlp_in"]
    assert main(["--quiet", *base, "--activations", str(stores / "b16"), "--checkpoint-dir",
                 str(tmp_path / "ck"), "--out", str(tmp_path / "a")]) == 0
    out = tmp_path / "b"
    assert_bad_input(capsys, [*base, "--activations", stores / "f32", "--checkpoint-dir",
                              tmp_path / "ck", "--resume", "--out", out],
                     r"cannot resume .*--activations \(the store's contents\): '[0-9a-f]{16}' -> "
                     r"'[0-9a-f]{16}'.*another --checkpoint-dir",
                     out=out, watch=(tmp_path / "ck",))


def test_an_interrupted_harvest_resumes_to_the_same_store(stores, tmp_path, capsys, monkeypatch):
    import sae.data.store as store_mod

    argv = [*HARVEST, "--out", tmp_path / "s"]
    real = store_mod.HarvestProgress

    def stop_at_3_shards(*a, **k):  # a Ctrl-C once three shards are on disk
        p = real(*a, **k)
        if p.shards >= 3:
            raise KeyboardInterrupt
        return p

    monkeypatch.setattr(store_mod, "HarvestProgress", stop_at_3_shards)
    code, _, err = run_cli(capsys, *argv)
    monkeypatch.undo()
    assert code == 130 and not (tmp_path / "s").exists()
    journal = json.loads((tmp_path / ".s.partial" / "harvest_state.json").read_text())
    done = len(journal["shards"])
    assert 3 <= done < 5 and journal["next_batch"] >= 2
    assert f"{done} finished shard(s) of this harvest are kept" in err and "--resume" in err
    code, _, err = run_cli(capsys, *argv, "--resume")
    assert code == 0, err
    assert not (tmp_path / ".s.partial").exists() and (tmp_path / "s" / "run.json").is_file()
    for f in sorted((stores / "f32").glob("shard_*")):  # the fixture's uninterrupted harvest
        assert (tmp_path / "s" / f.name).read_bytes() == f.read_bytes(), f.name
    mine = json.loads((tmp_path / "s" / "manifest.json").read_text())
    ref = json.loads((stores / "f32" / "manifest.json").read_text())
    assert mine["shards"] == ref["shards"]


def test_resume_needs_an_interrupted_harvest_and_its_flags(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s"
    assert_bad_input(capsys, [*HARVEST, "--resume", "--out", out],
                     r"--resume: no interrupted harvest of --out .*drop --resume", out=out)
    import sae.data.store as store_mod

    real = store_mod.HarvestProgress

    def stop(*a, **k):
        p = real(*a, **k)
        if p.shards >= 1:
            raise KeyboardInterrupt
        return p

    monkeypatch.setattr(store_mod, "HarvestProgress", stop)
    assert run_cli(capsys, *HARVEST, "--out", out)[0] == 130
    monkeypatch.undo()
    part = tmp_path / ".s.partial"
    before = {p.name: p.read_bytes() for p in part.iterdir()}
    code, _, err = run_cli(capsys, *HARVEST, "--dtype", "bfloat16", "--resume", "--out", out)
    assert code == 1 and "started with other settings" in err and "'float32' -> 'bfloat16'" in err
    assert {p.name: p.read_bytes() for p in part.iterdir()} == before  # kept for a correct rerun
    # without --resume the old partial harvest is discarded and a new one runs
    assert run_cli(capsys, *HARVEST, "--out", out)[0] == 0 and not part.exists()
