"""Which prompt a command works on, and what its target is: one place, no silent defaults.

Algorithm (``resolve_prompt``):
  1. ``--prompt TEXT`` is a free prompt on any model. Its target is the model's
     own top logits, or ``logit(--answer) − logit(--wrong)`` when both are given;
     ``--counterfactual TEXT`` (same token length) is its corrupted prompt.
     ``--prompt`` together with ``--task`` is refused: one source per run.
  2. ``--task NAME|FILE --example N`` is row N (0-based) of the task: line order
     for a user file (blank lines skipped), the N-th example of the seed-0
     stream for a built-in task (that stream is prefix-stable, so row N never
     depends on how many rows are drawn). A row past the end is an error naming
     the number of rows.
  3. With neither, a shipped model organism uses its first task (its card lists
     them); any other model is refused with the two ways to give a prompt —
     a user's model never silently gets the built-in IOI task.
  4. Every prompt (clean and corrupted) is checked for the tokenizer's unknown
     token: a prompt with ``<unk>`` would attribute a different text.
  5. ``PromptSpec.record()`` is what graph metadata stores (source, example,
     clean and corrupted ids, answer and wrong ids, target kind and label), and
     what ``validate`` compares a circuit against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from circuits.cli._common import CLIError


@dataclass(frozen=True)
class PromptSpec:
    """One prompt, its counterfactual and its target, with where they came from."""

    clean: tuple[int, ...]
    """Clean prompt token ids (BOS as the tokenizer adds it)."""
    corrupted: tuple[int, ...] | None
    """Counterfactual prompt ids (same length), or None."""
    answer: int | None
    """Answer token id of a logit-difference target, or None for top logits."""
    wrong: int | None
    """Wrong-answer token id of a logit-difference target, or None."""
    source: dict = field(default_factory=dict)
    """Where the prompt came from: kind (task or prompt), task, task_file, example, line, text."""
    target_label: str = "top logits"
    """Human-readable target, e.g. logit(" Kate") − logit(" Anna")."""

    @property
    def target_kind(self) -> str:
        """``logit_diff`` or ``top_logits``."""
        return "logit_diff" if self.answer is not None else "top_logits"

    def record(self) -> dict:
        """JSON-ready description stored in graph metadata (``prompt_source``)."""
        return {**self.source, "clean_ids": list(self.clean),
                "corrupted_ids": None if self.corrupted is None else list(self.corrupted),
                "answer_id": self.answer, "wrong_id": self.wrong,
                "target": {"kind": self.target_kind, "label": self.target_label}}


def add_prompt_args(p, example_help: str = "row of --task (0-based)") -> None:
    """--prompt, --answer, --wrong, --counterfactual, --task and --example."""
    from circuits.cli._common import nonneg_int

    p.add_argument("--prompt", default=None, help="a free prompt (any model); target: top logits "
                   "or --answer/--wrong")
    p.add_argument("--answer", default=None, help="with --prompt: the correct next token")
    p.add_argument("--wrong", default=None, help="with --prompt: the wrong next token (logit difference)")
    p.add_argument("--counterfactual", default=None,
                   help="with --prompt: the corrupted prompt (same token length) for counterfactual ablation")
    p.add_argument("--task", default=None,
                   help="built-in task (ioi, induction, greater_than) or a .jsonl/.csv task file "
                        "(default: a shipped organism's first task)")
    p.add_argument("--example", type=nonneg_int, default=None, help=example_help)


def organism_tasks(model) -> list[str]:
    """Tasks listed in a shipped organism's card (empty for any other model)."""
    path = getattr(model, "path", None)
    card = Path(path) / "card.json" if path else None
    if card is None or not card.is_file():
        return []
    try:
        tasks = json.loads(card.read_text()).get("tasks") or {}
    except (OSError, ValueError):
        return []
    return list(tasks)


def _decode(model, ids) -> str:
    return "".join(model.to_str_tokens([int(i) for i in ids]))


def label(model, answer: int | None, wrong: int | None) -> str:
    """``logit(" Kate") − logit(" Anna")`` or ``top logits``."""
    if answer is None:
        return "top logits"
    return f"logit({_decode(model, [answer])!r}) − logit({_decode(model, [wrong])!r})".replace("'", '"')


