"""Tasks: generation invariants, metrics against numpy, user files and every bad-input error."""

import json

import numpy as np
import pytest

import attribution  # noqa: F401  (optimised BLAS before mlx)
import mlx.core as mx

from circuits import tasks
from circuits.errors import TaskError
from circuits.tasks import TaskData


@pytest.fixture(scope="module")
def tok():
    from attribution.tokenizer import word_level_tokenizer
    from circuits.organisms.recipes import vocabulary

    return word_level_tokenizer(list(vocabulary()))


def _words(tok, ids):
    return tok.convert_ids_to_tokens([int(i) for i in ids])


@pytest.mark.parametrize("name", ["ioi", "induction", "greater_than"])
def test_generate_is_valid_and_seeded(tok, name):
    task = tasks.get(name)
    a, b, c = (task.generate(40, s, tok) for s in (0, 0, 1))
    assert len(a) == 40 and len(a.reference) == 40
    for x, y in zip(a.clean, a.corrupted):
        assert x.shape == y.shape and x[0] == tok.bos_token_id
    assert all(np.array_equal(x, y) for x, y in zip(a.clean, b.clean))
    assert np.array_equal(a.answer, b.answer)
    assert not all(np.array_equal(x, y) for x, y in zip(a.clean, c.clean))
    unk = tok.unk_token_id
    assert not any((x == unk).any() for x in a.clean + a.corrupted)
    assert sum(b.clean.shape[0] for b in a.batches(7)) == 40


def test_ioi_structure(tok):
    task = tasks.get("ioi")
    assert len(task.templates) >= 15
    d = task.generate(200, 3, tok)
    abba = 0
    for i in range(len(d)):
        words = _words(tok, d.clean[i])
        io, s = _words(tok, [d.answer[i], d.wrong[i]])
        assert words.count(s) == 2 and words.count(io) == 1
        abba += words.index(io) < words.index(s)
        corr = _words(tok, d.corrupted[i])
        names = [w for w in corr if w in task.names]
        assert len(names) == 3 and len(set(names)) == 3 and not {io, s} & set(names)
    assert 50 < abba < 150  # both BABA and ABBA variants


def test_induction_structure(tok):
    for corrupt in ("first", "second"):
        t = tasks.get("induction", segment_len=8, repeat_len=3, corrupt=corrupt)
        d = t.generate(30, 0, tok)
        for i in range(len(d)):
            c, k = d.clean[i][1:], d.corrupted[i][1:]
            assert np.array_equal(c[8:], c[:3]) and d.answer[i] == c[3]
            if corrupt == "second":
                assert np.array_equal(k[:8], c[:8]) and not set(k[8:]) & set(c[:8])
            else:
                assert np.array_equal(k[8:], c[8:]) and not set(k[:8]) & set(c[:8])
            assert d.wrong[i] not in c and d.wrong[i] not in k
        assert d.accuracy_rule == "top1"


def test_greater_than_structure(tok):
    d = tasks.get("greater_than").generate(50, 0, tok)
    assert d.score_ids.size == 100
    years = _words(tok, d.score_ids)
    assert years == [f"{y:02d}" for y in range(100)]
    for i in range(len(d)):
        w, k = _words(tok, d.clean[i]), _words(tok, d.corrupted[i])
        yy = int(w[w.index("17") + 1])
        assert w[-1] == "17" and k[k.index("17") + 1] == "01"
        assert np.array_equal(d.score_signs[i] > 0, np.arange(100) > yy)


def test_metrics_match_numpy():
    rng = np.random.default_rng(0)
    logits, clean = rng.normal(size=(5, 11)), rng.normal(size=(5, 11))
    ans, wrong = np.array([1, 2, 3, 4, 5]), np.array([0, 0, 1, 9, 10])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    q = np.exp(clean) / np.exp(clean).sum(-1, keepdims=True)
    L = mx.array(logits.astype(np.float32))
    np.testing.assert_allclose(np.array(tasks.logit_diff(L, mx.array(ans), mx.array(wrong))),
                               logits[range(5), ans] - logits[range(5), wrong], rtol=1e-5)
    np.testing.assert_allclose(np.array(tasks.answer_prob(L, mx.array(ans))), p[range(5), ans],
                               rtol=1e-5)
    np.testing.assert_allclose(np.array(tasks.kl_to_clean(L, mx.array(clean.astype(np.float32)))),
                               (q * np.log(q / p)).sum(-1), rtol=1e-4, atol=1e-6)
    ids, signs = np.array([2, 4, 6]), rng.choice([-1.0, 1.0], size=(5, 3))
    np.testing.assert_allclose(
        np.array(tasks.prob_diff(L, mx.array(ids), mx.array(signs.astype(np.float32)))),
        (p[:, ids] * signs).sum(-1), rtol=1e-5)


def test_score_with_oracle_forward(tok):
    d = tasks.get("ioi").generate(20, 0, tok)
    V = len(tok)
    answers = {tuple(c.tolist()): a for c, a in zip(d.clean, d.answer)}

    def oracle(tokens):
        out = np.zeros((tokens.shape[0], tokens.shape[1], V), dtype=np.float32)
        for i, row in enumerate(np.array(tokens)):
            out[i, -1, answers[tuple(row.tolist())]] = 3.0
        return mx.array(out)

    s = tasks.score(d, oracle)
    assert s.accuracy == 1.0 and s.metric == pytest.approx(3.0)
    assert tasks.score(d.with_metric("kl"), oracle).metric == pytest.approx(0.0, abs=1e-6)


