"""Training corpus for the model organisms: task text mixed with filler sentences.

Algorithm:
  1. For each row draw a document kind from the recipe's mixture weights.
  2. Render the document as token ids, starting with <bos>:
     - ioi: a clean IOI prompt followed by the IO name and " ." (the answer);
     - greater_than: a greater-than prompt followed by a year YY' > YY;
     - induction: a segment of distinct random vocabulary tokens, then the same
       segment again (length drawn from ``induction_len``);
     - filler: a sentence from a small subject-verb-object grammar.
  3. Pad rows to the longest in the batch with <pad>; the loss mask is False on pads.
All draws come from one ``numpy`` generator, so a seed fixes the whole corpus.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from circuits.organisms.recipes import (
    FILLER_OBJECTS, FILLER_SUBJECTS, FILLER_TAILS, FILLER_VERBS, OrganismRecipe,
)
from circuits.tasks import GreaterThanTask, IOITask
from circuits.tasks.base import encode
from circuits.tasks.greater_than import year_tokens
from circuits.tasks.induction import bos_id, token_pool


class Batch(NamedTuple):
    """One training batch."""

    inputs: np.ndarray
    """[B, T] int32 input ids."""
    targets: np.ndarray
    """[B, T] int32 next-token ids."""
    mask: np.ndarray
    """[B, T] float32, 1 where the target is a real token."""


class CorpusSampler:
    """Seeded document sampler for one recipe and tokenizer."""

    def __init__(self, recipe: OrganismRecipe, tokenizer: Any, seed: int):
        self.recipe, self.tok = recipe, tokenizer
        self.rng = np.random.default_rng([seed, 7])
        kinds, weights = zip(*recipe.mixture)
        self.kinds = kinds
        self.p = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.ioi, self.gt = IOITask(), GreaterThanTask()
        self.ioi_names, _ = self.ioi.usable_names(tokenizer)
        self.gt_sep = year_tokens(tokenizer, self.gt.century)[0]
        self.pool = token_pool(tokenizer)
        self.bos = bos_id(tokenizer)
        self.pad = int(tokenizer.pad_token_id)

    def _ioi(self) -> np.ndarray:
        ex = self.ioi.sample(self.rng, self.ioi_names)
        return encode(self.tok, f"{self.ioi.render(ex)} {ex['io']} .")

    def _greater_than(self) -> np.ndarray:
        g, r = self.gt, self.rng
        yy = int(r.integers(g.yy_min, g.yy_max + 1))
        end = int(r.integers(yy + 1, 100))
        text = g.render(g.templates[r.integers(len(g.templates))],
                        g.nouns[r.integers(len(g.nouns))], yy, self.gt_sep)
        return encode(self.tok, f"{text}{self.gt_sep}{end:02d}")

    def _induction(self) -> np.ndarray:
        lo, hi = self.recipe.induction_len
        n = int(self.rng.integers(lo, hi + 1))
        seg = self.pool[self.rng.choice(self.pool.size, size=n, replace=False)]
        head = [] if self.bos is None else [self.bos]
        return np.asarray([*head, *seg, *seg], dtype=np.int32)

    def _filler(self) -> np.ndarray:
        r = self.rng
        words = [FILLER_SUBJECTS[r.integers(len(FILLER_SUBJECTS))],
                 FILLER_VERBS[r.integers(len(FILLER_VERBS))],
                 FILLER_OBJECTS[r.integers(len(FILLER_OBJECTS))],
                 FILLER_TAILS[r.integers(len(FILLER_TAILS))]]
        return encode(self.tok, " ".join(w for w in words if w) + " .")

    def document(self) -> np.ndarray:
        """One document of a kind drawn from the mixture."""
        kind = self.kinds[self.rng.choice(len(self.kinds), p=self.p)]
        return getattr(self, f"_{kind}")()

    def batch(self, size: int) -> Batch:
        """``size`` documents padded into one batch."""
        docs = [self.document() for _ in range(size)]
        t = max(d.size for d in docs) - 1
        inputs = np.full((size, t), self.pad, dtype=np.int32)
        targets = np.full((size, t), self.pad, dtype=np.int32)
        for i, d in enumerate(docs):
            inputs[i, : d.size - 1], targets[i, : d.size - 1] = d[:-1], d[1:]
        return Batch(inputs, targets, (targets != self.pad).astype(np.float32))
