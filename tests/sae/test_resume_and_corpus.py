"""Resume checks, the metrics log across a resume, the one dead-latent definition, text
files read by suffix (case-insensitive), and the errors of a corpus too short to pack."""


import mlx.core as mx
import numpy as np
import pytest

from attribution import load_model
from attribution.errors import NonFiniteError as NonFiniteValues
from attribution.sites import Site
from attribution.tiny import make_tiny_model
from sae import ArraySource, TrainConfig, evaluate, train
from sae.data import harvest, read_texts
from sae.data.synthetic import sparse_features
from sae.errors import EmptyDatasetError, FormatError, TrainingInterrupted
from sae.evaluate import dead_fraction
from sae.train.checkpoint import ResumeMismatchError

S = Site(0, "resid_post")
DATA = sparse_features(4096, 16, 32, active=2, seed=3)


def _cfg(**kw):
    base = dict(kind="sae", arch="topk", sites=(S,), width=32, k=4, total_tokens=256 * 40,
                batch_tokens=256, warmup_steps=5, log_every=5, lr=3e-3, dead_tokens=256 * 4,
                compile=False)
    base.update(kw)
    return TrainConfig(**base)


def _stop_at(step):
    def cb(p):
        if p.step == step:
            raise TrainingInterrupted("stop")
    return cb


def _interrupted(tmp_path, cfg, src, stop=25, **kw):
    with pytest.raises(TrainingInterrupted):
        train(src, cfg, callback=_stop_at(stop), checkpoint_dir=tmp_path, checkpoint_every=10, **kw)


class _NoData:
    """A source that fails the test if the trainer reads a batch from it."""

    def __init__(self, src):
        self.sites, self.dims = src.sites, src.dims

    def batches(self, bt, seed):
        raise AssertionError("data was read before the resume check")


@pytest.mark.parametrize("change, named", [
    ({"k": 8}, "k: 4 -> 8"),
    ({"width": 64, "lr": 1e-3}, "width: 32 -> 64"),
    ({"arch": "batchtopk"}, "arch: 'topk' -> 'batchtopk'"),
    ({"seed": 7}, "seed: 0 -> 7"),
    ({"total_tokens": 256 * 80}, "total_tokens: 10240 -> 20480"),
])
def test_resume_with_another_config_is_refused_before_reading_data(tmp_path, change, named):
    src = ArraySource({S: DATA.x})
    _interrupted(tmp_path, _cfg(), src)
    with pytest.raises(ResumeMismatchError) as e:
        train(_NoData(src), _cfg(**change), checkpoint_dir=tmp_path, resume=True)
    msg = str(e.value)
    assert named in msg and "\n" not in msg
    for field in change:  # every changed field is named, with both values
        assert f"{field}:" in msg


def test_resume_with_other_data_or_run_info_is_refused(tmp_path):
    src = ArraySource({S: DATA.x})
    _interrupted(tmp_path, _cfg(), src, run_info={"corpus": "a.txt"})
    with pytest.raises(ResumeMismatchError, match=r"run.corpus: 'a.txt' -> 'b.txt'"):
        train(src, _cfg(), checkpoint_dir=tmp_path, resume=True, run_info={"corpus": "b.txt"})
    # same configs and run info, but other activations: the first batch's scales differ
    with pytest.raises(ResumeMismatchError, match="training data changed"):
        train(ArraySource({S: DATA.x * 3.0}), _cfg(), checkpoint_dir=tmp_path, resume=True,
              run_info={"corpus": "a.txt"})
    # the unchanged run resumes (execution-only fields such as compile may differ)
    r = train(src, _cfg(compile=True), checkpoint_dir=tmp_path, resume=True,
              run_info={"corpus": "a.txt"})
    assert r.history and r.history[0]["step"] > 10


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_metrics_log_of_a_resumed_run_equals_the_uninterrupted_log(tmp_path, suffix):
    src = ArraySource({S: DATA.x})
    full_log, log = tmp_path / f"full{suffix}", tmp_path / f"run{suffix}"
    train(src, _cfg(), log_path=full_log)
    # stop at 25: rows 5..25 are logged, the last checkpoint is step 20, so row 25 must go
    _interrupted(tmp_path / "ck", _cfg(), src, stop=25, log_path=log)
    assert "25" in log.read_text()
    train(src, _cfg(), checkpoint_dir=tmp_path / "ck", checkpoint_every=10, resume=True,
          log_path=log)
    assert log.read_text() == full_log.read_text()
    # a fresh run into the same log starts the file over instead of appending
    train(src, _cfg(), log_path=log)
    assert log.read_text() == full_log.read_text()


