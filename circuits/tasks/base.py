"""Task data, metrics and tokenizer checks shared by every benchmark task.

A task is a frozen config whose ``generate(n, seed, tokenizer)`` returns a
``TaskData``: clean and counterfactual prompts as token ids, answer ids, a
metric and a mean-ablation reference sample.

Algorithm (what ``generate`` implementations follow):
  1. Draw ``n`` examples from a seeded ``numpy`` generator (reproducible).
  2. Tokenize clean and corrupted prompts with the model's tokenizer (BOS added
     the way the tokenizer adds it) and answers as single continuation tokens.
  3. Build ``TaskData``; its ``__post_init__`` checks, before any model work,
     that the dataset is non-empty, that every clean/corrupted pair has the same
     token length, and that every array has one entry per example.
  4. Metrics are pure functions of last-position logits [B, V]; ``TaskData``
     groups examples by length (``batches``) so callers run rectangular arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple
from collections.abc import Callable, Sequence

import numpy as np

import attribution  # noqa: F401  (optimised BLAS before mlx)
import mlx.core as mx

from circuits.errors import TaskError

MetricKind = Literal["logit_diff", "prob", "kl", "prob_diff"]
METRIC_KINDS: tuple[str, ...] = ("logit_diff", "prob", "kl", "prob_diff")


# ---------------------------------------------------------------- metrics ----
def logit_diff(logits: mx.array, answer: mx.array, wrong: mx.array) -> mx.array:
    """logit[answer] - logit[wrong] per example; logits [B,V], ids [B] -> [B]."""
    a = mx.take_along_axis(logits, answer.reshape(-1, 1), axis=-1)[:, 0]
    w = mx.take_along_axis(logits, wrong.reshape(-1, 1), axis=-1)[:, 0]
    return a - w


def answer_prob(logits: mx.array, answer: mx.array) -> mx.array:
    """Softmax probability of the answer token per example; [B,V], [B] -> [B]."""
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return mx.exp(mx.take_along_axis(logp, answer.reshape(-1, 1), axis=-1)[:, 0])


def kl_to_clean(logits: mx.array, clean_logits: mx.array) -> mx.array:
    """KL(clean || current) per example over the full vocabulary; [B,V] x2 -> [B].

    Zero when the logits equal the clean ones; larger is further from clean.
    """
    lp = clean_logits - mx.logsumexp(clean_logits, axis=-1, keepdims=True)
    lq = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return mx.sum(mx.exp(lp) * (lp - lq), axis=-1)


def prob_diff(logits: mx.array, ids: mx.array, signs: mx.array) -> mx.array:
    """sum_k signs[b,k] * p[b, ids[k]] (greater-than: P(>YY) - P(<=YY)); -> [B]."""
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    p = mx.exp(logp[:, ids])
    return mx.sum(p * signs, axis=-1)


# ------------------------------------------------------------- tokenizers ----
def _hf(tokenizer: Any) -> Any:
    """The Hugging Face tokenizer inside an mlx-lm ``TokenizerWrapper`` (or itself)."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    return tokenizer._tokenizer if isinstance(tokenizer, TokenizerWrapper) else tokenizer


