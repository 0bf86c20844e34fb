"""Benchmark tasks: clean/counterfactual prompts, answers, metrics.

Look a task up by name with ``get(name)`` ("ioi", "induction", "greater_than"),
or pass a ``.jsonl``/``.csv`` path for a user task; then
``task.generate(n, seed, tokenizer)`` returns a validated ``TaskData``.

Algorithm of ``get``:
  1. Normalise the name (case, "-" -> "_").
  2. A built-in name returns its config, with keyword overrides applied.
  3. A name ending in .jsonl/.json/.csv returns a ``UserTask`` for that file.
  4. Anything else raises ``TaskError`` listing the known names.
"""

from __future__ import annotations

from typing import Any, Protocol

from circuits.errors import TaskError
from circuits.tasks.base import (
    METRIC_KINDS, TaskBatch, TaskData, TaskScore, answer_prob, kl_to_clean, logit_diff,
    prob_diff, score,
)
from circuits.tasks.greater_than import GreaterThanTask
from circuits.tasks.induction import InductionTask
from circuits.tasks.ioi import IOITask
from circuits.tasks.user import UserRow, UserTask, read_rows


class Task(Protocol):
    """What every task config provides."""

    name: str

    def generate(self, n: int, seed: int, tokenizer: Any) -> TaskData:
        """A validated dataset of ``n`` examples drawn with ``seed``."""
        ...

    def words(self) -> tuple[str, ...]:
        """Words the task produces (to build word-level vocabularies)."""
        ...


_REGISTRY = {"ioi": IOITask, "induction": InductionTask, "greater_than": GreaterThanTask}
_ALIASES = {"greaterthan": "greater_than", "gt": "greater_than"}


def names() -> tuple[str, ...]:
    """Names of the built-in tasks."""
    return tuple(_REGISTRY)


def get(name: str, **overrides: Any) -> Task:
    """The task called ``name`` (built-in, or a user .jsonl/.csv path), with config overrides."""
    if not isinstance(name, str) or not name.strip():
        raise TaskError(f"task name must be a non-empty string, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key in _REGISTRY:
        try:
            return _REGISTRY[key](**overrides)
        except TypeError as e:
            raise TaskError(f"bad option for task {key!r}: {e}") from None
    if key.endswith((".jsonl", ".json", ".csv", ".ndjson")):
        return from_file(name.strip())
    raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(_REGISTRY)} "
                    "(or a path to a .jsonl/.csv file)")


def from_file(path: str) -> UserTask:
    """A user task backed by a JSONL or CSV file; the file is validated at ``generate``."""
    return UserTask(str(path))


__all__ = [
    "METRIC_KINDS", "GreaterThanTask", "IOITask", "InductionTask", "Task", "TaskBatch",
    "TaskData", "TaskError", "TaskScore", "UserRow", "UserTask", "answer_prob", "from_file",
    "get", "kl_to_clean", "logit_diff", "names", "prob_diff", "read_rows", "score",
]