def test_dead_fraction_is_one_definition():
    # hand-built counters: latents silent for 0, 5, 10 and 20 tokens
    assert dead_fraction(np.array([0, 5, 10, 20]), 10) == 0.5
    assert dead_fraction(np.array([0, 5, 10, 20]), 21) == 0.0
    # a frozen dictionary (lr = 0) trained for one epoch of N tokens: the training log's
    # dead_frac over its window (all N tokens) equals evaluate's on the same N tokens.
    x = DATA.x[:2048]
    cfg = _cfg(width=256, k=2, total_tokens=2048, lr=0.0, dead_tokens=10 ** 9, log_every=8)
    r = train(ArraySource({S: x}), cfg)
    last = r.history[-1]
    row = evaluate(r.dictionaries, {S: x}, n_tokens=2048, batch_tokens=256).iloc[0]
    assert last["dead_window"] == row.dead_window == 2048
    assert 0 < row.dead_frac < 1  # some latents never fire: the comparison is not vacuous
    assert last["dead_frac"] == row.dead_frac


@pytest.mark.parametrize("name", ["notes.md", "table.csv", "UPPER.TXT", "noext"])
def test_any_text_file_is_read_as_lines_whatever_its_suffix(tmp_path, name):
    p = tmp_path / name
    p.write_text("first document\n\n  \nsecond, with a comma\n")
    assert list(read_texts(p)) == ["first document", "second, with a comma"]
    assert list(read_texts(str(p))) == ["first document", "second, with a comma"]


def test_structured_suffixes_are_case_insensitive_and_bad_files_name_themselves(tmp_path):
    p = tmp_path / "DATA.JSONL"
    p.write_text('{"text": "a b"}\n{"text": "c"}\n')
    assert list(read_texts(p)) == ["a b", "c"]
    missing = tmp_path / "corpus.md"
    with pytest.raises(FormatError, match="corpus.md does not exist"):
        list(read_texts(str(missing)))  # was: the path string itself became the text
    with pytest.raises(FormatError, match="is a directory"):
        list(read_texts(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(FormatError, match="bad.jsonl is not a valid jsonl file"):
        list(read_texts(bad))
    nocol = tmp_path / "nocol.jsonl"
    nocol.write_text('{"body": "x"}\n')
    with pytest.raises(FormatError, match="no 'text' column"):
        list(read_texts(nocol))
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81 binary")
    with pytest.raises(FormatError, match="blob.txt is not UTF-8 text"):
        list(read_texts(binary))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "m", seed=0))


def test_too_short_or_empty_corpus_says_so(tiny):
    site = Site(0, "mlp_in")
    n = len(tiny.encode("the cat sat"))
    with pytest.raises(EmptyDatasetError, match=rf"too short: 1 document\(s\) with {n} tokens"):
        next(harvest(tiny, ["the cat sat"], [site], context_len=32))
    with pytest.raises(EmptyDatasetError, match="holds no documents"):
        next(harvest(tiny, [], [site], context_len=32))
    long = ["the cat sat on the mat and the dog ran to the park"] * 20
    assert next(harvest(tiny, long, [site], context_len=32))[site].shape[1] == tiny.d_model


def test_nonfinite_activations_fail_on_the_first_chunk(tmp_path):
    model = load_model(make_tiny_model("llama", tmp_path / "m", seed=0))
    emb = model._embedding
    emb.weight = mx.full(emb.weight.shape, float("nan"))
    with pytest.raises(NonFiniteValues, match="activations at L0.mlp_in"):
        next(harvest(model, ["the cat sat on the mat and the dog ran"] * 10, [Site(0, "mlp_in")],
                     context_len=8))


@pytest.mark.parametrize("field, value, match", [
    ("k", 0, "k must be an integer >= 1, got 0"),
    ("k", "4", "k must be an integer >= 1, got '4'"),
    ("width", True, "width must be an integer >= 1, got True"),
    ("batch_tokens", -256, "batch_tokens must be an integer >= 1"),
    ("total_tokens", 100, "total_tokens=100 is below batch_tokens=256"),
    ("log_every", 0, "log_every must be an integer >= 1"),  # was a ZeroDivisionError mid-run
    ("seed", -1, "seed must be an integer >= 0"),
    ("lr", float("nan"), "lr must be a finite number >= 0"),
])
def test_train_config_counts_are_checked_with_one_line_errors(field, value, match):
    from sae.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        _cfg(**{field: value})