def encode(tokenizer: Any, text: str) -> np.ndarray:
    """Token ids of a prompt, special tokens (BOS) added as the tokenizer does."""
    return np.asarray(_hf(tokenizer).encode(text), dtype=np.int32)


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a continuation, without special tokens."""
    return list(_hf(tokenizer).encode(text, add_special_tokens=False))


def single_token(tokenizer: Any, word: str, where: str = "") -> int:
    """Id of ``word`` as one continuation token (a leading space is added unless
    present, as a continuation word follows a space); ``TaskError`` otherwise."""
    text = word if word[:1].isspace() else " " + word
    ids = encode_plain(tokenizer, text)
    if len(ids) != 1:
        at = f" ({where})" if where else ""
        raise TaskError(
            f"answer {word!r}{at} is not a single token: it tokenizes to {len(ids)} tokens "
            f"{ids}; use answers that are one token in this model's vocabulary"
        )
    unk = getattr(_hf(tokenizer), "unk_token_id", None)
    if unk is not None and ids[0] == unk:
        raise TaskError(f"answer {word!r}{' (' + where + ')' if where else ''} is not in the "
                        "tokenizer's vocabulary (it maps to the unknown token)")
    return int(ids[0])


# ------------------------------------------------------------------- data ----
class TaskBatch(NamedTuple):
    """Examples of one token length, as rectangular arrays."""

    index: np.ndarray
    """[b] positions of these examples in the ``TaskData``."""
    clean: mx.array
    """[b, T] int32 clean prompt ids."""
    corrupted: mx.array
    """[b, T] int32 counterfactual prompt ids."""
    answer: mx.array
    """[b] int32 correct answer ids."""
    wrong: mx.array
    """[b] int32 incorrect answer ids."""
    signs: mx.array | None
    """[b, K] float32 signs over ``TaskData.score_ids`` (``prob_diff`` only)."""


class TaskScore(NamedTuple):
    """A model's score on a task dataset."""

    metric: float
    """Mean metric over examples (clean prompts)."""
    accuracy: float
    """Fraction of examples solved (see ``TaskData.accuracy_rule``)."""
    per_example: np.ndarray
    """[N] metric per example, in dataset order."""


def _as_tokens(seqs: Sequence[Any]) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(s, dtype=np.int32).reshape(-1) for s in seqs)


