"""Text corpora for training dictionaries: files, tasks, or an organism's own mixture.

A corpus spec is exactly one of: ``organism`` (or None), ``task:NAME``, or a file path.
Every other string is a path, whatever its suffix.

Algorithm (``corpus_texts``):
  1. ``check_corpus`` validates the spec without a model (cheap; callers run it before
     loading anything): an empty spec, an empty task name, and a missing path or a
     directory are errors naming the problem.
  2. A path is read through ``sae.data.harvest.read_texts``: .jsonl/.ndjson/.json/.parquet
     (suffix compared case-insensitively) as a table with a ``text`` column; any other
     file (.txt, .md, .csv, .TXT, no suffix) as UTF-8 text, one document per non-blank
     line. It is read in full here, so a bad file fails before any model work, and a file
     without a single document is an error.
  3. ``task:NAME`` renders that task's clean prompts with the model's tokenizer.
  4. ``organism`` (the default for shipped organisms) draws documents from the
     organism's training mixture with a fixed seed and decodes them to text.
"""

from __future__ import annotations

import json
from pathlib import Path

from circuits.errors import CircuitsError

_FIX = "give a text file (.txt, .md, .jsonl, .parquet, ...), task:NAME, or organism"


class CorpusError(CircuitsError, ValueError):
    """The corpus specification cannot be used with this model."""


def organism_recipe(model):
    """The organism recipe a model directory was trained from, or None."""
    from circuits.organisms.recipes import RECIPES

    card = Path(str(getattr(model, "path", ""))) / "card.json"
    if not card.is_file():
        return None
    try:
        name = json.loads(card.read_text()).get("name")
    except (ValueError, AttributeError):  # a card that is not a JSON object: not an organism
        return None
    return RECIPES.get(name)


def organism_texts(model, n_docs: int, seed: int = 1) -> list[str]:
    """``n_docs`` documents from the organism's own training mixture, as text."""
    from circuits.organisms.corpus import CorpusSampler

    recipe = organism_recipe(model)
    if recipe is None:
        raise CorpusError(
            f"{getattr(model, 'path', 'this model')} is not a shipped organism; pass a corpus "
            "with --corpus FILE (.txt, .jsonl, .parquet, ...) or --corpus task:ioi"
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


def corpus_kind(spec: str | None) -> str:
    """"organism", "task" or "file" (after ``check_corpus``)."""
    if spec is None or spec == "organism":
        return "organism"
    return "task" if spec.startswith("task:") else "file"


def check_corpus(spec) -> None:
    """Raise ``CorpusError`` for a spec that cannot work with any model (step 1)."""
    if spec is None:
        return
    if not isinstance(spec, str):
        raise CorpusError(f"--corpus must be a string (a file path, task:NAME or organism), "
                          f"got {spec!r}")
    if not spec.strip():
        raise CorpusError(f"--corpus is empty; {_FIX}")
    kind = corpus_kind(spec)
    if kind == "task" and not spec.split(":", 1)[1].strip():
        raise CorpusError("--corpus task: names no task; give e.g. task:ioi")
    if kind == "file":
        p = Path(spec).expanduser()
        if not p.exists():
            raise CorpusError(f"corpus file {spec} does not exist; {_FIX}")
        if p.is_dir():
            raise CorpusError(f"corpus {spec} is a directory; {_FIX}")


def corpus_identity(spec) -> str:
    """The spec as recorded in checkpoints: files as absolute paths (cwd-independent)."""
    if corpus_kind(spec) == "file":
        return str(Path(spec).expanduser().resolve())
    return "organism" if spec is None else spec


def corpus_texts(model, spec: str | None, n_docs: int, seed: int = 1) -> list[str]:
    """Texts for ``spec``: a file path, ``task:NAME``, or None/``organism``."""
    from sae.errors import FormatError

    check_corpus(spec)
    kind = corpus_kind(spec)
    if kind == "organism":
        return organism_texts(model, n_docs, seed)
    if kind == "task":
        return task_texts(model, spec.split(":", 1)[1].strip(), n_docs, seed)
    from sae.data.harvest import read_texts

    try:
        texts = list(read_texts(Path(spec).expanduser()))
    except FormatError as e:
        raise CorpusError(f"corpus {e}") from None
    if not texts:
        raise CorpusError(f"corpus file {spec} holds no text (no non-blank line or row); {_FIX}")
    return texts
