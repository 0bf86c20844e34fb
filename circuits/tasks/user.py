"""User tasks from a JSONL or CSV file of (prompt, corrupted_prompt, answer, wrong_answer).

Algorithm:
  1. Read the file (``.jsonl``/``.json`` as one JSON object per line, ``.csv`` with a
     header row). Validate line by line: parseable, an object/row with the four
     fields, each a non-empty string. Errors name the file, line number and problem.
  2. ``generate(n, seed, tokenizer)`` keeps all rows (``n=None`` or n >= rows) or a
     seeded sample of ``n`` rows, in file order.
  3. Tokenize each row, checking (with the line number) that the answers are single
     tokens and that prompt and corrupted prompt have the same token length.
  4. Metric: logit(answer) - logit(wrong_answer); accuracy: metric > 0.
     The mean-ablation reference is every clean prompt in the file.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from circuits.errors import TaskError
from circuits.tasks.base import TaskData, encode, single_token

FIELDS = ("prompt", "corrupted_prompt", "answer", "wrong_answer")


class UserRow(NamedTuple):
    """One validated row of a user task file."""

    line: int
    """1-based line number in the file."""
    prompt: str
    """Clean prompt."""
    corrupted_prompt: str
    """Counterfactual prompt (same token length as ``prompt``)."""
    answer: str
    """Correct continuation (one token)."""
    wrong_answer: str
    """Incorrect continuation (one token)."""


def _row(path: Path, line: int, obj: Any) -> UserRow:
    if not isinstance(obj, dict):
        raise TaskError(f"{path}, line {line}: expected an object with fields {', '.join(FIELDS)}; "
                        f"got {type(obj).__name__}")
    missing = [f for f in FIELDS if f not in obj or obj[f] is None]
    if missing:
        raise TaskError(f"{path}, line {line}: missing field(s) {', '.join(missing)} "
                        f"(need {', '.join(FIELDS)})")
    for f in FIELDS:
        if not isinstance(obj[f], str):
            raise TaskError(f"{path}, line {line}: field {f!r} must be a string, "
                            f"got {type(obj[f]).__name__}")
        if not obj[f].strip():
            raise TaskError(f"{path}, line {line}: field {f!r} is empty")
    return UserRow(line, *(obj[f] for f in FIELDS))


def read_rows(path: str | Path) -> list[UserRow]:
    """Validated rows of a ``.jsonl``/``.json`` or ``.csv`` task file (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist")
    suffix = path.suffix.lower()
    rows: list[UserRow] = []
    if suffix in (".jsonl", ".json", ".ndjson"):
        with path.open(encoding="utf-8") as fh:
            for ln, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise TaskError(f"{path}, line {ln}: invalid JSON ({e.msg})") from None
                rows.append(_row(path, ln, obj))
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            absent = [f for f in FIELDS if f not in header]
            if absent:
                raise TaskError(f"{path}, line 1: header lacks column(s) {', '.join(absent)}; "
                                f"need {', '.join(FIELDS)}")
            for rec in reader:
                if None in rec:  # more cells than header columns
                    raise TaskError(f"{path}, line {reader.line_num}: more cells than columns")
                rows.append(_row(path, reader.line_num, rec))
    else:
        raise TaskError(f"task file {path}: unsupported extension {suffix!r}; use .jsonl or .csv")
    if not rows:
        raise TaskError(f"task file {path} is empty: it has no rows (need fields {', '.join(FIELDS)})")
    return rows


@dataclass(frozen=True)
class UserTask:
    """A task read from a user file (see module docstring)."""

    name: ClassVar[str] = "user"
    path: str
    """Path of the ``.jsonl`` or ``.csv`` file."""

    def words(self) -> tuple[str, ...]:
        """User tasks add no words to a vocabulary."""
        return ()

    def generate(self, n: int | None = None, seed: int = 0, tokenizer: Any = None) -> TaskData:
        """Rows of the file as ``TaskData`` (all rows, or a seeded sample of ``n``)."""
        if tokenizer is None:
            raise TaskError("user task: a tokenizer is required")
        rows = read_rows(self.path)
        if n is not None and n < 1:
            raise TaskError(f"user task {self.path}: the dataset is empty; ask for n >= 1 (got n={n})")
        if n is not None and n < len(rows):
            keep = np.sort(np.random.default_rng([seed, 0]).choice(len(rows), n, replace=False))
            rows = [rows[i] for i in keep]
        return self._data(rows, tokenizer, seed)

    def row(self, index: int, tokenizer: Any) -> TaskData:
        """Row ``index`` (0-based, file order, blank lines skipped) alone as ``TaskData``."""
        if tokenizer is None:
            raise TaskError("user task: a tokenizer is required")
        rows = read_rows(self.path)
        if not 0 <= index < len(rows):
            raise TaskError(f"example {index} is past the end of {self.path}: it has {len(rows)} rows "
                            f"(0..{len(rows) - 1})")
        return self._data(rows[index: index + 1], tokenizer, 0)

    def _data(self, rows: list[UserRow], tokenizer: Any, seed: int) -> TaskData:
        clean, corr, ans, wrong = [], [], [], []
        for r in rows:
            c, k = encode(tokenizer, r.prompt), encode(tokenizer, r.corrupted_prompt)
            if c.size != k.size:
                raise TaskError(f"{self.path}, line {r.line}: prompt has {c.size} tokens but "
                                f"corrupted_prompt has {k.size}; they must tokenize to the same length")
            clean.append(c)
            corr.append(k)
            ans.append(single_token(tokenizer, r.answer, f"{self.path}, line {r.line}, answer"))
            wrong.append(single_token(tokenizer, r.wrong_answer,
                                      f"{self.path}, line {r.line}, wrong_answer"))
        return TaskData(
            task=f"user:{Path(self.path).name}", clean=clean, corrupted=corr,
            answer=np.array(ans), wrong=np.array(wrong), reference=clean,
            clean_text=tuple(r.prompt for r in rows),
            corrupted_text=tuple(r.corrupted_prompt for r in rows),
            metric_kind="logit_diff", accuracy_rule="positive",
            info={"path": str(self.path), "seed": seed, "lines": [r.line for r in rows]},
        )
