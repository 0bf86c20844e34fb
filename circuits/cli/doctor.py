"""``circuits doctor``: what this machine gives MLX.

Algorithm:
  1. Read the BLAS preload state (library or reason).
  2. Measure a 1024² float32 matmul through our import path.
  3. Report MLX version and device, Graphviz ``dot`` and ``g++`` (mx.compile on CPU).
"""

from __future__ import annotations

import shutil
import subprocess

from circuits.cli._common import positive_int
from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="report BLAS, matmul GFLOP/s, MLX device, dot and g++")
    p.add_argument("--size", type=positive_int, default=1024, help="matmul side for the measurement")


def _version(cmd: list[str]) -> str | None:
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return exe
    text = (out.stdout or out.stderr).strip().splitlines()
    return f"{exe} ({text[0]})" if text else exe


def collect(size: int = 1024) -> dict:
    """The doctor record (pure apart from probing the machine)."""
    import mlx.core as mx

    from attribution import _blas
    from attribution.perf import matmul_gflops

    st = _blas.state()
    peak = matmul_gflops(size)
    return {
        "blas_status": st.status,
        "blas_library": st.library,
        "blas_detail": st.detail,
        "matmul_n": size,
        "matmul_gflops": round(peak.gflops, 1),
        "mlx_version": mx.__version__,
        "mlx_device": str(mx.default_device()),
        "dot": _version(["dot", "-V"]),
        "gxx": _version(["g++", "--version"]),
    }


def run(args) -> int:
    rec = collect(args.size)
    slow = rec["matmul_gflops"] < 50
    lines = [
        f"BLAS        {rec['blas_library'] or rec['blas_status']}  ({rec['blas_detail']})",
        f"matmul      {rec['matmul_gflops']} GFLOP/s  (float32 {args.size}x{args.size})"
        + ("  <-- slow: see README 'Linux speed'" if slow else ""),
        f"MLX         {rec['mlx_version']} on {rec['mlx_device']}",
        f"dot         {rec['dot'] or 'NOT FOUND: apt-get install -y graphviz (or brew install graphviz)'}",
        f"g++         {rec['gxx'] or 'not found: mx.compile on CPU needs a C++ compiler'}",
    ]
    emit(args, rec, lines)
    return 0
