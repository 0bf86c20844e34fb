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

Reading (``read_ground_truth``, ``GroundTruth.from_dict``) checks the schema and
fails with one line naming the file, the task and the missing or bad field:
  {"model": str, "config": {"n": int >= 1, "seed": int >= 0, ...GroundTruthConfig},
   "tasks": {"<task>": {"circuit": [names], "clean_metric": num, "empty_metric": num,
                        "nodes": {name: num}, "paths": {"A->B": num}, ...}}}
Required: ``tasks`` (non-empty) and, per task, ``circuit``, ``clean_metric`` and
``empty_metric``; everything else is optional (``config`` defaults to
``GroundTruthConfig()``, so user ground truths are scored on n=100 examples drawn
with seed 20000 unless they say otherwise). Component names take any spelling of
``circuits.discover.parse_node`` (``L0H2``/``L0.H2``, ``L1.mlp``/``L1.MLP``) and are
stored canonically (``L0H2``, ``L1.mlp``); ``check_components`` checks them
against a model's layers and heads.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field, fields
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
    def from_dict(cls, d: Any, source: str = "ground truth") -> GroundTruth:
        """Inverse of ``to_dict``; checks the schema (module docstring), naming ``source``
        in its one-line ``OrganismError``."""
        return _from_dict(d, source)

    def check_components(self, n_layers: int, n_heads: int, source: str = "ground truth") -> None:
        """Raise ``OrganismError`` unless every component named in circuits, node effects and
        paths exists in a model with ``n_layers`` layers of ``n_heads`` heads."""
        for key, t in self.tasks.items():
            for where, names in (("circuit", t.circuit), ("nodes", list(t.nodes)),
                                 ("paths", [n for p in t.paths for n in p.split("->")])):
                for name in names:
                    c = _parse_component(name, f"{source}: task {key!r}, {where}")
                    if c == "logits":
                        continue
                    if c.layer >= n_layers or (c.kind == "head" and c.head >= n_heads):
                        raise OrganismError(
                            f"{source}: task {key!r}, {where}: unknown component {name!r} for this "
                            f"model ({n_layers} layers x {n_heads} heads: L0H0 .. "
                            f"L{n_layers - 1}H{n_heads - 1}, L0.mlp .. L{n_layers - 1}.mlp)")


_REQUIRED = {"circuit": "a list of component names such as L0H2, L1.mlp",
             "clean_metric": "a number: the task metric of the clean model",
             "empty_metric": "a number: the metric with every head and MLP ablated"}
_NUMBERS = ("clean_metric", "empty_metric", "corrupted_metric", "faithfulness")
_STRINGS = ("task", "metric", "ablation", "search")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse_component(name: Any, where: str) -> Component | str:
    """A ``Component`` (or "logits") from any accepted spelling; ``OrganismError`` otherwise."""
    from circuits.discover.graph import EMBED, parse_node  # local: discover imports organisms
    from circuits.errors import DiscoveryError

    try:
        node = parse_node(name) if isinstance(name, str) else None
    except DiscoveryError:
        node = None
    if node is None or node == EMBED:
        raise OrganismError(f"{where}: {name!r} is not a component name; write L<layer>H<head> "
                            "(or L<layer>.H<head>) or L<layer>.mlp (embeddings are never ablated "
                            "in a ground truth, so they are not listed)")
    return node


def _task_from_dict(key: str, v: Any, source: str) -> TaskGroundTruth:
    at = f"{source}: task {key!r}"
    if not isinstance(v, dict):
        raise OrganismError(f"{at} must be an object with fields {', '.join(_REQUIRED)}; "
                            f"got {type(v).__name__}")
    for f, what in _REQUIRED.items():
        if f not in v:
            raise OrganismError(f"{at} lacks field {f!r} ({what})")
    unknown = sorted(set(v) - {f.name for f in fields(TaskGroundTruth)})
    if unknown:
        raise OrganismError(f"{at} has unknown field(s) {', '.join(map(repr, unknown))}; valid: "
                            f"{', '.join(f.name for f in fields(TaskGroundTruth))}")
    for f in _NUMBERS:
        if f in v and not _is_num(v[f]):
            raise OrganismError(f"{at}: field {f!r} must be a number, got {v[f]!r}")
    for f in _STRINGS:
        if f in v and not isinstance(v[f], str):
            raise OrganismError(f"{at}: field {f!r} must be a string, got {v[f]!r}")
    if not isinstance(v["circuit"], list):
        raise OrganismError(f"{at}: field 'circuit' must be a list of component names such as "
                            f"L0H2, L1.mlp; got {type(v['circuit']).__name__}")
    circuit = [str(_parse_component(c, f"{at}, circuit")) for c in v["circuit"]]
    maps = {}
    for f, keys in (("nodes", "component names"), ("paths", '"sender->receiver" names')):
        m = v.get(f, {})
        if not isinstance(m, dict) or not all(_is_num(x) for x in m.values()):
            raise OrganismError(f"{at}: field {f!r} must map {keys} to numbers (metric with it "
                                f"patched)")
        if f == "nodes":
            maps[f] = {str(_parse_component(k, f"{at}, nodes")): float(x) for k, x in m.items()}
        else:
            out = {}
            for k, x in m.items():
                parts = k.split("->") if isinstance(k, str) else []
                if len(parts) != 2:
                    raise OrganismError(f"{at}, paths: {k!r} is not 'sender->receiver' "
                                        "(e.g. L0H1->L1H2 or L1H0->logits)")
                a, b = (str(_parse_component(p.strip(), f"{at}, paths")) for p in parts)
                out[f"{a}->{b}"] = float(x)
            maps[f] = out
    ev = v.get("evaluations", 0)
    if not isinstance(ev, int) or isinstance(ev, bool) or ev < 0:
        raise OrganismError(f"{at}: field 'evaluations' must be an integer >= 0, got {ev!r}")
    return TaskGroundTruth(
        task=v.get("task", key), metric=v.get("metric", "logit_diff"),
        ablation=v.get("ablation", "counterfactual"), clean_metric=float(v["clean_metric"]),
        corrupted_metric=float(v.get("corrupted_metric", float("nan"))),
        empty_metric=float(v["empty_metric"]), nodes=maps["nodes"], paths=maps["paths"],
        circuit=circuit, faithfulness=float(v.get("faithfulness", float("nan"))),
        search=v.get("search", "given"), evaluations=ev)


