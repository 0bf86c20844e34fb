"""The ``circuits`` CLI: doctor output, error handling contract."""

import json
import subprocess
import sys

import pytest

from circuits.cli import build_parser, main


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "circuits.cli", *argv], capture_output=True,
                          text=True, timeout=300)


def test_doctor_json_reports_blas_and_measured_speed():
    r = _cli("--json", "doctor", "--size", "256")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    for key in ("blas_status", "matmul_gflops", "mlx_version", "mlx_device", "dot", "gxx"):
        assert key in rec
    assert rec["matmul_gflops"] > 0


def test_unknown_subcommand_exits_nonzero():
    r = _cli("no-such-command")
    assert r.returncode != 0 and "invalid choice" in r.stderr


def test_errors_are_one_line_without_traceback(monkeypatch, capsys):
    from circuits.cli import doctor

    def boom(args):
        raise FileNotFoundError("model directory /nope does not exist")

    monkeypatch.setattr(doctor, "run", boom)
    assert main(["doctor"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["circuits doctor: error: model directory /nope does not exist"]


@pytest.mark.parametrize("exc", [KeyError("x"), IndexError("list index out of range"),
                                 ZeroDivisionError("division by zero")])
def test_unexpected_errors_say_internal(monkeypatch, capsys, exc):
    """A bug, not bad input: one line that says so and how to get the traceback."""
    from circuits.cli import doctor

    def boom(args):
        raise exc

    monkeypatch.setattr(doctor, "run", boom)
    assert main(["doctor"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error" in err[0] and type(exc).__name__ in err[0] and "--debug" in err[0]


def test_parser_lists_subcommands():
    text = build_parser().format_help()
    assert "doctor" in text and "demo" in text
