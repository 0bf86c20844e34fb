"""Shared checks for the CLI's bad-input matrix (``test_bad_input_*.py``).

Every bad input must give: a non-zero exit code; exactly one line on stderr,
``circuits <command>: error: <what is wrong and how to fix it>``; no traceback and
no raw Python exception name (the message must be written for a person); and no
files left behind: ``--out`` untouched (absent, or exactly as it was) and no
staging directories beside it.
"""

from __future__ import annotations

import re
from pathlib import Path

from circuits.cli import main

RAW = ("Traceback", "ZeroDivisionError", "IndexError", "KeyError", "JSONDecodeError",
       "AttributeError", "TypeError", "UnboundLocalError", "NameError", "AssertionError",
       "internal error")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``circuits --quiet ARGV`` run in-process."""
    code = main(["--quiet", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file under ``path`` with its bytes (None when ``path`` does not exist)."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_bad_input(capsys, argv, match: str, out: Path | None = None, code: int | None = None,
                     watch: tuple[Path, ...] = ()) -> str:
    """Run ``argv`` and assert the bad-input contract (module docstring); returns the message.

    ``match``: a case-insensitive regex the one-line message must contain.
    ``out``: the ``--out`` path of the command (checked unchanged, no staging beside it).
    ``watch``: other paths that must be left exactly as they were (inputs, siblings)."""
    argv = [str(a) for a in argv]
    cmd = argv[0] if argv else ""
    paths = ([Path(out)] if out is not None else []) + [Path(w) for w in watch]
    before = {p: snapshot(p) for p in paths}
    parents = {p.parent for p in paths if p.parent.is_dir()}
    listing = {d: {c.name for c in d.iterdir()} for d in parents}
    rc, stdout, stderr = run_cli(capsys, *argv)
    assert rc != 0, f"exit 0 on bad input {argv}; stdout: {stdout[-500:]}"
    if code is not None:
        assert rc == code, f"exit {rc}, expected {code}: {stderr}"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line for {argv}, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith(f"circuits {cmd}: error: ") or line.startswith("circuits: error: "), line
    for raw in RAW:
        assert raw not in line, f"raw exception text {raw!r} in {line!r}"
    assert re.search(match, line, re.IGNORECASE), f"{match!r} not in {line!r}"
    for p in paths:
        assert snapshot(p) == before[p], f"{p} changed on bad input {argv}"
    for d, names in listing.items():
        now = {c.name for c in d.iterdir()}
        new = sorted(now - names)
        assert not new, f"bad input {argv} left {new} in {d}"
    return line
