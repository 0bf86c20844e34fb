"""Ground-truth benchmark of the discovery methods on the organisms (shipped or the user's).

Targets: shipped organisms by name (``organisms=``), or any llama-family model
directory (``model=``) with a ground truth (``ground_truth=``: a JSON file in the
schema of ``circuits.organisms.ground_truth``, default ``<model>/ground_truth.json``).

Algorithm (``run_benchmark``):
  0. Resolve every target before any scoring, so bad input fails at once with one
     line: the model loads and is covered by the masking core; the ground truth
     parses and names only the model's components; each requested task is a
     built-in name or a task file (``circuits.tasks.user``), paired with the
     ground-truth task of the same name (a file: its name, stem or path; or the
     only task of a one-task ground truth); its data are generated with the
     ground truth's n and seed (or ``BenchConfig.n``). A shipped organism
     without the requested task is skipped with a note; a user ground truth
     without it is an error; nothing left to run is an error.
  1. Staleness: the stored clean metric must match the model's (else the row is
     flagged, or, for shipped organisms with ``recompute_stale=True``, the ground
     truth is recomputed).
  2. Positives: nodes = the ground truth's minimal component set; edges = the
     edges of that set (upstream in set + embed, downstream in set + logits:
     the ground truth never ablates embeddings or logits). ``edge_auc_paths``
     also drops induced head-sender edges whose exact path-patching effect in
     the ground truth is below 1% of |F(M) - F(empty)| (edges that carry nothing,
     e.g. a layer-0 head's direct write to the logits).
  3. For each ablation, one ``MaskedModel``; for each method, node and edge
     scores (``discover_masked``), timed. Recovery: ROC AUC of |score| and
     precision at the ground-truth size; ACDC ranks by its recorded |change|.
  4. Faithfulness: of the top 10% of edges by |score| (plain and MIB-greedy,
     i.e. connected to the logits), of the top-|GT| nodes,
     and MIB CPR/CMD curves of the edge scores; node-score Pearson r against
     exact node patching on the same data.
  5. One row per (organism, task, method, ablation) in a DataFrame;
     ``write_benchmark`` stores CSV and Markdown atomically.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from circuits.bench.metrics import precision_recall_at_k, roc_auc
from circuits.discover import METHODS, DiscoverConfig, MaskedModel, check_model, discover_masked
from circuits.discover.ablation import ABLATIONS
from circuits.discover.methods import exact
from circuits.errors import BenchmarkError, OrganismError
from circuits.organisms.ground_truth import GroundTruth, TaskGroundTruth, read_ground_truth
from circuits.tasks.base import TaskData
from circuits.validate.faithfulness import faithfulness, faithfulness_curve

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BenchConfig:
    """Knobs of the benchmark runs."""

    ig_steps: int = 8
    """EAP-IG steps."""
    tau: float = 0.05
    """ACDC threshold (metric units)."""
    qkv: str = "joint"
    """Head input ports (joint or separate)."""
    n: int | None = None
    """Examples per task (None: the ground truth's n)."""
    recompute_stale: bool = False
    """Recompute a stale ground truth (clean metric differs) instead of flagging it
    (shipped organisms only; a user ground truth is flagged)."""

    def __post_init__(self) -> None:
        if self.ig_steps < 1:
            raise BenchmarkError(f"ig_steps must be >= 1 (EAP-IG interpolation steps), got {self.ig_steps}")
        if not self.tau >= 0 or self.tau == float("inf"):
            raise BenchmarkError(f"tau (the ACDC threshold) must be a finite number >= 0, got {self.tau}")
        if self.n is not None and self.n < 1:
            raise BenchmarkError(f"n (examples per task) must be >= 1, got {self.n}")
        if self.qkv not in ("joint", "separate"):
            raise BenchmarkError(f"qkv must be 'joint' or 'separate', got {self.qkv!r}")


@dataclass(frozen=True)
class BenchmarkResult:
    """Benchmark table and what was skipped."""

    table: pd.DataFrame
    """One row per (organism, task, method, ablation)."""
    skipped: tuple[str, ...]
    """Organisms/tasks not run, with the reason."""


def _auc_or_nan(scores, positive) -> float:
    y = np.asarray(positive, bool)
    return roc_auc(scores, y) if 0 < y.sum() < y.size else float("nan")


def path_positives(graph: Any, gt_task: Any, min_effect: float = 0.01) -> np.ndarray | None:
    """Induced circuit edges, minus head-sender edges whose ground-truth path-patching effect
    is below ``min_effect`` of |F(M) - F(empty)| (None when the ground truth has no paths)."""
    if not gt_task.paths:
        return None
    scale = abs(gt_task.clean_metric - gt_task.empty_metric)
    pos = graph.induced_edges(gt_task.circuit)
    for i, e in enumerate(graph.edges):
        key = f"{e.upstream}->{e.downstream}"
        if pos[i] and key in gt_task.paths:
            pos[i] = abs(gt_task.clean_metric - gt_task.paths[key]) >= min_effect * scale
    return pos


def score_against(mm: MaskedModel, gt_task: Any, method: str, ablation: str, cfg: BenchConfig,
                  exact_nodes: np.ndarray) -> dict:
    """One benchmark row for one method on a prepared ``MaskedModel``."""
    g = mm.graph
    circuit = set(gt_task.circuit)
    base = DiscoverConfig(method=method, ablation=ablation, qkv=cfg.qkv, ig_steps=cfg.ig_steps,
                          tau=cfg.tau)
    node = discover_masked(mm, replace(base, level="node"))
    edge = discover_masked(mm, base)
    comp = np.array([u != "embed" for u in map(str, g.upstream)])
    node_pos = np.array([str(u) in circuit for u in g.upstream])
    edge_pos = g.induced_edges(circuit)
    path_pos = path_positives(g, gt_task)
    nabs, eabs = np.abs(node.values), np.abs(edge.values)
    k_nodes = max(int(node_pos.sum()), 1)
    top_nodes = np.zeros(g.n_nodes, dtype=np.float32)
    top_nodes[np.argsort(-nabs, kind="stable")[:k_nodes]] = 1.0
    top_nodes[0] = 1.0  # embeddings stay clean, as in the ground truth's circuit metric
    ten = edge.top(int(np.ceil(0.1 * g.n_edges)))
    curve = faithfulness_curve(mm, edge)
    greedy = faithfulness_curve(mm, edge, fractions=(0.1, 1.0), greedy=True).table
    g10 = greedy[(greedy.ranking == "absolute") & (greedy.fraction == 0.1)].faithfulness.iloc[0]
    r = np.corrcoef(node.values, exact_nodes)[0, 1] if np.std(node.values) > 0 else np.nan
    row = {
        "method": method, "ablation": ablation, "metric": mm.data.metric_kind,
        "n_examples": mm.n, "n_edges": g.n_edges, "gt_nodes": int(node_pos.sum()),
        "gt_edges": int(edge_pos.sum()),
        "node_auc": _auc_or_nan(nabs[comp], node_pos[comp]),
        "edge_auc": _auc_or_nan(eabs, edge_pos),
        "edge_auc_paths": np.nan if path_pos is None else _auc_or_nan(eabs, path_pos),
        "node_p_at_gt": precision_recall_at_k(nabs[comp], node_pos[comp])[0] if node_pos.any() else np.nan,
        "edge_p_at_gt": precision_recall_at_k(eabs, edge_pos)[0] if edge_pos.any() else np.nan,
        "node_r_exact": float(r),
        "faith_top10pct_edges": faithfulness(mm, ten).faithfulness,
        "faith_top10pct_greedy": float(g10),
        "faith_top_gt_nodes": faithfulness(mm, top_nodes).faithfulness,
        "cpr": curve.cpr, "cmd": curve.cmd,
        "runtime_edge_s": edge.runtime_s, "runtime_node_s": node.runtime_s,
    }
    if method == "acdc":
        f = faithfulness(mm, edge)
        row.update(acdc_faith=f.faithfulness, acdc_edge_fraction=f.fraction)
    return row


@dataclass(frozen=True)
class BenchTarget:
    """One model to benchmark, with its ground truth and the task data to score on."""

    name: str
    """Organism column of the table: the shipped name or the model directory's name."""
    model: Any = field(repr=False)
    """The loaded model."""
    ground_truth: GroundTruth
    """Its ground truth."""
    tasks: tuple[tuple[str, TaskGroundTruth, TaskData], ...]
    """(ground-truth task name, its ground truth, the examples it is scored on)."""
    shipped: bool
    """A shipped organism (its ground truth can be recomputed when stale)."""


_TASK_FILE = (".jsonl", ".json", ".ndjson", ".csv")


def _is_task_file(spec: str) -> bool:
    return spec.strip().lower().endswith(_TASK_FILE)


def _match_file(gt: GroundTruth, spec: str, source: str) -> str:
    """The ground-truth task a task file is scored against (module docstring, step 0)."""
    p = Path(spec)
    for key in (spec, str(p), p.name, p.stem, f"user:{p.name}"):
        if key in gt.tasks:
            return key
    if len(gt.tasks) == 1:
        return next(iter(gt.tasks))
    raise BenchmarkError(f"task file {spec} matches no task of {source} (tasks: "
                         f"{', '.join(gt.tasks)}); name the ground-truth task after the file "
                         f"(e.g. {p.stem!r}) or keep one task in the ground truth")


def _task_specs(gt: GroundTruth, wanted: Sequence[str] | None, source: str, base: Path,
                strict: bool, skipped: list, label: str) -> list[tuple[str, str]]:
    """(task spec for ``tasks.get``, ground-truth task key) pairs for one target."""
    from circuits import tasks as task_reg

    pairs = []
    if not wanted:  # every task of the ground truth: a built-in name or a task file
        for key in gt.tasks:
            spec = key
            if _is_task_file(key):  # relative to the ground truth's folder, else to the cwd
                spec = str(base / key) if (base / key).is_file() else key
                task_reg.read_rows(spec)
            else:
                try:
                    task_reg.get(key)
                except ValueError:
                    raise BenchmarkError(
                        f"{source}: task {key!r} is not a built-in task ({', '.join(task_reg.names())}) "
                        "or a task file; pass its task file with --tasks FILE.jsonl") from None
            pairs.append((spec, key))
        return pairs
    for spec in wanted:
        if _is_task_file(spec):
            task_reg.read_rows(spec)  # exists and parses: one line naming file and line if not
            pairs.append((spec, _match_file(gt, spec, source)))
            continue
        task = task_reg.get(spec)  # unknown names: one line listing the known tasks
        keys = [spec, task.name]
        key = next((k for k in keys if k in gt.tasks), None)
        if key is None:
            if strict:
                raise BenchmarkError(f"{source} has no task {spec!r}; it has: {', '.join(gt.tasks)} "
                                     "(pass those with --tasks, or a task file)")
            skipped.append(f"{label}/{spec}: no ground truth for this task")
            continue
        pairs.append((spec, key))
    return pairs


def _target(name: str, model_dir: Path, gt: GroundTruth, source: str, base: Path, wanted,
            cfg: BenchConfig, shipped: bool, skipped: list) -> BenchTarget | None:
    from attribution import load_model
    from circuits import tasks as task_reg

    model = load_model(model_dir)
    check_model(model)
    gt.check_components(model.n_layers, model.n_heads, source)
    pairs = _task_specs(gt, wanted, source, base, not shipped, skipped, name)
    if not pairs:
        return None
    data = tuple((key, gt.tasks[key], task_reg.get(spec).generate(cfg.n or gt.config.n,
                                                                  gt.config.seed, model.tokenizer))
                 for spec, key in pairs)
    return BenchTarget(name, model, gt, data, shipped)


def resolve_targets(organisms: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                    model: str | Path | None = None, ground_truth: str | Path | None = None,
                    config: BenchConfig | None = None) -> tuple[list[BenchTarget], list[str]]:
    """Step 0 of the module docstring: (targets, skipped notes); raises on bad input."""
    from circuits import organisms as orgs

    cfg = config or BenchConfig()
    skipped: list[str] = []
    if model is not None and organisms:
        raise BenchmarkError("give --model DIR (your own model) or --organisms NAME ... (shipped), "
                             "not both")
    if model is not None:
        d = Path(model)
        if not d.is_dir():
            raise BenchmarkError(f"model directory {d} does not exist; give an mlx-lm model "
                                 "directory (config.json, weights, tokenizer)")
        gt_file = Path(ground_truth) if ground_truth is not None else d / "ground_truth.json"
        if ground_truth is None and not gt_file.is_file():
            raise BenchmarkError(f"{d} has no ground_truth.json; pass one with --ground-truth FILE "
                                 "(schema: circuits/organisms/ground_truth.py)")
        gt = read_ground_truth(gt_file)
        t = _target(d.resolve().name, d, gt, f"ground-truth file {gt_file}", gt_file.parent, tasks,
                    cfg, False, skipped)
        return ([t] if t is not None else []), skipped
    names = list(organisms) if organisms else list(orgs.names())
    for name in names:
        if name not in orgs.names():
            raise BenchmarkError(f"unknown organism {name!r}; known: {', '.join(orgs.names())} "
                                 "(for your own model use --model DIR --ground-truth FILE)")
    if ground_truth is not None and len(names) != 1:
        raise BenchmarkError("--ground-truth replaces one model's ground truth; name one organism "
                             "with --organisms NAME or give --model DIR")
    targets = []
    for name in names:
        if ground_truth is not None:
            gt, source, shipped = read_ground_truth(ground_truth), f"ground-truth file {ground_truth}", False
            base = Path(ground_truth).parent
        else:
            try:
                gt, source, shipped = orgs.load_ground_truth(name), f"organism {name!r}", True
            except OrganismError as exc:  # an unshipped organism is reported, not fatal
                skipped.append(f"{name}: {exc}")
                continue
            base = orgs.path(name)
        t = _target(name, orgs.path(name), gt, source, base, tasks, cfg, shipped, skipped)
        if t is not None:
            targets.append(t)
    return targets, skipped


def _check_stale(name: str, gt: Any, gtt: Any, mm: MaskedModel, cfg: BenchConfig,
                 shipped: bool = True) -> tuple[Any, bool]:
    clean = mm.metric(mm.ones())
    stale = abs(clean - gtt.clean_metric) > 1e-3 * max(1.0, abs(clean))
    if stale and shipped and cfg.recompute_stale and cfg.n is None:
        from circuits import organisms

        fresh = organisms.ground_truth(name, tasks=(gtt.task,), config=gt.config)
        return fresh.tasks[gtt.task], False
    return gtt, stale


def run_benchmark(organisms: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                  methods: Sequence[str] = METHODS, ablations: Sequence[str] = ("counterfactual",),
                  config: BenchConfig | None = None,
                  on_progress: Progress | None = None, *, model: str | Path | None = None,
                  ground_truth: str | Path | None = None) -> BenchmarkResult:
    """Score every method against the ground truth (module docstring).

    ``organisms``: shipped names (default: all), or ``model``: a model directory with
    ``ground_truth`` (a JSON file; default ``<model>/ground_truth.json``). ``tasks``:
    built-in names or task files (default: every task of the ground truth)."""
    cfg = config or BenchConfig()
    methods, ablations = list(methods), list(ablations)
    bad_m = [m for m in methods if m not in METHODS]
    bad_a = [a for a in ablations if a not in ABLATIONS]
    if bad_m or bad_a or not methods or not ablations:
        what = (f"unknown method(s) {', '.join(map(repr, bad_m))}" if bad_m else
                f"unknown ablation(s) {', '.join(map(repr, bad_a))}" if bad_a else
                "no method or ablation given")
        raise BenchmarkError(f"{what}; methods: {', '.join(METHODS)}; ablations: {', '.join(ABLATIONS)}")
    targets, skipped = resolve_targets(organisms, tasks, model, ground_truth, cfg)
    if not targets:
        raise BenchmarkError("nothing to benchmark: " + "; ".join(skipped or ["no targets"]))
    rows = []
    tell = on_progress or (lambda *a: None)
    for t in targets:
        for key, gtt, data in t.tasks:
            checked = None  # the staleness check (and any recompute) runs once per task
            for ablation in ablations:
                mm = MaskedModel(t.model, data, ablation, cfg.qkv)
                checked = checked or _check_stale(t.name, t.ground_truth, gtt, mm, cfg, t.shipped)
                gtt_used, stale = checked
                ex_nodes = exact(mm, "node")
                for i, method in enumerate(methods):
                    row = score_against(mm, gtt_used, method, ablation, cfg, ex_nodes)
                    rows.append({"organism": t.name, "task": key, **row, "gt_stale": stale})
                    tell(f"{t.name}/{key}/{ablation}", i + 1, len(methods))
    return BenchmarkResult(pd.DataFrame(rows), tuple(skipped))


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table of ``df`` (floats rounded)."""
    cols = list(df.columns)
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_benchmark(result: BenchmarkResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``benchmark.csv`` and ``benchmark.md`` (atomic); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / "benchmark.csv", out / "benchmark.md"
    _atomic(csv, result.table.to_csv(index=False))
    notes = "".join(f"\n- skipped: {s}" for s in result.skipped)
    _atomic(md, "# Circuit discovery benchmark\n\n" + to_markdown(result.table) + notes + "\n")
    return csv, md