def _config_from_dict(c: Any, source: str) -> GroundTruthConfig:
    valid = [f.name for f in fields(GroundTruthConfig)]
    if not isinstance(c, dict):
        raise OrganismError(f"{source}: 'config' must be an object with keys {', '.join(valid)}; "
                            f"got {type(c).__name__}")
    unknown = sorted(set(c) - set(valid))
    if unknown:
        raise OrganismError(f"{source}: config has unknown key(s) {', '.join(map(repr, unknown))}; "
                            f"valid: {', '.join(valid)}")
    for k in ("n", "seed", "exhaustive_max", "max_path_layers"):
        if k in c and (not isinstance(c[k], int) or isinstance(c[k], bool) or c[k] < (k == "n")):
            raise OrganismError(f"{source}: config {k!r} must be an integer >= {int(k == 'n')}, "
                                f"got {c[k]!r}")
    if "threshold" in c and not (_is_num(c["threshold"]) and 0 < c["threshold"] <= 1):
        raise OrganismError(f"{source}: config 'threshold' must be a number in (0, 1], "
                            f"got {c['threshold']!r}")
    if c.get("batch_size") is not None and (not isinstance(c["batch_size"], int) or c["batch_size"] < 1):
        raise OrganismError(f"{source}: config 'batch_size' must be null or an integer >= 1, "
                            f"got {c['batch_size']!r}")
    return GroundTruthConfig(**c)


def _from_dict(d: Any, source: str) -> GroundTruth:
    if not isinstance(d, dict):
        raise OrganismError(f"{source} must be a JSON object with 'tasks' (and optional 'model', "
                            f"'config'); got {type(d).__name__}")
    unknown = sorted(set(d) - {"model", "config", "tasks"})
    if unknown:
        raise OrganismError(f"{source} has unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                            "valid: model, config, tasks")
    if "tasks" not in d:
        raise OrganismError(f"{source} lacks field 'tasks' (an object: task name -> its circuit, "
                            "clean_metric and empty_metric)")
    if not isinstance(d["tasks"], dict) or not d["tasks"]:
        raise OrganismError(f"{source}: field 'tasks' must be a non-empty object (task name -> "
                            "its ground truth)")
    model = d.get("model", source)
    if not isinstance(model, str):
        raise OrganismError(f"{source}: field 'model' must be a string, got {model!r}")
    cfg = _config_from_dict(d.get("config", {}), source)
    return GroundTruth(model, cfg, {str(k): _task_from_dict(str(k), v, source)
                                    for k, v in d["tasks"].items()})


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


def read_ground_truth(file: str | Path) -> GroundTruth:
    """A ground-truth JSON file (the schema of the module docstring), checked field by field."""
    f = Path(file)
    if f.is_dir():
        raise OrganismError(f"ground-truth file {f} is a directory; give the JSON file "
                            f"(e.g. {f / 'ground_truth.json'})")
    if not f.is_file():
        raise OrganismError(f"ground-truth file {f} does not exist; give the path of a "
                            "ground_truth.json (schema: see circuits/organisms/ground_truth.py)")
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise OrganismError(f"ground-truth file {f} is not UTF-8 text; give a JSON file") from None
    except json.JSONDecodeError as e:
        raise OrganismError(f"ground-truth file {f} is not valid JSON (line {e.lineno}, column "
                            f"{e.colno}: {e.msg})") from None
    return GroundTruth.from_dict(d, f"ground-truth file {f}")


def load_ground_truth(name_or_path: str | Path) -> GroundTruth:
    """The stored ``ground_truth.json`` of an organism (a shipped name or a model directory),
    or a ground-truth JSON file."""
    from circuits.organisms import names, path

    directory = path(str(name_or_path)) if str(name_or_path) in names() else Path(name_or_path)
    if directory.is_file():
        return read_ground_truth(directory)
    f = directory / "ground_truth.json"
    if not f.exists():
        raise OrganismError(f"{directory} has no ground_truth.json; compute it with "
                            "circuits.organisms.ground_truth(name, write=True)")
    return read_ground_truth(f)
