"""Indirect object identification (IOI, Wang et al. 2022).

"Then, Mary and John went to the store. John gave a ring to" -> " Mary".
IO is the name that appears once, S the repeated subject.

Algorithm:
  1. Keep the names that are single tokens in the tokenizer (word-level or BPE).
  2. Per example pick a template (15 BABA templates; with probability
     ``abba_fraction`` the first two names are swapped, the ABBA variant), two
     distinct names IO and S, a place and an object.
  3. Clean prompt: the template with IO/S filled in, cut before the final name.
  4. ABC corruption: the same template, place and object with three names that
     are distinct from each other and from IO and S, so no name repeats.
  5. Answer IO, wrong answer S; metric logit(IO) - logit(S).
  6. Reference sample for mean ablation: independent clean prompts (seed stream 1).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from circuits.errors import TaskError
from circuits.tasks.base import TaskData, _hf, encode, encode_plain

BABA_TEMPLATES: tuple[str, ...] = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to",
)

NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Lisa", "Paul",
    "Kate", "Mark", "Anna", "Peter", "Laura", "David", "Sarah", "Michael", "Emma", "Chris",
    "Jane", "Steve", "Rachel", "Kevin", "Helen", "Brian", "Alice", "Eric", "Rose", "Adam",
    "Grace", "Jack", "Lucy", "Sam", "Ruth", "Joe", "Ellen", "Ben", "Claire", "Tim",
    "Anne", "Frank", "Julia", "Scott", "Diana", "Ryan", "Nancy", "Carl", "Emily", "Gary",
    "Susan", "Roger", "Linda", "Henry", "Karen", "Greg", "Maria", "Jason", "Amber", "Tony",
    "Heather", "Victor", "Monica", "Jeff", "Sharon", "Bill", "Carol", "Ken", "Megan", "Simon",
    "Jessica", "Luke", "Angela", "Matt", "Holly", "Nick", "Alex", "Jordan", "Kelly", "Fred",
    "Joan", "Max", "Sophie", "Ian", "Beth", "Neil", "Tina", "Leo", "Paula", "Oscar",
    "Eva", "Hugo", "Iris", "Noah", "Ella", "Owen", "Ava", "Ray", "Nina", "Carter",
)
PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
    "park", "library", "market", "beach", "church", "museum", "bank", "cafe", "hotel",
    "theater", "farm", "airport",
)
OBJECTS: tuple[str, ...] = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
    "book", "letter", "cake", "key", "phone", "bag", "hat", "ticket", "flower", "pen",
    "gift", "candle",
)

_WORD = re.compile(r"\w+|[^\w\s]")


def _fill(template: str, names: dict[str, str], place: str, obj: str) -> str:
    out = template.replace("[PLACE]", place).replace("[OBJECT]", obj)
    out = out.replace("[A]", names["A"])
    # The first [B] may differ from the second under ABC corruption.
    first, rest = out.split("[B]", 1)
    return first + names["B1"] + rest.replace("[B]", names["B2"])


@dataclass(frozen=True)
class IOITask:
    """IOI task configuration (see module docstring)."""

    name: ClassVar[str] = "ioi"
    templates: tuple[str, ...] = BABA_TEMPLATES
    """BABA templates with [A] (IO), [B] (S, twice), [PLACE], [OBJECT]; the final name is cut."""
    names: tuple[str, ...] = NAMES
    """Candidate names; those that are not single tokens in the tokenizer are skipped."""
    places: tuple[str, ...] = PLACES
    """Place words for [PLACE]."""
    objects: tuple[str, ...] = OBJECTS
    """Object words for [OBJECT]."""
    abba_fraction: float = 0.5
    """Probability of the ABBA variant (first two names swapped)."""

    def __post_init__(self) -> None:
        if len(self.templates) == 0 or not self.places or not self.objects:
            raise TaskError("IOI needs at least one template, place and object")
        for t in self.templates:
            if t.count("[A]") != 1 or t.count("[B]") != 2:
                raise TaskError(f"IOI template must hold one [A] and two [B]: {t!r}")
        if not 0.0 <= self.abba_fraction <= 1.0:
            raise TaskError(f"abba_fraction must lie in [0, 1], got {self.abba_fraction}")

    def words(self) -> tuple[str, ...]:
        """Every word and punctuation mark the task can produce (for word-level vocabularies)."""
        text = " ".join(self.templates).replace("[", " ").replace("]", " ")
        tpl = [w for w in _WORD.findall(text) if w not in ("A", "B", "PLACE", "OBJECT")]
        return tuple(dict.fromkeys([*tpl, *self.names, *self.places, *self.objects]))

    def sample(self, rng: np.random.Generator, names: tuple[str, ...]) -> dict[str, Any]:
        """One example's choices: template, ABBA flag, IO, S, place, object, ABC names."""
        io, s, c1, c2, c3 = rng.choice(len(names), size=5, replace=False)
        return {"template": self.templates[rng.integers(len(self.templates))],
                "abba": bool(rng.random() < self.abba_fraction),
                "io": names[io], "s": names[s], "abc": (names[c1], names[c2], names[c3]),
                "place": self.places[rng.integers(len(self.places))],
                "object": self.objects[rng.integers(len(self.objects))]}

    @staticmethod
    def render(ex: dict[str, Any], corrupted: bool = False) -> str:
        """Prompt text of an example from ``sample`` (clean, or the ABC counterfactual)."""
        if corrupted:
            a, b1, b2 = ex["abc"]
        else:
            a, b1, b2 = ex["io"], ex["s"], ex["s"]
        tpl = ex["template"]
        if ex["abba"]:  # swap the first two names: "[A] and [B]"
            tpl = tpl.replace("[B] and [A]", "[A] and [B]", 1)
        return _fill(tpl, {"A": a, "B1": b1, "B2": b2}, ex["place"], ex["object"])

    def usable_names(self, tokenizer: Any) -> tuple[tuple[str, ...], dict[str, int]]:
        """Names that are single known tokens, and their ids."""
        unk = getattr(_hf(tokenizer), "unk_token_id", None)
        ids: dict[str, int] = {}
        for nm in self.names:
            t = encode_plain(tokenizer, " " + nm)
            if len(t) == 1 and t[0] != unk:
                ids[nm] = int(t[0])
        if len(ids) < 5:
            raise TaskError(f"IOI needs at least 5 names that are single tokens in this tokenizer; "
                            f"found {len(ids)} of {len(self.names)}")
        return tuple(ids), ids

    def generate(self, n: int, seed: int, tokenizer: Any) -> TaskData:
        """``n`` IOI examples with ABC counterfactuals (see module docstring)."""
        if n < 1:
            raise TaskError(f"IOI: the dataset is empty; ask for n >= 1 examples (got n={n})")
        names, ids = self.usable_names(tokenizer)
        rng = np.random.default_rng([seed, 0])
        exs = [self.sample(rng, names) for _ in range(n)]
        clean_t = tuple(self.render(e) for e in exs)
        corr_t = tuple(self.render(e, corrupted=True) for e in exs)
        ref_rng = np.random.default_rng([seed, 1])
        ref = [encode(tokenizer, self.render(self.sample(ref_rng, names))) for _ in range(n)]
        return TaskData(
            task=self.name,
            clean=[encode(tokenizer, t) for t in clean_t],
            corrupted=[encode(tokenizer, t) for t in corr_t],
            answer=np.array([ids[e["io"]] for e in exs]),
            wrong=np.array([ids[e["s"]] for e in exs]),
            reference=ref, clean_text=clean_t, corrupted_text=corr_t,
            metric_kind="logit_diff", accuracy_rule="positive",
            info={"config": {k: v for k, v in asdict(self).items() if k == "abba_fraction"},
                  "seed": seed, "n": n, "names_used": len(names)},
        )
