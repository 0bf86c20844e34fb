"""Ground-truth benchmark of component-circuit discovery on the model organisms.

``run_benchmark(organisms=..., tasks=..., methods=..., ablations=...)`` (shipped
organisms) or ``run_benchmark(model=DIR, ground_truth=FILE, tasks=[...])`` (your
own model, ground truth and task files) returns a ``BenchmarkResult`` (one row per
organism, task, method, ablation); ``write_benchmark(result, dir)`` stores it as
CSV and Markdown.
"""

from __future__ import annotations

from circuits.bench.metrics import precision_recall_at_k, roc_auc
from circuits.bench.run import (
    BenchConfig,
    BenchmarkResult,
    BenchTarget,
    resolve_targets,
    run_benchmark,
    score_against,
    to_markdown,
    write_benchmark,
)

__all__ = [
    "BenchConfig", "BenchTarget", "BenchmarkResult", "precision_recall_at_k", "resolve_targets",
    "roc_auc", "run_benchmark",
    "score_against", "to_markdown", "write_benchmark",
]
