"""Text corpora for training dictionaries: files, tasks, or an organism's own mixture.

Algorithm (``corpus_texts``):
  1. A path (.txt/.jsonl/.parquet) streams through ``sae.data.harvest.read_texts``.
  2. ``task:NAME`` renders that task's clean prompts with the model's tokenizer.
  3. ``organism`` (the default for shipped organisms) draws documents from the
     organism's training mixture with a fixed seed and decodes them to text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from circuits.errors import CircuitsError


class CorpusError(CircuitsError, ValueError):
    """The corpus specification cannot be used with this model."""


def organism_recipe(model):
    """The organism recipe a model directory was trained from, or None."""
    from circuits.organisms.recipes import RECIPES

    card = Path(str(getattr(model, "path", ""))) / "card.json"
    if not card.is_file():
        return None
    name = json.loads(card.read_text()).get("name")
    return RECIPES.get(name)


def organism_texts(model, n_docs: int, seed: int = 1) -> list[str]:
    """``n_docs`` documents from the organism's own training mixture, as text."""
    from circuits.organisms.corpus import CorpusSampler

    recipe = organism_recipe(model)
    if recipe is None:
        raise CorpusError(
            f"{getattr(model, 'path', 'this model')} is not a shipped organism; pass a corpus "
            "with --corpus FILE (.txt, .jsonl or .parquet) or --corpus task:ioi"
        )
    sampler = CorpusSampler(recipe, model.tokenizer, seed)
    bos = model.tokenizer.bos_token_id
    out = []
    for _ in range(n_docs):
        ids = [int(i) for i in sampler.document() if int(i) != bos]
        out.append(model.tokenizer.decode(ids, skip_special_tokens=True))
    return out


def task_texts(model, name: str, n_docs: int, seed: int = 1) -> list[str]:
    """Clean prompts of a task, decoded to text."""
    from circuits import tasks

    data = tasks.get(name).generate(n_docs, seed, model.tokenizer)
    bos = model.tokenizer.bos_token_id
    return [model.tokenizer.decode([int(i) for i in row if int(i) != bos], skip_special_tokens=True)
            for row in data.clean]


def corpus_texts(model, spec: str | None, n_docs: int, seed: int = 1) -> Iterator[str] | list[str]:
    """Texts for ``spec``: a file path, ``task:NAME``, or None/``organism``."""
    if spec in (None, "", "organism"):
        return organism_texts(model, n_docs, seed)
    if spec.startswith("task:"):
        return task_texts(model, spec.split(":", 1)[1], n_docs, seed)
    from sae.data.harvest import read_texts

    if not Path(spec).exists():
        raise CorpusError(f"corpus file {spec} does not exist (use a .txt, .jsonl or .parquet path, "
                          "task:NAME, or organism)")
    return read_texts(spec)
