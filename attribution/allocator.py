"""Keep freed large buffers in the process heap (glibc), so big temporaries cost no page faults.

MLX's CPU backend keeps no buffer cache (``mx.get_cache_memory()`` stays ~0), and
glibc serves every allocation above 32 MiB with a fresh ``mmap``: each [batch, width]
temporary of an SAE step (268 MB at 4096 x 16384) is page-faulted in and zeroed by the
kernel, then unmapped. That costs ~60 ms per pass, several passes a step.
Algorithm (``keep_freed_memory``):
  1. Do nothing unless the C library is glibc (Linux) and
     ``MLX_CIRCUITS_MALLOC`` is not ``default``.
  2. ``mallopt(M_MMAP_MAX, 0)``: large blocks come from the heap, not ``mmap``.
  3. ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)``: up to 2 GiB of freed heap memory
     is kept for reuse instead of being returned to the kernel.
  4. Remember that it was applied (idempotent; ``state()`` reports it).
The price: the process keeps its peak heap size until it exits. Callers are the
training loop and the benchmarks; nothing happens at import.
"""

from __future__ import annotations

import ctypes
import os
import platform

ENV = "MLX_CIRCUITS_MALLOC"
"""Set to ``default`` to leave the C allocator alone."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_STATE = {"applied": False, "reason": "not requested"}


def keep_freed_memory() -> bool:
    """Apply the allocator settings of the module docstring; True when they are in force."""
    if _STATE["applied"]:
        return True
    if os.environ.get(ENV, "").strip().lower() == "default":
        _STATE["reason"] = f"{ENV}=default"
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _STATE["reason"] = "not glibc"
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
    except (OSError, AttributeError) as e:
        _STATE["reason"] = f"mallopt unavailable: {e}"
        return False
    _STATE.update(applied=ok, reason="applied" if ok else "mallopt refused")
    return ok


def state() -> dict:
    """{"applied": bool, "reason": str} for environment records."""
    return dict(_STATE)


__all__ = ["ENV", "keep_freed_memory", "state"]