def check_known(model, ids, what: str) -> None:
    """Refuse ids that contain the tokenizer's unknown token (step 4)."""
    from circuits.tasks.base import _hf

    unk = getattr(_hf(model.tokenizer), "unk_token_id", None)
    if unk is None:
        return
    bad = [i for i, t in enumerate(ids) if int(t) == int(unk)]
    if bad:
        raise CLIError(f"{what} contains words this model's tokenizer does not know (unknown token at "
                       f"position(s) {', '.join(map(str, bad[:8]))}); use words from its vocabulary")


def _encode(model, text: str, what: str) -> tuple[int, ...]:
    from circuits.tasks.base import encode

    if not text.strip():
        raise CLIError(f"{what} is empty; give some text")
    ids = tuple(int(t) for t in encode(model.tokenizer, text))
    if not ids:
        raise CLIError(f"{what} {text!r} tokenizes to nothing; give some text")
    check_known(model, ids, f"{what} {text!r}")
    return ids


def free_prompt(model, text: str, answer: str | None, wrong: str | None,
                counterfactual: str | None) -> PromptSpec:
    """A free ``--prompt`` (step 1)."""
    from circuits.errors import TaskError
    from circuits.tasks.base import single_token

    if (answer is None) != (wrong is None):
        raise CLIError("--answer and --wrong go together (the target is logit(answer) − logit(wrong)); "
                       "give both, or neither for the top logits")
    clean = _encode(model, text, "--prompt")
    corr = None
    if counterfactual is not None:
        corr = _encode(model, counterfactual, "--counterfactual")
        if len(corr) != len(clean):
            raise CLIError(f"--counterfactual has {len(corr)} tokens but --prompt has {len(clean)}; "
                           "they must tokenize to the same length")
    a = w = None
    if answer is not None:
        try:
            a = single_token(model.tokenizer, answer, "--answer")
            w = single_token(model.tokenizer, wrong, "--wrong")
        except TaskError as exc:
            raise CLIError(str(exc)) from None
        if a == w:
            raise CLIError(f"--answer and --wrong are the same token ({answer!r}); the difference would be 0")
    return PromptSpec(clean, corr, a, w, {"kind": "prompt", "text": text, "counterfactual_text": counterfactual},
                      label(model, a, w))


def task_row(model, task: str, example: int) -> PromptSpec:
    """Row ``example`` of ``task`` (step 2)."""
    from circuits import tasks
    from circuits.tasks.user import UserTask, read_rows

    t = tasks.get(task)
    if isinstance(t, UserTask):
        rows = read_rows(t.path)
        if example >= len(rows):
            raise CLIError(f"--example {example} is past the end of {t.path}: it has {len(rows)} rows "
                           f"(0..{len(rows) - 1})")
        data, i = t.row(example, model.tokenizer), 0
        src = {"kind": "task", "task": "user", "task_file": str(Path(t.path).resolve()),
               "example": example, "line": rows[example].line}
    else:
        data, i = t.generate(example + 1, 0, model.tokenizer), example
        src = {"kind": "task", "task": t.name, "task_file": None, "example": example, "seed": 0}
    clean = tuple(int(x) for x in data.clean[i])
    corr = tuple(int(x) for x in data.corrupted[i])
    check_known(model, clean, f"task {task} row {example}")
    check_known(model, corr, f"task {task} row {example} (corrupted prompt)")
    a, w = int(data.answer[i]), int(data.wrong[i])
    src["text"] = model.tokenizer.decode(list(clean))
    return PromptSpec(clean, corr, a, w, src, label(model, a, w))


def resolve_prompt(args, model) -> PromptSpec:
    """The prompt of a command (module docstring)."""
    prompt = getattr(args, "prompt", None)
    task = getattr(args, "task", None)
    example = getattr(args, "example", None)
    if prompt is not None:
        if task is not None or example is not None:
            raise CLIError("--prompt and --task/--example both given; use --prompt for a free prompt, "
                           "or --task with --example for a task row")
        return free_prompt(model, prompt, args.answer, args.wrong, getattr(args, "counterfactual", None))
    for flag in ("answer", "wrong", "counterfactual"):
        if getattr(args, flag, None) is not None:
            raise CLIError(f"--{flag} belongs to a free --prompt; a task row brings its own")
    if task is None:
        own = organism_tasks(model)
        if not own:
            raise CLIError(f"no prompt given for model {model.path}: pass --prompt TEXT (any model), "
                           "or --task FILE.jsonl --example N")
        task = own[0]
    return task_row(model, task, 0 if example is None else example)