def _write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


GOOD = {"prompt": "Then , Mary and John went to the store . John gave a ring to",
        "corrupted_prompt": "Then , Alice and Tom went to the store . Sam gave a ring to",
        "answer": "Mary", "wrong_answer": "John"}


def test_user_task_jsonl_and_csv(tok, tmp_path):
    f = tmp_path / "t.jsonl"
    _write_jsonl(f, [GOOD, "", {**GOOD, "answer": " Lisa"}])
    d = tasks.get(str(f)).generate(None, 0, tok)
    assert len(d) == 2 and _words(tok, d.answer) == ["Mary", "Lisa"]
    c = tmp_path / "t.csv"
    c.write_text("prompt,corrupted_prompt,answer,wrong_answer\n"
                 f"\"{GOOD['prompt']}\",\"{GOOD['corrupted_prompt']}\",Mary,John\n")
    d2 = tasks.from_file(c).generate(tokenizer=tok)
    assert np.array_equal(d2.clean[0], d.clean[0]) and d2.wrong[0] == d.wrong[0]
    assert len(tasks.get(str(f)).generate(1, 0, tok)) == 1


@pytest.mark.parametrize("rows,needle", [
    ([GOOD, GOOD, "{not json"], "line 3: invalid JSON"),
    ([GOOD, {k: v for k, v in GOOD.items() if k != "answer"}], "line 2: missing field(s) answer"),
    ([{**GOOD, "wrong_answer": "  "}], "line 1: field 'wrong_answer' is empty"),
    ([{**GOOD, "prompt": 3}], "line 1: field 'prompt' must be a string"),
    (["[1, 2]"], "line 1: expected an object"),
    ([GOOD, {**GOOD, "corrupted_prompt": "Then , Alice went to the store"}],
     "line 2: prompt has 16 tokens but corrupted_prompt has"),
    ([{**GOOD, "answer": "Mary John"}], "not a single token"),
    ([{**GOOD, "answer": "Zorblax"}], "unknown token"),
])
def test_user_task_bad_lines(tok, tmp_path, rows, needle):
    f = tmp_path / "bad.jsonl"
    _write_jsonl(f, rows)
    with pytest.raises(TaskError) as e:
        tasks.get(str(f)).generate(None, 0, tok)
    assert needle in str(e.value)


def test_user_task_file_errors(tok, tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(TaskError, match="empty"):
        tasks.get(str(empty)).generate(None, 0, tok)
    csv_bad = tmp_path / "b.csv"
    csv_bad.write_text("prompt,answer\nx,y\n")
    with pytest.raises(TaskError, match="line 1: header lacks column"):
        tasks.from_file(csv_bad).generate(tokenizer=tok)
    csv_row = tmp_path / "r.csv"
    csv_row.write_text("prompt,corrupted_prompt,answer,wrong_answer\na,b,Mary,\n")
    with pytest.raises(TaskError, match="line 2: field 'wrong_answer' is empty"):
        tasks.from_file(csv_row).generate(tokenizer=tok)
    with pytest.raises(TaskError, match="does not exist"):
        tasks.from_file(tmp_path / "missing.jsonl").generate(tokenizer=tok)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(TaskError, match="unsupported extension"):
        tasks.from_file(tmp_path / "x.txt").generate(tokenizer=tok)


def test_bad_names_and_empty_datasets(tok):
    assert issubclass(TaskError, ValueError)
    with pytest.raises(TaskError, match="unknown task 'nope'.*ioi"):
        tasks.get("nope")
    with pytest.raises(TaskError, match="bad option"):
        tasks.get("ioi", colour="red")
    assert isinstance(tasks.get("Greater-Than"), tasks.GreaterThanTask)
    for name in tasks.names():
        with pytest.raises(TaskError, match="empty"):
            tasks.get(name).generate(0, 0, tok)
    with pytest.raises(TaskError, match="empty"):
        TaskData("x", [], [], [], [], [])
    with pytest.raises(TaskError, match="example 1: clean prompt has 3 tokens but corrupted"):
        TaskData("x", [[1, 2, 3], [1, 2, 3]], [[1, 2, 3], [1, 2]], [1, 1], [2, 2], [])
    with pytest.raises(TaskError, match="template"):
        tasks.get("ioi", templates=("[A] and [B] went",))
    with pytest.raises(TaskError, match="repeat_len"):
        tasks.get("induction", segment_len=4, repeat_len=4)
    with pytest.raises(TaskError, match="corrupt"):
        tasks.get("induction", corrupt="middle")


def test_greater_than_needs_split_years():
    from attribution.tokenizer import word_level_tokenizer

    small = word_level_tokenizer(["The", "war", "lasted", "from", "the", "year", "17", "to"])
    with pytest.raises(TaskError, match="two-digit years"):
        tasks.get("greater_than").generate(5, 0, small)
    with pytest.raises(TaskError, match="single tokens"):
        tasks.get("ioi").generate(5, 0, small)
