"""attribution.allocator: freed large buffers are reused without page faults (glibc only)."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt tuning is glibc-only")

_PROBE = r"""
import json, resource, sys
import attribution
from attribution import allocator
import mlx.core as mx
applied = allocator.keep_freed_memory() if sys.argv[1] == "on" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n = 64 * 2 ** 20  # 256 MiB of float32
mx.eval(mx.ones((n,)) * 2)  # first use: allocate, touch, free
before = faults()
for _ in range(3):
    mx.eval(mx.ones((n,)) * 2)
print(json.dumps({"applied": applied, "faults": faults() - before, "state": allocator.state()}))
"""


def _probe(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_removes_page_faults():
    off, on = _probe("off"), _probe("on")
    assert on["applied"] and on["state"]["applied"]
    pages = 3 * 2 * 64 * 2 ** 20 * 4 // 4096  # two 256 MiB buffers per pass, three passes
    assert off["faults"] > pages // 2       # glibc mmaps and unmaps every big buffer
    assert on["faults"] < pages // 20       # ...unless freed heap memory is kept


def test_env_opt_out():
    r = _probe("on", MLX_CIRCUITS_MALLOC="default")
    assert not r["applied"] and "MLX_CIRCUITS_MALLOC" in r["state"]["reason"]
