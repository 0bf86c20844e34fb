"""``circuits render``: draw a graph, a circuit or a component circuit with Graphviz.

Algorithm:
  1. Check every input before any work, each failure one line naming the fix:
     ``--max-edges`` (a positive integer or ``all``), each ``--out`` suffix (.svg
     .pdf .png .dot), no output named twice, none an existing directory, none an
     existing file unless ``--overwrite``, and each output's directory writable
     (or creatable: its nearest existing ancestor is a writable directory).
  2. Load the input: a directory holding ``component_circuit.json`` (and no
     ``graph.json``), or a ``.json`` file (``component_circuit.json``, or another name
     carrying the component-circuit schema tag), is a component circuit, drawn by
     ``viz.components.render_component_file``; otherwise a graph directory (``Graph.load``).
  3. Graphs: the style caps the drawn edges at ``--max-edges`` (default
     ``viz.style.DEFAULT_MAX_EDGES``: only circuits with more edges are cut, and the
     legend says "showing the N strongest of M edges"); ``all`` draws every edge.
     The DOT text (which also names the target in the legend) is built once.
  4. Render every output into a hidden staging directory beside it
     (``.NAME.staging-PID-*``, removed by ``clean_stale`` if the process dies).
  5. Only when every output rendered, move each onto its path (``os.replace``, atomic
     per file). Any failure removes the staging directories and the directories
     this command created: all requested files are written, or none.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from circuits.cli._common import CLIError, clean_stale
from circuits.cli._out import emit

CHECKS_OUT_ITSELF = True
"""``--out`` is a list of files, checked here (``check_outputs``), not a directory."""
SUFFIXES = (".svg", ".pdf", ".png", ".dot")
"""Output formats, chosen by the file suffix."""
COMPONENT_FILE = "component_circuit.json"
"""File name of a component circuit (written by component-level ``circuits validate``)."""


def add_parser(sub, name: str) -> None:
    from viz.style import DEFAULT_MAX_EDGES

    p = sub.add_parser(name, help="render a graph/circuit to SVG, PDF, PNG or DOT")
    p.add_argument("--graph", type=Path, default=Path("out/circuit/graph"),
                   help=f"graph directory, or a component circuit ({COMPONENT_FILE} or its directory)")
    p.add_argument("--out", type=Path, nargs="+", default=[Path("out/circuit.svg")],
                   help="output files; format from the suffix (.svg .pdf .png .dot); all are written or none")
    p.add_argument("--max-edges", default=None, metavar="N|all",
                   help=f"draw only the N strongest edges, noted in the legend (default {DEFAULT_MAX_EDGES}; "
                        "'all' draws every edge)")
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    p.add_argument("--config", type=Path, default=None, help="TOML or JSON options file")


def parse_max_edges(value) -> int | None:
    """``--max-edges``: None (not given) -> the default cap, ``all`` -> None (no cap), else N >= 1."""
    from viz.style import DEFAULT_MAX_EDGES

    if value is None:
        return DEFAULT_MAX_EDGES
    text = str(value).strip()
    if text.lower() in ("all", "none"):
        return None
    try:
        n = int(text)
    except ValueError:
        raise CLIError(f"--max-edges {value!r} is not a number; give a positive integer, "
                       "or 'all' to draw every edge") from None
    if n <= 0:
        raise CLIError(f"--max-edges {n} would draw no edge; give a positive integer, or 'all' to draw every edge")
    return n


def _writable_dir(out: Path) -> None:
    """Refuse ``out`` when its directory can neither be written nor created (step 1)."""
    probe = out.parent
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: mkdir would fail
            raise CLIError(f"cannot write {out}: {probe} is a broken symbolic link; fix it or choose another --out")
        probe = probe.parent
    if not probe.is_dir():
        raise CLIError(f"cannot write {out}: {probe} is a file, not a directory; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write {out}: directory {probe} is not writable; choose another --out "
                       "or fix its permissions")


def check_outputs(outs, overwrite: bool) -> list[Path]:
    """The ``--out`` paths, checked before any work (step 1)."""
    # a config file may give one path as a plain string
    paths = [Path(o) for o in ([outs] if isinstance(outs, (str, os.PathLike)) else outs)]
    if not paths:
        raise CLIError("no --out file given; name at least one, e.g. --out out/circuit.svg")
    seen: dict[Path, Path] = {}
    for out in paths:
        if out.suffix.lower() not in SUFFIXES:
            what = f"suffix {out.suffix!r}" if out.suffix else "no suffix"
            raise CLIError(f"--out {out} has {what}; the format comes from the suffix: one of {' '.join(SUFFIXES)}")
        key = Path(os.path.abspath(out))
        if key in seen:
            raise CLIError(f"--out names {out} twice; give each output file once")
        seen[key] = out
        if out.is_dir():
            raise CLIError(f"--out {out} is a directory; give a file name such as {out / ('circuit' + out.suffix)}")
        if (out.exists() or out.is_symlink()) and not overwrite:
            raise CLIError(f"--out {out} already exists; pass --overwrite to replace it, or choose another --out")
        _writable_dir(out)
        clean_stale(out.parent, out.name)  # staging left by a render that was killed
    return paths


def component_json(path: Path) -> Path | None:
    """The component circuit file ``--graph`` names, or None when it names a graph (step 2).
    A JSON file under another name must carry the component-circuit schema tag, so that a
    graph's ``neuronpedia.json`` or ``graph.json`` is refused with a clear message instead
    of failing deep in the component loader."""
    if path.is_file() and path.suffix.lower() == ".json":
        if path.name == COMPONENT_FILE:
            return path
        looks = getattr(_components_module(), "is_component_circuit", None)
        if looks is not None and not looks(path):
            hint = f"--graph {path.parent}" if path.name == "graph.json" else "a graph directory"
            raise CLIError(f"--graph {path} is a JSON file but not a component circuit (no \"schema\": "
                           f"\"mlx-circuits/component-circuit\"); pass {hint} or a {COMPONENT_FILE}")
        return path
    if path.is_dir() and (path / COMPONENT_FILE).is_file() and not (path / "graph.json").is_file():
        return path / COMPONENT_FILE
    return None


def _load_graph(path: Path):
    from attribution.graph import Graph
    from attribution.graph.errors import GraphFileError

    if not path.exists():
        raise CLIError(f"--graph {path} does not exist; pass the graph directory `circuits attribute` or "
                       "`circuits prune` wrote (e.g. out/circuit/graph)")
    if path.is_dir() and not (path / "graph.json").exists():
        inner = [d for d in (path / "graph",) if (d / "graph.json").is_file()]
        hint = f"; did you mean --graph {inner[0]}?" if inner else (
            f"; pass a graph directory (with graph.json) or a component circuit ({COMPONENT_FILE})")
        raise CLIError(f"--graph {path} holds no graph.json{hint}")
    if path.is_file():
        raise CLIError(f"--graph {path} is a file; pass the graph directory that holds graph.json, "
                       f"or a component circuit .json file")
    try:
        return Graph.load(path)
    except GraphFileError as exc:
        raise CLIError(f"--graph {path} could not be read: {exc}; re-run `circuits attribute`/`circuits prune` "
                       "to write it again") from None


class _Stage:
    """Hidden staging directories beside the outputs; ``commit`` moves every file into
    place, ``abort`` removes all traces (steps 4-5)."""

    def __init__(self):
        self.dirs: dict[Path, Path] = {}
        self.created: list[Path] = []
        self.files: list[tuple[Path, Path]] = []

    def path_for(self, out: Path) -> Path:
        parent = out.parent
        if parent not in self.dirs:
            missing = []
            probe = parent
            while not probe.exists():
                missing.append(probe)
                probe = probe.parent
            parent.mkdir(parents=True, exist_ok=True)
            self.created += missing[-1:]  # the topmost directory we made; removing it removes the rest
            # the CLI's staging name, so ``clean_stale`` removes it if this process is killed
            self.dirs[parent] = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{os.getpid()}-", dir=parent))
        tmp = self.dirs[parent] / out.name
        self.files.append((tmp, out))
        return tmp

    def commit(self) -> None:
        missing = [tmp for tmp, _ in self.files if not tmp.is_file()]
        if missing:
            raise CLIError(f"the renderer wrote no {missing[0].name}; nothing was written")
        done = []
        try:
            for tmp, out in self.files:
                existed = out.exists()
                os.replace(tmp, out)
                done.append((out, existed))
        except OSError as exc:
            for out, existed in done:  # best effort: files this run added leave again
                if not existed:
                    out.unlink(missing_ok=True)
            self.abort()
            raise CLIError(f"could not move the rendered files into place ({exc.strerror or exc}); "
                           "check the output directories") from None
        self._clean()

    def _clean(self) -> None:
        for d in self.dirs.values():
            shutil.rmtree(d, ignore_errors=True)

    def abort(self) -> None:
        self._clean()
        for d in self.created:
            shutil.rmtree(d, ignore_errors=True)


def _components_module():
    """``viz.components``, or None in an install that predates it."""
    import importlib

    try:
        return importlib.import_module("viz.components")
    except ImportError:
        return None


def _component_renderer():
    draw = getattr(_components_module(), "render_component_file", None)
    if draw is None:
        raise CLIError("this install cannot draw component circuits (viz.components.render_component_file "
                       "is missing); update mlx-circuits or pass a feature graph directory")
    return draw


def _render_graph(graph, outs, tmps, max_edges) -> dict:
    from viz._atomic import atomic_write_text
    from viz.dot import edge_counts, target_label, to_dot
    from viz.render import render
    from viz.style import CircuitStyle

    style = CircuitStyle(max_edges=max_edges)
    shown, total = edge_counts(graph, style)
    dot = to_dot(graph, style=style)
    for out, tmp in zip(outs, tmps):
        if out.suffix.lower() == ".dot":
            atomic_write_text(tmp, dot)
        else:
            render(dot, tmp)
    return {"edges_shown": shown, "edges_total": total, "target": target_label(graph)}


def run(args) -> int:
    max_edges = parse_max_edges(getattr(args, "max_edges", None))
    outs = check_outputs(args.out, bool(getattr(args, "overwrite", False)))
    src = Path(args.graph)
    comp = component_json(src)
    if comp is not None:
        draw = _component_renderer()
        if args.max_edges is not None:
            raise CLIError("--max-edges applies to feature graphs; a component circuit is drawn whole, drop it")
    else:
        graph = _load_graph(src)
    stage = _Stage()
    try:
        tmps = [stage.path_for(o) for o in outs]
        if comp is not None:
            for tmp in tmps:
                draw(comp, tmp)
            info = {"component": str(comp)}
        else:
            info = _render_graph(graph, outs, tmps, max_edges)
        stage.commit()
    except BaseException:
        stage.abort()
        raise
    written = [str(o) for o in outs]
    lines = [f"wrote {w}" for w in written]
    if info.get("edges_shown", 0) < info.get("edges_total", 0):
        lines.append(f"drew the {info['edges_shown']:,} strongest of {info['edges_total']:,} edges "
                     "(--max-edges all draws every edge)")
    emit(args, {"written": written, **info}, lines)
    return 0
