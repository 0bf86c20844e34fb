"""Induction: continue a repeated random token segment.

"[bos] A B C D E ... A B C" -> "D".

Algorithm:
  1. Token pool: ``token_ids`` if given, else every non-special id of the tokenizer.
  2. Per example draw a segment of ``segment_len`` distinct pool tokens.
  3. Clean prompt: [bos] + segment + segment[:repeat_len]; answer segment[repeat_len].
  4. Corruption breaks the repeat with fresh pool tokens that do not occur in the
     segment (same length, nothing to copy). ``corrupt="first"`` (default) replaces
     the first occurrence, so the corrupted prompt ends with the same tokens as the
     clean one and only the earlier copy is missing: previous-token heads (which
     write into the first copy) and induction heads both change, and patching sees
     the whole circuit. ``corrupt="second"`` replaces the repeat instead; then the
     first copy, and every layer-0 output on it, is identical in both prompts.
  5. Wrong answer: a pool token outside both prompts, so logit(answer) - logit(wrong)
     measures copying against a generic token. Accuracy is top-1 copy accuracy.
  6. Reference sample for mean ablation: independent clean prompts (seed stream 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from circuits.errors import TaskError
from circuits.tasks.base import TaskData, _hf


def token_pool(tokenizer: Any, token_ids: tuple[int, ...] | None = None) -> np.ndarray:
    """Ids to sample from: ``token_ids`` or every non-special id of ``tokenizer``."""
    if token_ids is not None:
        return np.asarray(sorted({int(t) for t in token_ids}), dtype=np.int32)
    hf = _hf(tokenizer)
    special = {int(i) for i in (getattr(hf, "all_special_ids", None) or [])}
    size = len(hf)
    return np.asarray([i for i in range(size) if i not in special], dtype=np.int32)


def bos_id(tokenizer: Any) -> int | None:
    """The id the tokenizer prepends to a prompt, or None when it prepends nothing."""
    hf = _hf(tokenizer)
    ids = hf.encode("a")
    plain = hf.encode("a", add_special_tokens=False)
    return int(ids[0]) if len(ids) > len(plain) else None


@dataclass(frozen=True)
class InductionTask:
    """Induction task configuration (see module docstring)."""

    name: ClassVar[str] = "induction"
    segment_len: int = 10
    """Length of the random segment that is repeated."""
    repeat_len: int = 5
    """Tokens of the repeat shown before the prediction (1 <= repeat_len < segment_len)."""
    token_ids: tuple[int, ...] | None = None
    """Token pool; None means every non-special token of the tokenizer."""
    corrupt: Literal["first", "second"] = "first"
    """Which occurrence the counterfactual replaces with fresh tokens (see step 4)."""

    def __post_init__(self) -> None:
        if self.corrupt not in ("first", "second"):
            raise TaskError(f"induction corrupt must be 'first' or 'second', got {self.corrupt!r}")
        if self.segment_len < 2 or not 1 <= self.repeat_len < self.segment_len:
            raise TaskError(f"induction needs segment_len >= 2 and 1 <= repeat_len < segment_len; "
                            f"got {self.segment_len}, {self.repeat_len}")

    def words(self) -> tuple[str, ...]:
        """Induction uses the tokenizer's own tokens; it adds no words."""
        return ()

    def sample_ids(self, rng: np.random.Generator, pool: np.ndarray) -> tuple[np.ndarray, ...]:
        """One example: (segment, fresh tokens for the broken repeat, wrong token)."""
        n_fresh = self.segment_len if self.corrupt == "first" else self.repeat_len
        k = self.segment_len + n_fresh + 1
        draw = pool[rng.choice(pool.size, size=k, replace=False)]
        seg, fresh = draw[: self.segment_len], draw[self.segment_len: k - 1]
        return seg, fresh, draw[k - 1]

    def generate(self, n: int, seed: int, tokenizer: Any) -> TaskData:
        """``n`` induction examples with broken-repeat counterfactuals."""
        if n < 1:
            raise TaskError(f"induction: the dataset is empty; ask for n >= 1 examples (got n={n})")
        pool = token_pool(tokenizer, self.token_ids)
        need = 2 * self.segment_len + 1
        if pool.size < need:
            raise TaskError(f"induction needs a pool of at least {need} tokens; got {pool.size}")
        bos = bos_id(tokenizer)
        head = [] if bos is None else [bos]
        rng, m = np.random.default_rng([seed, 0]), self.repeat_len
        clean, corr, ans, wrong = [], [], [], []
        for _ in range(n):
            seg, fresh, w = self.sample_ids(rng, pool)
            clean.append(np.array([*head, *seg, *seg[:m]]))
            if self.corrupt == "first":
                corr.append(np.array([*head, *fresh, *seg[:m]]))
            else:
                corr.append(np.array([*head, *seg, *fresh]))
            ans.append(seg[m])
            wrong.append(w)
        ref_rng = np.random.default_rng([seed, 1])
        ref = []
        for _ in range(n):
            seg, _, _ = self.sample_ids(ref_rng, pool)
            ref.append(np.array([*head, *seg, *seg[:m]]))
        hf = _hf(tokenizer)
        return TaskData(
            task=self.name, clean=clean, corrupted=corr, answer=np.array(ans),
            wrong=np.array(wrong), reference=ref,
            clean_text=tuple(hf.decode(c.tolist()) for c in clean),
            corrupted_text=tuple(hf.decode(c.tolist()) for c in corr),
            metric_kind="logit_diff", accuracy_rule="top1",
            info={"config": {"segment_len": self.segment_len, "repeat_len": m,
                             "corrupt": self.corrupt},
                  "seed": seed, "n": n, "pool_size": int(pool.size)},
        )
