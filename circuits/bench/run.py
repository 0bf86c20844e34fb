"""Ground-truth benchmark of the discovery methods on the shipped organisms.

Algorithm (``run_benchmark``):
  1. For each organism with a ``ground_truth.json`` and each of its tasks: the
     task data the ground truth used (its n and seed), and a staleness check:
     the stored clean metric must match the model's (else the row is flagged,
     or the ground truth recomputed with ``recompute_stale=True``).
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from circuits.bench.metrics import precision_recall_at_k, roc_auc
from circuits.discover import METHODS, DiscoverConfig, MaskedModel, discover_masked
from circuits.discover.ablation import ABLATIONS
from circuits.discover.methods import exact
from circuits.errors import BenchmarkError
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
    """Recompute a stale ground truth (clean metric differs) instead of flagging it."""

    def __post_init__(self) -> None:
        if self.ig_steps < 1 or self.tau < 0 or (self.n is not None and self.n < 1):
            raise BenchmarkError("need ig_steps >= 1, tau >= 0 and n >= 1")


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


def _organism_tasks(name: str, tasks: Sequence[str] | None, skipped: list) -> list:
    from circuits import organisms

    try:
        gt = organisms.load_ground_truth(name)
    except Exception as exc:  # noqa: BLE001 - an unshipped organism is reported, not fatal
        skipped.append(f"{name}: {exc}")
        return []
    want = list(tasks) if tasks else list(gt.tasks)
    for t in want:
        if t not in gt.tasks:
            skipped.append(f"{name}/{t}: no ground truth for this task")
    return [(gt, gt.tasks[t]) for t in want if t in gt.tasks]


def _check_stale(name: str, gt: Any, gtt: Any, mm: MaskedModel, cfg: BenchConfig) -> tuple[Any, bool]:
    clean = mm.metric(mm.ones())
    stale = abs(clean - gtt.clean_metric) > 1e-3 * max(1.0, abs(clean))
    if stale and cfg.recompute_stale and cfg.n is None:
        from circuits import organisms

        fresh = organisms.ground_truth(name, tasks=(gtt.task,), config=gt.config)
        return fresh.tasks[gtt.task], False
    return gtt, stale


def run_benchmark(organisms: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                  methods: Sequence[str] = METHODS, ablations: Sequence[str] = ("counterfactual",),
                  config: BenchConfig | None = None,
                  on_progress: Progress | None = None) -> BenchmarkResult:
    """Score every method against the organisms' ground truth (module docstring)."""
    from attribution import load_model
    from circuits import organisms as orgs
    from circuits import tasks as task_reg

    cfg = config or BenchConfig()
    bad = [m for m in methods if m not in METHODS] + [a for a in ablations if a not in ABLATIONS]
    if bad:
        raise BenchmarkError(f"unknown method/ablation {bad}; methods {METHODS}, ablations {ABLATIONS}")
    names = list(organisms) if organisms else list(orgs.names())
    rows, skipped = [], []
    tell = on_progress or (lambda *a: None)
    for name in names:
        if name not in orgs.names():
            raise BenchmarkError(f"unknown organism {name!r}; known: {', '.join(orgs.names())}")
        pairs = _organism_tasks(name, tasks, skipped)
        if not pairs:
            continue
        model = load_model(orgs.path(name))
        for gt, gtt in pairs:
            data = task_reg.get(gtt.task).generate(cfg.n or gt.config.n, gt.config.seed,
                                                   model.tokenizer)
            checked = None  # the staleness check (and any recompute) runs once per task
            for ablation in ablations:
                mm = MaskedModel(model, data, ablation, cfg.qkv)
                checked = checked or _check_stale(name, gt, gtt, mm, cfg)
                gtt_used, stale = checked
                ex_nodes = exact(mm, "node")
                for i, method in enumerate(methods):
                    row = score_against(mm, gtt_used, method, ablation, cfg, ex_nodes)
                    rows.append({"organism": name, "task": gtt.task, **row, "gt_stale": stale})
                    tell(f"{name}/{gtt.task}/{ablation}", i + 1, len(methods))
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
