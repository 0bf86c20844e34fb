"""Measure this machine's MLX matmul peak, for doctor output and benchmark records.

Algorithm:
  1. Build two random float32 n×n matrices and evaluate them.
  2. Warm up, then time ``repeats`` evaluated products; take the median.
  3. Report 2·n³ / t as GFLOP/s.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class MatmulPeak:
    """One matmul measurement."""

    n: int
    """Matrix side."""
    seconds: float
    """Median wall time of one product."""
    gflops: float
    """2·n³ / seconds / 1e9."""


def matmul_gflops(n: int = 1024, repeats: int = 10, warmup: int = 3) -> MatmulPeak:
    """Median float32 matmul throughput through MLX's default device."""
    import mlx.core as mx

    a = mx.random.normal((n, n), key=mx.random.key(0))
    b = mx.random.normal((n, n), key=mx.random.key(1))
    mx.eval(a, b)
    for _ in range(warmup):
        mx.eval(a @ b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mx.eval(a @ b)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return MatmulPeak(n, sec, 2 * n**3 / sec / 1e9)


def environment_record(n: int = 2048) -> dict:
    """What every benchmark JSON line carries: BLAS in use, measured peak, versions."""
    import mlx.core as mx

    from attribution import _blas, allocator

    st = _blas.state()
    peak = matmul_gflops(n=n, repeats=5)
    return {
        "blas": st.library or st.status,
        "blas_status": st.status,
        "matmul_peak_gflops": round(peak.gflops, 1),
        "matmul_peak_n": n,
        "malloc_keeps_freed": allocator.state()["applied"],
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        "machine": platform.machine(),
        "processor": _cpu_name(),
    }


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def as_dict(p: MatmulPeak) -> dict:
    """JSON-ready form."""
    return asdict(p)
