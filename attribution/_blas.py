"""Load an optimised BLAS before ``mlx.core`` on Linux.

This is the one import-time action in mlx-circuits, and it is deliberate: the
Linux ``mlx[cpu]`` wheel links a reference BLAS that runs float32 matmul at
about 5 GFLOP/s; the system OpenBLAS, loaded into the process with
``RTLD_GLOBAL`` before ``mlx.core`` resolves its ``cblas_*`` symbols, gives
50-80x that. The dynamic linker binds the first definition it sees, so the
preload must happen before MLX's shared library is opened.

Algorithm (``preload()``, idempotent):
  1. Do nothing off Linux (macOS uses Accelerate/Metal) or when
     ``MLX_CIRCUITS_NO_BLAS_PRELOAD=1``.
  2. If an optimised BLAS is already mapped into the process (``LD_PRELOAD``
     or an earlier call), record it and stop.
  3. If ``mlx.core`` is already imported, it is too late: warn once, naming
     the fix, and keep running (correct, only slow).
  4. Otherwise try candidates in order -- ``MLX_CIRCUITS_BLAS`` (a path),
     Debian/Ubuntu OpenBLAS (pthread, openmp, serial), generic
     ``libopenblas.so.0``, pip's ``mkl`` (``libmkl_rt``) -- and ``CDLL`` the
     first that loads, with ``OPENBLAS_CORETYPE=SkylakeX`` set first where the
     CPU has avx512f (OpenBLAS 0.3.21 misdetects newer cores).
  5. If none loads, warn once with the install command.
"""

from __future__ import annotations

import ctypes
import os
import sys
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path

DISABLE_ENV = "MLX_CIRCUITS_NO_BLAS_PRELOAD"
PATH_ENV = "MLX_CIRCUITS_BLAS"
INSTALL_HINT = (
    "install the system OpenBLAS (Debian/Ubuntu, as root: "
    "`apt-get update && apt-get install -y libopenblas0-pthread`) "
    f"or point {PATH_ENV} at a libopenblas/libmkl_rt shared library"
)

_DEBIAN_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
_OPTIMISED_MARKERS = ("openblas", "mkl_rt", "libmkl", "blis")


class BlasWarning(RuntimeWarning):
    """MLX is running on the slow reference BLAS."""


@dataclass(frozen=True)
class BlasState:
    """What ``preload`` found or did."""

    status: str
    """One of: loaded, already-loaded, not-linux, disabled, too-late, not-found."""
    library: str | None
    """Path of the optimised BLAS in the process, if any."""
    detail: str
    """One human-readable sentence."""


_STATE: BlasState | None = None


def candidates() -> list[str]:
    """Paths to try, best first. Pure apart from reading the filesystem."""
    out: list[str] = []
    env = os.environ.get(PATH_ENV)
    if env:
        out.append(env)
    for d in _DEBIAN_DIRS:
        for sub in ("openblas-pthread", "openblas-openmp", "openblas-serial", ""):
            p = Path(d, sub, "libopenblas.so.0") if sub else Path(d, "libopenblas.so.0")
            if p.exists():
                out.append(str(p))
    for prefix in {sys.prefix, sysconfig.get_config_var("prefix") or sys.prefix}:
        for name in ("libmkl_rt.so.2", "libmkl_rt.so"):
            p = Path(prefix, "lib", name)
            if p.exists():
                out.append(str(p))
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def mapped_blas() -> str | None:
    """The optimised BLAS already mapped into this process, if any (Linux /proc)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split()[-1] if line.split() else ""
        name = os.path.basename(path).lower()
        if name.startswith("lib") and any(m in name for m in _OPTIMISED_MARKERS):
            if "scipy_openblas" in name or "numpy" in path:
                continue  # numpy's private ILP64 OpenBLAS exports suffixed symbols MLX cannot use
            return path
    return None


def _has_avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def preload() -> BlasState:
    """Load the best BLAS before mlx.core; returns what happened (cached)."""
    global _STATE
    if _STATE is not None:
        return _STATE
    _STATE = _preload()
    if _STATE.status in ("too-late", "not-found"):
        warnings.warn(_STATE.detail, BlasWarning, stacklevel=3)
    return _STATE


def _preload() -> BlasState:
    def load(path: str) -> None:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)

    linux = sys.platform.startswith("linux")
    if linux and _has_avx512():
        # OpenBLAS 0.3.21 misdetects newer AVX-512 cores and falls back to slow kernels.
        os.environ.setdefault("OPENBLAS_CORETYPE", "SkylakeX")
    return decide(
        linux=linux,
        disabled=os.environ.get(DISABLE_ENV, "") not in ("", "0"),
        mapped=mapped_blas() if linux else None,
        mlx_imported="mlx.core" in sys.modules,
        paths=candidates() if linux else [],
        load=load,
    )


def decide(*, linux: bool, disabled: bool, mapped: str | None, mlx_imported: bool,
           paths: list[str], load) -> BlasState:
    """Pure decision of ``preload`` (steps 1-5), with the loader injected for tests."""
    if not linux:
        return BlasState("not-linux", None, "not Linux: MLX uses Accelerate/Metal")
    if disabled:
        return BlasState("disabled", None, f"{DISABLE_ENV} is set: BLAS preload skipped")
    if mapped:
        return BlasState("already-loaded", mapped, f"optimised BLAS already in process: {mapped}")
    if mlx_imported:
        return BlasState(
            "too-late", None,
            "mlx.core was imported before mlx-circuits, so MLX is bound to its slow reference "
            "BLAS (~5 GFLOP/s). Import attribution/sae/circuits/viz before mlx, or run with "
            f"LD_PRELOAD=<libopenblas.so.0>; {INSTALL_HINT}.",
        )
    errors = []
    for path in paths:
        try:
            load(path)
        except OSError as exc:
            errors.append(f"{path}: {exc}")
            continue
        return BlasState("loaded", path, f"loaded optimised BLAS {path}")
    tried = "; ".join(errors) if errors else "no candidate library found"
    return BlasState(
        "not-found", None,
        f"no optimised BLAS found ({tried}); MLX matmul will run at ~5 GFLOP/s. Fix: {INSTALL_HINT}.",
    )


def state() -> BlasState:
    """The recorded state (runs ``preload`` if nothing ran yet)."""
    return preload()


_THREAD_SYMBOLS = (("openblas_get_num_threads", "openblas_set_num_threads"),
                   ("MKL_Get_Max_Threads", "MKL_Set_Num_Threads"))


def set_threads(n: int) -> int | None:
    """Set the preloaded BLAS's thread count to ``n``; returns the previous count, or None
    (and changes nothing) when no preloaded OpenBLAS / MKL offers the control.

    Why: two MLX CPU streams that each run a GEMM on a multi-threaded OpenBLAS contend
    for one thread pool (measured: no faster than one stream); with one BLAS thread each,
    the two streams use both cores (``sae.train``'s split step)."""
    lib = state().library
    if lib is None:
        return None
    try:
        handle = ctypes.CDLL(lib)  # already mapped: the same handle MLX's symbols bind to
    except OSError:
        return None
    for get, put in _THREAD_SYMBOLS:
        if hasattr(handle, get) and hasattr(handle, put):
            prev = int(getattr(handle, get)())
            getattr(handle, put)(ctypes.c_int(int(n)))
            return prev
    return None