@dataclass(frozen=True)
class TaskData:
    """One generated task dataset; validated on construction."""

    task: str
    """Name of the task that produced it."""
    clean: tuple[np.ndarray, ...]
    """N clean prompts, each [T_i] int32 (BOS included)."""
    corrupted: tuple[np.ndarray, ...]
    """N counterfactual prompts, each the same length as its clean prompt."""
    answer: np.ndarray
    """[N] int32 correct answer token ids."""
    wrong: np.ndarray
    """[N] int32 incorrect answer token ids (the logit-difference baseline)."""
    reference: tuple[np.ndarray, ...]
    """Prompts drawn independently from the task distribution, for mean ablation."""
    clean_text: tuple[str, ...] = ()
    """Clean prompts as text (for display; may be empty)."""
    corrupted_text: tuple[str, ...] = ()
    """Counterfactual prompts as text (for display; may be empty)."""
    metric_kind: MetricKind = "logit_diff"
    """Default metric: logit_diff, prob (answer probability), kl (KL to clean) or prob_diff."""
    accuracy_rule: Literal["positive", "top1"] = "positive"
    """positive: logit_diff (or prob_diff) > 0; top1: the answer is the argmax token."""
    score_ids: np.ndarray | None = None
    """[K] token ids scored by ``prob_diff`` (greater-than: the 100 year tokens)."""
    score_signs: np.ndarray | None = None
    """[N, K] +1/-1 signs over ``score_ids`` per example (``prob_diff`` only)."""
    info: dict = field(default_factory=dict)
    """Task config and seed, for provenance."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "clean", _as_tokens(self.clean))
        object.__setattr__(self, "corrupted", _as_tokens(self.corrupted))
        object.__setattr__(self, "reference", _as_tokens(self.reference))
        object.__setattr__(self, "answer", np.asarray(self.answer, dtype=np.int32).reshape(-1))
        object.__setattr__(self, "wrong", np.asarray(self.wrong, dtype=np.int32).reshape(-1))
        n = len(self.clean)
        if n == 0:
            raise TaskError(f"task {self.task!r}: the dataset is empty; ask for n >= 1 examples "
                            "(or give a file with at least one row)")
        for name in ("corrupted", "answer", "wrong"):
            if len(getattr(self, name)) != n:
                raise TaskError(f"task {self.task!r}: {len(getattr(self, name))} {name} entries "
                                f"for {n} clean prompts")
        for i, (c, k) in enumerate(zip(self.clean, self.corrupted)):
            if c.shape != k.shape:
                txt = ""
                if self.clean_text and self.corrupted_text:
                    txt = f": {self.clean_text[i]!r} vs {self.corrupted_text[i]!r}"
                raise TaskError(f"task {self.task!r}, example {i}: clean prompt has {c.size} "
                                f"tokens but corrupted prompt has {k.size}{txt}; counterfactual "
                                "prompts must tokenize to the same length")
        if self.metric_kind not in METRIC_KINDS:
            raise TaskError(f"unknown metric {self.metric_kind!r}; expected one of {METRIC_KINDS}")
        if self.metric_kind == "prob_diff" and (self.score_ids is None or self.score_signs is None):
            raise TaskError("metric 'prob_diff' needs score_ids and score_signs")

    def __len__(self) -> int:
        return len(self.clean)

    def with_metric(self, kind: MetricKind) -> TaskData:
        """The same data scored with another metric (``logit_diff``, ``prob``, ``kl``...)."""
        return replace(self, metric_kind=kind)

    def subset(self, index: Sequence[int]) -> TaskData:
        """The examples at ``index`` (reference sample kept whole)."""
        ix = [int(i) for i in index]
        pick = lambda t: tuple(t[i] for i in ix) if t else t
        signs = None if self.score_signs is None else self.score_signs[ix]
        return replace(self, clean=pick(self.clean), corrupted=pick(self.corrupted),
                       answer=self.answer[ix], wrong=self.wrong[ix], score_signs=signs,
                       clean_text=pick(self.clean_text), corrupted_text=pick(self.corrupted_text))

    def batches(self, batch_size: int | None = None) -> list[TaskBatch]:
        """Examples grouped by token length (first-seen order), split to ``batch_size``."""
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(self.clean):
            groups.setdefault(c.size, []).append(i)
        out = []
        for idx in groups.values():
            step = batch_size or len(idx)
            for s in range(0, len(idx), step):
                ix = np.asarray(idx[s:s + step])
                signs = None if self.score_signs is None else mx.array(
                    self.score_signs[ix].astype(np.float32))
                out.append(TaskBatch(
                    ix, mx.array(np.stack([self.clean[i] for i in ix])),
                    mx.array(np.stack([self.corrupted[i] for i in ix])),
                    mx.array(self.answer[ix]), mx.array(self.wrong[ix]), signs))
        return out

    def metric(self, logits: mx.array, batch: TaskBatch, clean_logits: mx.array | None = None,
               kind: MetricKind | None = None) -> mx.array:
        """Metric per example of ``batch`` from last-position logits [b, V] -> [b]."""
        kind = kind or self.metric_kind
        if logits.ndim == 3:  # accept full [b,T,V] logits; the metric reads the last position
            logits = logits[:, -1]
        if kind == "logit_diff":
            return logit_diff(logits, batch.answer, batch.wrong)
        if kind == "prob":
            return answer_prob(logits, batch.answer)
        if kind == "prob_diff":
            if batch.signs is None:
                raise TaskError("metric 'prob_diff' needs score signs; this task has none")
            return prob_diff(logits, mx.array(self.score_ids), batch.signs)
        if kind == "kl":
            if clean_logits is None:
                raise TaskError("metric 'kl' needs the clean logits (clean_logits=...)")
            if clean_logits.ndim == 3:
                clean_logits = clean_logits[:, -1]
            return kl_to_clean(logits, clean_logits)
        raise TaskError(f"unknown metric {kind!r}; expected one of {METRIC_KINDS}")

    def solved(self, logits: mx.array, batch: TaskBatch) -> mx.array:
        """[b] bool: example solved under ``accuracy_rule`` (last-position logits)."""
        if logits.ndim == 3:
            logits = logits[:, -1]
        if self.accuracy_rule == "top1":
            return mx.argmax(logits, axis=-1) == batch.answer
        kind = "prob_diff" if self.metric_kind == "prob_diff" else "logit_diff"
        return self.metric(logits, batch, kind=kind) > 0


def score(data: TaskData, forward: Callable[[mx.array], mx.array],
          batch_size: int | None = 256) -> TaskScore:
    """Mean metric and accuracy of ``forward`` (tokens [B,T] -> logits [B,T,V]) on clean prompts."""
    per = np.zeros(len(data), dtype=np.float64)
    ok = np.zeros(len(data), dtype=bool)
    for b in data.batches(batch_size):
        logits = forward(b.clean)[:, -1]
        clean_logits = logits if data.metric_kind == "kl" else None
        m, s = data.metric(logits, b, clean_logits=clean_logits), data.solved(logits, b)
        mx.eval(m, s)
        per[b.index], ok[b.index] = np.array(m), np.array(s)
    return TaskScore(float(per.mean()), float(ok.mean()), per)
