"""Ground-truth circuits of the organisms by exact patching (counterfactual ablation).

Algorithm (``ground_truth``):
  1. Load the model (``attribution.load_model``) and, per task, generate ``n``
     held-out examples with ``seed`` (``GroundTruthConfig``).
  2. Node effects: patch every head and every MLP exactly (``patching.Patcher``).
  3. Path effects (models with <= ``max_path_layers`` layers): every head -> later
     head, head -> same-or-later MLP and head -> logits path by exact path patching.
  4. Circuit: faithfulness(S) = (F(S) - F(none)) / (F(all) - F(none)), where F(S)
     is the metric with every component outside S patched from the corrupted run.
     With <= ``exhaustive_max`` components, enumerate subsets by size and return the
     smallest reaching ``threshold`` (highest faithfulness among ties). Otherwise
     greedy: add the component that raises F most until the threshold is reached,
     then drop components whose removal keeps it (least useful first).
  5. Return a typed ``GroundTruth``; ``write=True`` stores ``ground_truth.json``
     beside the weights (atomic write).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import attribution  # noqa: F401  (optimised BLAS before mlx)
from attribution import load_model

from circuits.errors import OrganismError
from circuits.organisms.card import atomic_write_text, read_card
from circuits.organisms.patching import Component, Patcher, components, receivers_of

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class GroundTruthConfig:
    """How the ground truth is computed."""

    n: int = 100
    """Held-out examples per task."""
    seed: int = 20_000
    """Seed of those examples (disjoint from training and the card's eval seed)."""
    threshold: float = 0.9
    """Faithfulness the circuit must reach."""
    exhaustive_max: int = 12
    """Exhaustive subset search when the model has at most this many components."""
    max_path_layers: int = 4
    """Compute path patching for models with at most this many layers."""
    batch_size: int | None = None
    """Examples per forward (None: whole length group)."""

    def __post_init__(self) -> None:
        if self.n < 1 or not 0 < self.threshold <= 1:
            raise OrganismError(f"need n >= 1 and 0 < threshold <= 1, got {self.n}, {self.threshold}")


@dataclass(frozen=True)
class TaskGroundTruth:
    """Exact-patching ground truth of one task."""

    task: str
    """Task name."""
    metric: str
    """Metric name (all values below are means over examples)."""
    ablation: str
    """Ablation used for every number: counterfactual (the task's corrupted prompts)."""
    clean_metric: float
    """F(all): metric on clean prompts."""
    corrupted_metric: float
    """Metric on corrupted prompts."""
    empty_metric: float
    """F(none): metric with every head and MLP patched."""
    nodes: dict[str, float]
    """Component -> metric with that component patched."""
    paths: dict[str, float]
    """"sender->receiver" -> metric with that path patched (empty when not computed)."""
    circuit: list[str]
    """Components reaching ``threshold`` faithfulness."""
    faithfulness: float
    """Faithfulness of ``circuit``."""
    search: str
    """exhaustive or greedy."""
    evaluations: int
    """Subsets evaluated by the search."""


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth of one organism."""

    model: str
    """Organism name or model directory."""
    config: GroundTruthConfig
    """How it was computed."""
    tasks: dict[str, TaskGroundTruth] = field(default_factory=dict)
    """Per task."""

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"model": self.model, "config": asdict(self.config),
                "tasks": {k: asdict(v) for k, v in self.tasks.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> GroundTruth:
        """Inverse of ``to_dict``."""
        return cls(d["model"], GroundTruthConfig(**d["config"]),
                   {k: TaskGroundTruth(**v) for k, v in d["tasks"].items()})


def _faith(f: float, empty: float, full: float) -> float:
    return (f - empty) / (full - empty) if full != empty else float("nan")


def exhaustive_search(p: Patcher, comps: list[Component], threshold: float,
                      empty: float) -> tuple[list[Component], float, int]:
    """Smallest subset with faithfulness >= threshold (best faithfulness among ties)."""
    evals = 0
    for k in range(len(comps) + 1):
        best, best_f = None, -float("inf")
        for subset in itertools.combinations(comps, k):
            f = _faith(p.circuit_metric(subset, comps), empty, p.clean_metric)
            evals += 1
            if f > best_f:
                best, best_f = list(subset), f
        if best_f >= threshold:
            return best, best_f, evals
    return list(comps), 1.0, evals


def greedy_search(p: Patcher, comps: list[Component], threshold: float,
                  empty: float) -> tuple[list[Component], float, int]:
    """Greedy forward selection to ``threshold``, then backward pruning."""
    keep: list[Component] = []
    f, evals = 0.0, 0
    while f < threshold and len(keep) < len(comps):
        trial = {c: _faith(p.circuit_metric(keep + [c], comps), empty, p.clean_metric)
                 for c in comps if c not in keep}
        evals += len(trial)
        c = max(trial, key=lambda x: (trial[x], [-v for v in (x.layer, x.head or 0)]))
        keep.append(c)
        f = trial[c]
    changed = True
    while changed and len(keep) > 1:
        changed = False
        trial = {c: _faith(p.circuit_metric([k for k in keep if k != c], comps), empty,
                           p.clean_metric) for c in keep}
        evals += len(trial)
        c = max(trial, key=lambda x: trial[x])
        if trial[c] >= threshold:
            keep.remove(c)
            f, changed = trial[c], True
    return sorted(keep), f, evals


def task_ground_truth(model: Any, task_name: str, cfg: GroundTruthConfig,
                      on_progress: Progress | None = None) -> TaskGroundTruth:
    """Node, path and circuit ground truth of one task (see module docstring)."""
    from circuits import tasks

    data = tasks.get(task_name).generate(cfg.n, cfg.seed, model.tokenizer)
    p = Patcher(model, data, cfg.batch_size)
    comps = components(model)
    tell = on_progress or (lambda *a: None)
    nodes = {}
    for i, c in enumerate(comps):
        nodes[str(c)] = p.node_metric(c)
        tell(f"{task_name}: nodes", i + 1, len(comps))
    paths: dict[str, float] = {}
    if model.n_layers <= cfg.max_path_layers:
        senders = [c for c in comps if c.kind == "head"]
        for i, s in enumerate(senders):
            recv = receivers_of(model, s)
            for r, m in zip(recv, p.path_metrics(s, recv)):
                paths[f"{s}->{r}"] = m
            tell(f"{task_name}: paths", i + 1, len(senders))
    empty = p.circuit_metric([], comps)
    search = exhaustive_search if len(comps) <= cfg.exhaustive_max else greedy_search
    tell(f"{task_name}: circuit search", 0, 1)
    circuit, faith, evals = search(p, comps, cfg.threshold, empty)
    tell(f"{task_name}: circuit search", 1, 1)
    return TaskGroundTruth(
        task=task_name, metric=data.metric_kind, ablation="counterfactual",
        clean_metric=p.clean_metric, corrupted_metric=p.corrupted_metric, empty_metric=empty,
        nodes=nodes, paths=paths, circuit=[str(c) for c in circuit], faithfulness=faith,
        search="exhaustive" if search is exhaustive_search else "greedy", evaluations=evals)


def ground_truth(name_or_path: str | Path, tasks: tuple[str, ...] | None = None,
                 config: GroundTruthConfig | None = None, write: bool = False,
                 on_progress: Progress | None = None) -> GroundTruth:
    """Recompute an organism's ground truth (see module docstring).

    ``name_or_path``: a shipped organism name or a model directory. ``tasks``
    defaults to the card's evaluated tasks. ``write`` stores ground_truth.json.
    """
    from circuits.organisms import names, path

    directory = path(str(name_or_path)) if str(name_or_path) in names() else Path(name_or_path)
    cfg = config or GroundTruthConfig()
    card = read_card(directory)
    task_names = tuple(tasks or card.get("recipe", {}).get("eval_tasks") or ("ioi",))
    model = load_model(directory)
    label = str(name_or_path) if str(name_or_path) in names() else str(directory)
    gt = GroundTruth(label, cfg, {t: task_ground_truth(model, t, cfg, on_progress)
                                  for t in task_names})
    if write:
        atomic_write_text(directory / "ground_truth.json", json.dumps(gt.to_dict(), indent=1))
    return gt


def load_ground_truth(name_or_path: str | Path) -> GroundTruth:
    """The stored ``ground_truth.json`` of an organism."""
    from circuits.organisms import names, path

    directory = path(str(name_or_path)) if str(name_or_path) in names() else Path(name_or_path)
    f = directory / "ground_truth.json"
    if not f.exists():
        raise OrganismError(f"{directory} has no ground_truth.json; compute it with "
                            "circuits.organisms.ground_truth(name, write=True)")
    return GroundTruth.from_dict(json.loads(f.read_text(encoding="utf-8")))
