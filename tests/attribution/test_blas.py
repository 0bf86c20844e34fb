"""The Linux BLAS preload: decision logic, subprocess behaviour, and the speed guard."""

import os
import subprocess
import sys
import warnings

import pytest

from attribution import _blas
from attribution.perf import matmul_gflops

LINUX = sys.platform.startswith("linux")


def _fail_load(path):
    raise OSError("cannot open")


def test_decide_order_of_checks():
    ok = lambda p: None  # noqa: E731
    kw = dict(linux=True, disabled=False, mapped=None, mlx_imported=False, paths=["/x/a.so"], load=ok)
    assert _blas.decide(**{**kw, "linux": False}).status == "not-linux"
    assert _blas.decide(**{**kw, "disabled": True}).status == "disabled"
    assert _blas.decide(**{**kw, "mapped": "/l/libopenblas.so"}).library == "/l/libopenblas.so"
    assert _blas.decide(**{**kw, "mlx_imported": True}).status == "too-late"
    st = _blas.decide(**kw)
    assert (st.status, st.library) == ("loaded", "/x/a.so")


def test_decide_falls_through_failed_candidates_and_names_the_fix():
    calls = []

    def load(p):
        calls.append(p)
        if p != "/b.so":
            raise OSError("nope")

    st = _blas.decide(linux=True, disabled=False, mapped=None, mlx_imported=False,
                      paths=["/a.so", "/b.so"], load=load)
    assert st.status == "loaded" and st.library == "/b.so" and calls == ["/a.so", "/b.so"]
    st = _blas.decide(linux=True, disabled=False, mapped=None, mlx_imported=False,
                      paths=["/a.so"], load=_fail_load)
    assert st.status == "not-found" and "apt-get install -y libopenblas0-pthread" in st.detail


def _run(code, **env):
    e = {**os.environ, **env}
    e.pop("LD_PRELOAD", None)
    return subprocess.run([sys.executable, "-W", "always", "-c", code], env=e,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not LINUX, reason="BLAS preload is Linux-only")
def test_late_import_warns_once_with_fix():
    r = _run("import mlx.core\nimport attribution\nfrom attribution import _blas\n"
             "import sae, circuits\nprint(_blas.state().status)")
    if not _blas.candidates():
        pytest.skip("no optimised BLAS installed on this machine")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "too-late"
    assert r.stderr.count("BlasWarning") == 1 and "LD_PRELOAD" in r.stderr


@pytest.mark.skipif(not LINUX, reason="BLAS preload is Linux-only")
def test_env_var_disables():
    r = _run("import attribution\nfrom attribution import _blas\nprint(_blas.state().status)",
             MLX_CIRCUITS_NO_BLAS_PRELOAD="1")
    assert r.returncode == 0 and r.stdout.strip() == "disabled"


@pytest.mark.skipif(not LINUX, reason="BLAS preload is Linux-only")
def test_package_import_maps_openblas_into_process():
    if not _blas.candidates():
        pytest.skip("no optimised BLAS installed (apt-get install libopenblas0-pthread)")
    r = _run("import circuits\nimport mlx.core\nfrom attribution import _blas\n"
             "print(_blas.state().status, _blas.mapped_blas())")
    assert r.returncode == 0, r.stderr
    status, mapped = r.stdout.split()
    assert status == "loaded" and "blas" in mapped.lower()


def test_matmul_speed_through_our_import_path():
    """A 1024² float32 matmul must reach 50 GFLOP/s when an optimised BLAS is present."""
    st = _blas.state()
    if LINUX and st.library is None and not _blas.candidates():
        pytest.skip("no optimised BLAS installed here (apt-get install -y libopenblas0-pthread)")
    with warnings.catch_warnings():
        best = max(matmul_gflops(1024, repeats=7).gflops for _ in range(3))
    assert best >= 50.0, f"matmul at {best:.1f} GFLOP/s through {st.library}"
