"""Greater-than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17".

The model should put its probability on two-digit years YY' > 32.

Algorithm:
  1. Find how the tokenizer splits a year: "17YY" as " 17" + "YY" (GPT-2 style
     BPE), or, for word-level tokenizers, the spaced form "17 YY" so that "17" and
     the two-digit "YY" are separate tokens. Keep the mode with more single-token
     YY values; the year tokens are the ids of "00".."99" as continuations of "17".
  2. Per example pick a template, a noun and YY in [yy_min, yy_max].
  3. Clean prompt: the template with century + YY, ending with the century.
  4. Corruption: the same prompt with YY = ``corrupt_yy`` (01), so every year is
     "greater" and the task signal disappears.
  5. Metric (prob_diff): sum p(YY' > YY) - sum p(YY' <= YY) over the year tokens,
     with full-vocabulary softmax probabilities. Answer/wrong ids (YY+1 / YY)
     are kept for logit-difference callers. Accuracy: metric > 0.
  6. Reference sample for mean ablation: independent clean prompts (seed stream 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from circuits.errors import TaskError
from circuits.tasks.base import TaskData, _hf, encode, encode_plain

TEMPLATES: tuple[str, ...] = (
    "The [NOUN] lasted from the year [C][YY] to the year [C]",
    "The [NOUN] started in the year [C][YY] and ended in the year [C]",
    "The [NOUN] ran from the year [C][YY] until the year [C]",
    "The [NOUN] began in the year [C][YY] and it was over by the year [C]",
)
NOUNS: tuple[str, ...] = (
    "war", "expedition", "siege", "reign", "drought", "journey", "voyage", "strike",
    "campaign", "famine", "dynasty", "occupation", "contract", "project", "festival",
)
_WORD = re.compile(r"\w+|[^\w\s]")


def year_tokens(tokenizer: Any, century: str) -> tuple[str, np.ndarray]:
    """(separator, ids[100]) where ids[yy] is the id of YY after the century, or -1."""
    unk = getattr(_hf(tokenizer), "unk_token_id", None)
    base = encode_plain(tokenizer, f" year {century}")
    best: tuple[str, np.ndarray] | None = None
    for sep in ("", " "):
        ids = np.full(100, -1, dtype=np.int64)
        for yy in range(100):
            t = encode_plain(tokenizer, f" year {century}{sep}{yy:02d}")
            if len(t) == len(base) + 1 and t[: len(base)] == base and t[-1] != unk:
                ids[yy] = t[-1]
        if best is None or (ids >= 0).sum() > (best[1] >= 0).sum():
            best = (sep, ids)
    assert best is not None
    return best


@dataclass(frozen=True)
class GreaterThanTask:
    """Greater-than task configuration (see module docstring)."""

    name: ClassVar[str] = "greater_than"
    templates: tuple[str, ...] = TEMPLATES
    """Templates with [NOUN], [C] (century, twice) and [YY]; each ends with [C]."""
    nouns: tuple[str, ...] = NOUNS
    """Event nouns for [NOUN]."""
    century: str = "17"
    """The century prefix, identical in start and end year."""
    yy_min: int = 2
    """Smallest start YY (so that some years are <= YY)."""
    yy_max: int = 98
    """Largest start YY (so that some years are > YY)."""
    corrupt_yy: int = 1
    """YY of the counterfactual prompt."""

    def __post_init__(self) -> None:
        if not 0 <= self.yy_min <= self.yy_max <= 98 or not 0 <= self.corrupt_yy <= 99:
            raise TaskError(f"greater-than needs 0 <= yy_min <= yy_max <= 98 and 0 <= corrupt_yy "
                            f"<= 99; got {self.yy_min}, {self.yy_max}, {self.corrupt_yy}")
        for t in self.templates:
            if not t.endswith("[C]") or t.count("[YY]") != 1:
                raise TaskError(f"greater-than template must hold one [YY] and end with [C]: {t!r}")
        if not self.nouns:
            raise TaskError("greater-than needs at least one noun")

    def words(self) -> tuple[str, ...]:
        """Template words, nouns, the century and the 100 two-digit years (word-level form)."""
        text = " ".join(self.templates).replace("[", " ").replace("]", " ")
        tpl = [w for w in _WORD.findall(text) if w not in ("NOUN", "C", "YY")]
        return tuple(dict.fromkeys([*tpl, *self.nouns, self.century,
                                    *(f"{y:02d}" for y in range(100))]))

    def render(self, template: str, noun: str, yy: int, sep: str) -> str:
        """Prompt text for one example; ``sep`` separates century and YY."""
        return (template.replace("[NOUN]", noun).replace("[YY]", f"{sep}{yy:02d}")
                .replace("[C]", self.century))

    def generate(self, n: int, seed: int, tokenizer: Any) -> TaskData:
        """``n`` greater-than examples with YY=01 counterfactuals."""
        if n < 1:
            raise TaskError(f"greater-than: the dataset is empty; ask for n >= 1 examples (got n={n})")
        sep, ids = year_tokens(tokenizer, self.century)
        valid = np.flatnonzero(ids >= 0)
        choices = [y for y in range(self.yy_min, self.yy_max + 1) if ids[y] >= 0 and ids[y + 1] >= 0]
        if valid.size < 50 or not choices or ids[self.corrupt_yy] < 0:
            raise TaskError(f"greater-than: only {valid.size} of the 100 two-digit years after "
                            f"{self.century!r} are single tokens in this tokenizer (need 50, and "
                            f"YY={self.corrupt_yy:02d}); use a tokenizer that splits years")
        rng, ref_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])

        def draw(r: np.random.Generator) -> tuple[str, str, int]:
            return (self.templates[r.integers(len(self.templates))],
                    self.nouns[r.integers(len(self.nouns))], int(choices[r.integers(len(choices))]))

        exs = [draw(rng) for _ in range(n)]
        clean_t = tuple(self.render(t, nn, yy, sep) for t, nn, yy in exs)
        corr_t = tuple(self.render(t, nn, self.corrupt_yy, sep) for t, nn, _ in exs)
        yys = np.array([yy for _, _, yy in exs])
        score_ids = ids[valid].astype(np.int32)
        signs = np.where(valid[None, :] > yys[:, None], 1.0, -1.0).astype(np.float32)
        return TaskData(
            task=self.name, clean=[encode(tokenizer, t) for t in clean_t],
            corrupted=[encode(tokenizer, t) for t in corr_t],
            answer=ids[yys + 1], wrong=ids[yys],
            reference=[encode(tokenizer, self.render(*draw(ref_rng), sep)) for _ in range(n)],
            clean_text=clean_t, corrupted_text=corr_t, metric_kind="prob_diff",
            accuracy_rule="positive", score_ids=score_ids, score_signs=signs,
            info={"config": {"century": self.century, "separator": sep}, "seed": seed, "n": n,
                  "yy": yys.tolist()},
        )
