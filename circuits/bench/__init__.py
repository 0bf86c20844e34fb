"""Ground-truth benchmark of component-circuit discovery on the model organisms.

``run_benchmark(organisms=..., tasks=..., methods=..., ablations=...)`` returns a
``BenchmarkResult`` (one row per organism, task, method, ablation);
``write_benchmark(result, dir)`` stores it as CSV and Markdown.
"""

from __future__ import annotations

from circuits.bench.metrics import precision_recall_at_k, roc_auc
from circuits.bench.run import (
    BenchConfig,
    BenchmarkResult,
    run_benchmark,
    score_against,
    to_markdown,
    write_benchmark,
)

__all__ = [
    "BenchConfig", "BenchmarkResult", "precision_recall_at_k", "roc_auc", "run_benchmark",
    "score_against", "to_markdown", "write_benchmark",
]
