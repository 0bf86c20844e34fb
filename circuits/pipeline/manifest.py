"""Run manifests: each CLI command's output directory says what made it and what it holds.

Format of ``run.json`` (``format_version`` 1), one JSON object with sorted keys:
  ``kind``            always ``"mlx-circuits run manifest"``;
  ``format_version``  1 (a reader refuses a newer one and says to upgrade);
  ``command``         the subcommand (``train``, ``evaluate``, ``attribute``, ``prune``,
                      ``validate``, ``features``, ``bench``...);
  ``argv``            the full argument list after ``circuits`` (so the run can be redone);
  ``version``         the mlx-circuits version (null from an uninstalled source tree);
  ``created``         UTC time, ``YYYY-MM-DDTHH:MM:SSZ``;
  ``inputs``          name -> ``{"given": path as typed, "resolved": absolute path}``
                      (or null), e.g. ``dicts``, ``graph``, ``circuit``, ``model``;
  ``artifacts``       name -> path relative to the manifest's directory (a trailing
                      ``/`` marks a directory), e.g. ``{"graph": "graph/",
                      "scores.json": "scores.json"}``.

Algorithm:
  1. On success a command writes ``run.json`` into its output directory
     (``manifest_record`` then ``write_manifest``, atomically).
  2. ``find_manifests(run)`` walks a run directory breadth-first, at most
     ``MAX_DEPTH`` levels deep, without entering hidden (staging) directories or
     the bulky ``dictionaries/`` and ``dashboards/`` trees, and returns the path of
     every ``run.json``.
  3. ``parse_manifest(path)`` reads one and checks it against the format above:
     valid UTF-8 JSON object, the right ``kind``, a ``format_version`` this code
     reads, artifact paths that stay inside the directory. Any failure raises
     ``ManifestError`` with one line naming the file and the fix.
  4. ``rerun_command(manifest)`` gives the command line that rewrites the
     directory (used in error messages about its artifacts).
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MANIFEST = "run.json"
"""File name of a run manifest inside an output directory."""
KIND = "mlx-circuits run manifest"
"""Value of the ``kind`` field of every manifest."""
FORMAT_VERSION = 1
"""The ``format_version`` written, and the newest one read."""
MAX_DEPTH = 4
"""How many directory levels below a run directory ``walk_dirs`` descends."""
MAX_DIRS = 5000
"""Directories ``walk_dirs`` visits before giving up (a --run pointed at a home directory)."""
SKIP_DIRS = frozenset({"dictionaries", "dashboards", "__pycache__", "node_modules", ".git", ".venv"})
"""Directory names whose contents are never walked (they are artifacts themselves, or not runs)."""
_GLOBAL_FLAGS = ("--quiet", "--json", "--debug")


class ManifestError(ValueError):
    """A ``run.json`` is unreadable or does not follow the format; the one-line
    message names the file and how to fix it."""

    def __init__(self, message: str, path: Path | None = None, reason: str = "", fix: str = ""):
        super().__init__(message)
        self.path = path
        """The manifest file (None for errors about a whole directory tree)."""
        self.reason = reason or message
        """What is wrong, without the file name or the fix."""
        self.fix = fix
        """How to fix it."""


@dataclass(frozen=True)
class Manifest:
    """One parsed and checked ``run.json``."""

    path: Path
    """The ``run.json`` file."""
    command: str
    """The subcommand that wrote the directory."""
    argv: tuple[str, ...]
    """Its argument list (after ``circuits``)."""
    created: str | None
    """UTC creation time as written, or None."""
    version: str | None
    """mlx-circuits version that wrote it, or None."""
    inputs: Mapping[str, Path | None] = field(default_factory=dict)
    """Input name -> resolved absolute path (None when recorded as null)."""
    inputs_given: Mapping[str, str] = field(default_factory=dict)
    """Input name -> path as it was typed (relative to the directory the command ran in)."""
    artifacts: Mapping[str, Path] = field(default_factory=dict)
    """Artifact name -> absolute path inside ``directory`` (existence is not checked here)."""

    @property
    def directory(self) -> Path:
        """The output directory the manifest describes."""
        return self.path.parent


def manifest_record(command: str, argv: list[str], inputs: dict, artifacts: dict) -> dict:
    """The JSON object written as ``run.json`` (pure apart from the clock)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("mlx-circuits")
    except PackageNotFoundError:  # running from a source tree without install
        ver = None
    return {
        "kind": KIND, "format_version": FORMAT_VERSION, "command": command,
        "argv": list(argv), "version": ver, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": {k: (None if v is None else {"given": str(v), "resolved": str(Path(v).resolve())})
                   for k, v in inputs.items()},
        "artifacts": dict(artifacts),
    }


def write_manifest(directory: Path, record: dict) -> Path:
    """Write ``record`` as ``directory/run.json`` atomically (temporary file, fsync, rename)."""
    directory = Path(directory)
    path = directory / MANIFEST
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(record, indent=2, sort_keys=True, default=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _fix(path: Path) -> str:
    return (f"rerun the command that wrote {path.parent} (with --overwrite), "
            f"or delete {path} to have that directory's files read by name")


def _bad(path: Path, what: str, fix: str | None = None) -> ManifestError:
    fix = _fix(path) if fix is None else fix
    return ManifestError(f"{path}: {what}; {fix}", path, what, fix)


def _artifact_path(path: Path, name: str, rel: object) -> Path:
    if not isinstance(rel, str) or not rel.strip():
        raise _bad(path, f"artifact {name!r} has no path (got {rel!r})")
    p = PurePosixPath(rel.replace("\\", "/"))
    # Artifacts live inside the directory: an absolute path or a '..' would let a
    # copied or edited manifest send the reader anywhere on disk.
    if p.is_absolute() or ".." in p.parts:
        raise _bad(path, f"artifact {name!r} points outside its directory ({rel!r})")
    return path.parent / Path(*p.parts) if p.parts else path.parent


def _inputs(path: Path, raw: object) -> tuple[dict, dict]:
    if not isinstance(raw, dict):
        raise _bad(path, f"'inputs' must be an object of name -> {{given, resolved}}, got {type(raw).__name__}")
    resolved, given = {}, {}
    for name, rec in raw.items():
        if rec is None:
            resolved[name] = None
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("resolved", rec.get("given")), str):
            raise _bad(path, f"input {name!r} must be null or {{\"given\": PATH, \"resolved\": PATH}}")
        res = rec.get("resolved") or rec.get("given")
        resolved[name] = Path(res)
        given[name] = str(rec.get("given", res))
    return resolved, given


