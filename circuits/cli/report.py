"""``circuits report``: one offline HTML report from a run directory.

Algorithm:
  1. Check ``--run`` (a readable directory) and ``--out`` (default
     ``RUN/report.html``) before any work: ``--out`` must be an ``.html`` file path,
     not a directory nor one of the run's artifacts, in a writable place; an existing
     file is refused unless ``--overwrite``.
  2. ``circuits.pipeline.run_report.collect_report`` walks ``--run`` for ``run.json``
     manifests and known artifact files (the quick-start layout ``out/tc``,
     ``out/eval``, ``out/graph``, ``out/circuit``, ``out/val``, ``out/features``,
     ``out/bench``, ``out/components``, and the demo's ``out/``), follows manifest
     inputs that live elsewhere, and fills the sections: dictionary quality, circuit
     (with its figure), prune scores, feature-circuit validation, component
     validation, benchmark, feature dashboards, run manifests.
  3. A section with nothing says so, with the command that makes it ("not found —
     run `circuits bench --out out/bench`"), in the page and on stdout.
  4. A corrupt input (truncated CSV, invalid JSON, a manifest naming a missing
     file) stops the report with one line naming the file and the fix; with
     ``--keep-going`` its section is marked ``unreadable: FILE: REASON`` instead and
     the report is written. Nothing found at all is an error.
  5. The page is built in memory and written atomically; stdout lists every
     section's status (``--json``: one object).
"""

from __future__ import annotations

import os
from pathlib import Path

from circuits.cli._common import CLIError
from circuits.cli._out import emit

CHECKS_OUT_ITSELF = True
"""``--out`` is a report file, not an output directory: ``main`` leaves it to ``check_report_out``."""


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="write a self-contained HTML report from a run directory")
    p.add_argument("--run", type=Path, default=Path("out"),
                   help="directory the commands wrote into (searched a few levels deep for run.json and artifacts)")
    p.add_argument("--out", type=Path, default=None, help="report file (default RUN/report.html)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report file")
    p.add_argument("--keep-going", action="store_true",
                   help="mark sections whose files are corrupt as unreadable instead of failing")
    p.add_argument("--config", type=Path, default=None, help="TOML or JSON options file")


def check_report_out(out: Path, overwrite: bool) -> Path:
    """Refuse an unusable report path before any work (module docstring, step 1)."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise CLIError(f"--out {out} is not an .html file path; pass e.g. {out / 'report.html'}"
                       if not out.suffix else f"--out {out} must end in .html (the report is one HTML page)")
    if out.is_dir():
        raise CLIError(f"--out {out} is a directory; pass a file path such as {out / 'report.html'}")
    if out.exists() and not overwrite:
        raise CLIError(f"report {out} already exists; pass --overwrite to replace it, or choose another --out")
    anc = out.parent
    while not anc.exists() and anc.parent != anc:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise CLIError(f"--out {out}: {anc} is a file, not a directory; choose another --out")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise CLIError(f"--out {out}: {anc} is not writable; choose a writable --out")
    return out


def _line(s) -> str:
    """One summary line of a section (found: its sources; missing: the command; unreadable: why)."""
    if s.status == "found":
        text = "found: " + ", ".join(s.sources) if s.sources else s.detail or "found"
    elif s.status == "missing":
        text = f"not found — {s.detail.split(' — ', 1)[-1]}" if " — " in s.detail else f"not found — {s.detail}"
    else:
        text = s.detail
    return f"  {s.title + ':':28s} {text}"


def run(args) -> int:
    from circuits.pipeline.run_report import SECTIONS, check_run_dir, collect_report
    from viz.report import write_report

    run_dir = check_run_dir(args.run)
    out = check_report_out(args.out if args.out is not None else run_dir / "report.html", args.overwrite)
    rep = collect_report(run_dir, out, keep_going=args.keep_going)
    write_report(out, rep.sections, title=f"mlx-circuits report: {run_dir}")
    lines = [f"wrote {out} ({rep.found} of {len(SECTIONS)} result sections found)"]
    for s in rep.summary:
        lines.append(_line(s))
        if s.status == "found":
            lines += [f"    {p}" for p in s.problems]
    record = {"report": str(out), "found": rep.found,
              "sections": [{"title": s.title, "status": s.status, "sources": list(s.sources),
                            "detail": s.detail, "problems": list(s.problems)} for s in rep.summary]}
    emit(args, record, lines)
    return 0