def parse_manifest(path: Path) -> Manifest:
    """Read and check one ``run.json`` (module docstring, step 3); raises ``ManifestError``."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(path, "is not UTF-8 text") from None
    except OSError as exc:
        raise _bad(path, f"cannot be read ({exc.strerror or exc})") from None
    if not text.strip():
        raise _bad(path, "is empty")
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(path, f"is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}; "
                         "truncated or edited?)") from None
    if not isinstance(rec, dict):
        raise _bad(path, f"must hold a JSON object, got {type(rec).__name__}")
    if rec.get("kind") != KIND:
        raise _bad(path, f"is not an mlx-circuits run manifest (kind {rec.get('kind')!r}, expected {KIND!r})")
    ver = rec.get("format_version")
    if isinstance(ver, bool) or not isinstance(ver, int) or ver < 1:
        raise _bad(path, f"has no valid format_version (got {ver!r})")
    if ver > FORMAT_VERSION:
        raise _bad(path, f"format_version {ver} was written by a newer mlx-circuits (this one reads "
                         f"{FORMAT_VERSION})", f"upgrade mlx-circuits, or delete {path} to have that directory's "
                         "files read by name")
    command = rec.get("command")
    if not isinstance(command, str) or not command:
        raise _bad(path, f"has no 'command' (got {command!r})")
    argv = rec.get("argv", [])
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise _bad(path, "'argv' must be a list of strings")
    arts = rec.get("artifacts")
    if not isinstance(arts, dict):
        raise _bad(path, f"'artifacts' must be an object of name -> relative path, got {type(arts).__name__}")
    artifacts = {str(k): _artifact_path(path, str(k), v) for k, v in arts.items()}
    inputs, given = _inputs(path, rec.get("inputs", {}))
    created, version = rec.get("created"), rec.get("version")
    return Manifest(path=path, command=command, argv=tuple(argv),
                    created=created if isinstance(created, str) else None,
                    version=version if isinstance(version, str) else None,
                    inputs=inputs, inputs_given=given, artifacts=artifacts)


def read_manifest(directory: Path) -> dict | None:
    """The checked manifest record of ``directory`` as a dict, or None when it has none.
    Raises ``ManifestError`` when ``run.json`` exists but is corrupt."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    parse_manifest(path)  # checks the format; the raw record is what callers print
    return json.loads(path.read_text(encoding="utf-8"))


def load_manifest(directory: Path) -> Manifest | None:
    """The parsed manifest of ``directory``, or None when it has none (``ManifestError`` if corrupt)."""
    path = Path(directory) / MANIFEST
    return parse_manifest(path) if path.is_file() else None


def walk_dirs(root: Path, max_depth: int = MAX_DEPTH, max_dirs: int = MAX_DIRS,
              on_error=None) -> Iterator[tuple[Path, int]]:
    """(directory, depth) breadth-first under ``root`` (depth 0), in sorted order, not
    entering hidden directories, ``SKIP_DIRS`` or symbolic links. ``on_error(path, exc)``
    is called for a directory that cannot be listed. Raises ``ManifestError`` after
    ``max_dirs`` directories (``root`` is then too broad to be a run)."""
    root = Path(root)
    queue, seen = [(root, 0)], 0
    while queue:
        d, depth = queue.pop(0)
        seen += 1
        if seen > max_dirs:
            raise ManifestError(f"{root} holds more than {max_dirs} directories within {max_depth} levels; "
                                "pass the run's own output directory as --run (e.g. out)")
        yield d, depth
        if depth >= max_depth:
            continue
        try:
            children = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            if on_error is not None:
                on_error(d, exc)
            continue
        for e in children:
            try:
                if e.is_dir(follow_symlinks=False) and not e.name.startswith(".") and e.name not in SKIP_DIRS:
                    queue.append((Path(e.path), depth + 1))
            except OSError:
                continue


def find_manifests(run: Path, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Every ``run.json`` under ``run`` (module docstring, step 2), breadth-first."""
    return [d / MANIFEST for d, _ in walk_dirs(run, max_depth) if (d / MANIFEST).is_file()]


def rerun_command(manifest: Manifest) -> str:
    """The command line that rewrites ``manifest``'s directory: its argv without the
    global output flags, plus ``--overwrite`` (the directory exists)."""
    argv = [a for a in manifest.argv if a not in _GLOBAL_FLAGS]
    if manifest.command not in ("render", "report", "organism", "doctor") and "--overwrite" not in argv:
        argv.append("--overwrite")
    return "circuits " + shlex.join(argv) if argv else f"circuits {manifest.command}"


__all__ = ["FORMAT_VERSION", "KIND", "MANIFEST", "MAX_DEPTH", "MAX_DIRS", "Manifest", "ManifestError",
           "SKIP_DIRS", "find_manifests", "load_manifest", "manifest_record", "parse_manifest",
           "read_manifest", "rerun_command", "walk_dirs"]
