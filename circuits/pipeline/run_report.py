"""Collect a run directory's artifacts into report sections (``circuits report --run DIR``).

Algorithm (``collect_report(run, report_path, keep_going)``):
  1. Walk RUN breadth-first, at most ``MAX_DEPTH`` levels deep, without entering
     hidden (staging) directories, ``dictionaries/`` or ``dashboards/``
     (``manifest.walk_dirs``). In every directory read ``run.json`` when there is
     one and note the known artifact files (``KNOWN_FILES``, ``graph.json``,
     ``dashboards/index.html``). Files are recognised by name whether or not a
     manifest lists them: the demo writes none, and copied results keep working.
  2. Check each manifest: a corrupt ``run.json``, or an artifact it lists that is
     missing on disk, is a problem (step 6).
  3. Follow the manifests' ``circuit`` and ``graph`` inputs that lie outside RUN
     (e.g. ``circuits validate --circuit ../circuit/graph``) when RUN itself holds
     no graph of that role (a copied run's manifests still name the original's
     absolute paths): scan that directory, and its parent when the parent's
     ``run.json`` lists it as an artifact (the ``prune`` layout ``circuit/graph``)
     or holds ``scores.json``.
  4. Decide roles. A graph directory is a pruned circuit when a ``circuit`` input
     names it, a ``prune`` manifest lists it, it is the demo's ``circuit/`` (the
     demo directory: a ``demo`` manifest, or ``graph/`` and ``circuit/`` side by
     side), or it is ``graph/`` beside a ``scores.json`` or inside ``circuit/``;
     otherwise it is a full attribution graph. A ``validation.json`` is
     feature-level, component-level or the demo's by its content (``level`` /
     ``figures``); when it cannot be read, by its manifest (``demo``, or
     ``validate`` with ``--circuit`` for feature level) or its sibling files.
  5. Fill the sections in order, each from every directory that has its files,
     labelled by path and the command that wrote them: dictionary quality; circuit
     (graph and circuit summaries, the circuit figure: an existing ``circuit.svg`` /
     ``NAME.svg`` beside the circuit unless older than it, else drawn with viz);
     prune scores; feature-circuit validation (scores, faithfulness curve, IG and
     graph-vs-patching scatters; existing SVGs are used unless older than their
     CSV); component validation (scores, curve, the component circuit figure from
     ``component_circuit.svg`` unless older than ``component_circuit.json``, else
     that record drawn with ``viz.components``, else the selected edges of
     ``component_scores.csv``; top components, predicted vs measured); benchmark; feature
     dashboards (relative links, density, co-activation); then the run manifests.
     A section with nothing is *missing* and says the command that makes it.
  6. Problems (corrupt CSV/JSON/SVG/graph, missing artifacts, corrupt manifests):
     by default the first raises ``ReportError``, one line naming the file, the
     reason and the fix (the command from the manifest that rewrites it). With
     ``keep_going`` each is shown in its section as ``unreadable: FILE: REASON``
     (the section is *unreadable* when nothing else filled it) and the rest of the
     report is still written. CSV artifacts are written by pandas, so a CSV whose
     rows have fewer fields than its header, or whose last line has no newline, is
     treated as truncated.
  7. When no section found anything (and nothing was unreadable) raise
     ``ReportError``: there is nothing to report. A report path that is one of
     the run's artifacts is refused too.
Library code: nothing prints; the CLI prints the ``summary``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from circuits.pipeline.manifest import (
    MANIFEST, MAX_DEPTH, Manifest, ManifestError, parse_manifest, rerun_command, walk_dirs,
)

DICTIONARY = "Dictionary quality"
CIRCUIT = "Circuit"
PRUNE = "Prune scores"
FEATURE_VAL = "Feature-circuit validation"
COMPONENT_VAL = "Component validation"
BENCHMARK = "Benchmark"
DASHBOARDS = "Feature dashboards"
MANIFESTS = "Run manifests"
SECTIONS = (DICTIONARY, CIRCUIT, PRUNE, FEATURE_VAL, COMPONENT_VAL, BENCHMARK, DASHBOARDS)
"""Result sections in report order (the run-manifest section follows them)."""

KNOWN_FILES = ("dictionary_metrics.csv", "train_log.jsonl", "scores.json", "validation.json",
               "feature_faithfulness_curve.csv", "faithfulness_curve.csv", "faithfulness_curve.svg",
               "component_scores.csv", "predicted_vs_measured.csv", "ig_vs_patching.csv",
               "ig_vs_patching.svg", "graph_vs_patching.svg", "component_circuit.svg",
               "component_circuit.json", "benchmark.csv", "benchmark.md", "feature_stats.csv",
               "coactivation_pairs.csv", "log_density.svg", "circuit.svg", "graph.json", "neuronpedia.json",
               "graph.neuronpedia.json")
"""Artifact file names recognised in any directory of a run."""
RESULT_FILES = frozenset(KNOWN_FILES) - {"train_log.jsonl", "neuronpedia.json", "graph.neuronpedia.json",
                                         "benchmark.md"}
"""Known files that fill a section (the others only count as provenance)."""
FOLLOWED_INPUTS = ("circuit", "graph")
"""Manifest inputs followed outside the run directory (step 3)."""
MAX_FIGURE_EDGES = 120
"""Edges drawn when the report renders a circuit itself (the strongest; noted in the legend)."""
TOP_ROWS = 15
"""Rows shown of long tables (component scores, co-activating pairs)."""

_SECTION_OF = {"dictionary_metrics.csv": DICTIONARY, "graph.json": CIRCUIT, "graph.safetensors": CIRCUIT,
               "graph": CIRCUIT, "neuronpedia.json": CIRCUIT, "circuit.svg": CIRCUIT, "scores.json": PRUNE,
               "benchmark.csv": BENCHMARK, "benchmark.md": BENCHMARK, "dashboards": DASHBOARDS,
               "feature_stats.csv": DASHBOARDS, "coactivation_pairs.csv": DASHBOARDS,
               "log_density.svg": DASHBOARDS, "feature_faithfulness_curve.csv": FEATURE_VAL,
               "ig_vs_patching.csv": FEATURE_VAL, "component_scores.csv": COMPONENT_VAL,
               "component_circuit.svg": COMPONENT_VAL, "component_circuit.json": COMPONENT_VAL}
_MAKER = {"dictionary_metrics.csv": "evaluate", "scores.json": "prune", "graph.json": "attribute",
          "benchmark.csv": "bench", "feature_stats.csv": "features", "coactivation_pairs.csv": "features",
          "log_density.svg": "features", "index.html": "features", "circuit.svg": "render"}


class ReportError(ValueError):
    """``circuits report`` cannot go on; the one-line message names the file and the fix."""


class _Unreadable(Exception):
    """An artifact could not be used; ``reason`` says why (no path: the caller adds it)."""

    def __init__(self, reason: str, path: Path | None = None):
        super().__init__(reason)
        self.reason = reason
        self.path = path


@dataclass(frozen=True)
class Problem:
    """One unreadable input (step 6)."""

    path: Path
    """The file or directory."""
    reason: str
    """What is wrong with it."""
    fix: str
    """What rewrites it (a command line, or what to delete)."""
    section: str
    """The section it belongs to."""


@dataclass(frozen=True)
class SectionSummary:
    """What one section of the report holds (for the CLI and ``--json``)."""

    title: str
    """Section title."""
    status: str
    """``found``, ``missing`` or ``unreadable``."""
    sources: tuple[str, ...] = ()
    """Files and directories the section was filled from, as shown in the report."""
    detail: str = ""
    """Missing: why and the command that makes it. Unreadable: ``unreadable: FILE: REASON``."""
    problems: tuple[str, ...] = ()
    """``unreadable: FILE: REASON`` for every problem of the section (also when found)."""


@dataclass(frozen=True)
class RunReport:
    """The collected report: viz sections to write and a summary to print."""

    sections: tuple
    """``viz.report.Section`` objects in order (summary first)."""
    summary: tuple[SectionSummary, ...]
    """One entry per result section, then the run-manifest section."""
    manifests: tuple[Manifest, ...]
    """Every manifest read (inside the run and followed inputs)."""

    @property
    def found(self) -> int:
        """How many result sections hold results."""
        return sum(s.status == "found" for s in self.summary if s.title in SECTIONS)


@dataclass
class _Dir:
    """One scanned directory (mutable while the walk fills it; private)."""

    path: Path
    """The directory, resolved."""
    manifest: Manifest | None = None
    """Its own ``run.json``, parsed (None when absent or corrupt)."""
    files: dict = field(default_factory=dict)
    """Known artifact name -> path found in it (``dashboards``: the index page)."""
    external: str = ""
    """Non-empty when reached through a manifest input outside the run: which one."""


# ------------------------------------------------------------------ readers ----
def _text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise _Unreadable("is a directory, expected a file") from None
    except OSError as exc:
        raise _Unreadable(f"cannot be read ({exc.strerror or exc})") from None
    if not data.strip():
        raise _Unreadable("is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Unreadable("is not UTF-8 text") from None


def read_csv(path: Path, required: tuple = (), allow_empty: bool = False):
    """A CSV artifact as a DataFrame, checked for truncation and ``required`` columns
    (step 6); raises ``_Unreadable``."""
    import pandas as pd

    text = _text(path)
    rows = list(csv.reader(io.StringIO(text)))
    if rows and any(len(r) != len(rows[0]) for r in rows[1:] if r):
        bad = next(i for i, r in enumerate(rows[1:], start=2) if r and len(r) != len(rows[0]))
        raise _Unreadable(f"is truncated or malformed (line {bad} has {len(rows[bad - 1])} fields, the header "
                          f"{len(rows[0])})")
    if not text.endswith("\n"):
        raise _Unreadable("is truncated (its last line has no newline)")
    try:
        df = pd.read_csv(io.StringIO(text))
    except (ValueError, pd.errors.ParserError) as exc:
        raise _Unreadable(f"is not a readable CSV ({_line(exc)})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise _Unreadable(f"lacks the columns {missing} (has {list(df.columns)[:12]})")
    if not len(df) and not allow_empty:
        raise _Unreadable("has a header but no rows")
    return df


def read_json(path: Path, required: tuple = ()) -> dict:
    """A JSON object artifact with ``required`` keys; raises ``_Unreadable``."""
    text = _text(path)
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Unreadable(f"is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}; "
                          "truncated or edited?)") from None
    if not isinstance(rec, dict):
        raise _Unreadable(f"must hold a JSON object, got {type(rec).__name__}")
    missing = [k for k in required if k not in rec]
    if missing:
        raise _Unreadable(f"lacks the keys {missing} (has {sorted(rec)[:12]})")
    return rec


def read_svg(path: Path):
    """An SVG file as ``viz.report.Svg``; raises ``_Unreadable`` when it is not SVG."""
    from viz.report import Svg, clean_svg

    text = _text(path)
    body = clean_svg(text)
    if "<svg" not in body[:4096] or "</svg>" not in body[-4096:]:
        raise _Unreadable("is not a complete SVG document (truncated?)")
    return Svg(body)


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _number(rec: dict, key: str, path: Path) -> float | None:
    v = rec.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Unreadable(f"{key} is {v!r}, not a number", path)
    return float(v)


def _scalar_table(df):
    """Columns holding one scalar per row (per-latent arrays dropped), rounded."""
    keep = [c for c in df.columns
            if not df[c].map(lambda v: isinstance(v, str) and v.lstrip().startswith("[")).any()]
    return df[keep].round(4)


def _kv_table(rec: dict, keys=None):
    import pandas as pd

    items = [(k, rec[k]) for k in (keys or sorted(rec)) if k in rec and not isinstance(rec[k], (dict, list))]
    return pd.DataFrame({"figure": [k for k, _ in items],
                         "value": [v if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
                                   for _, v in items]})


def _numeric(df, cols, path):
    import numpy as np
    import pandas as pd

    out = df.copy()
    for c in cols:
        out[c] = pd.to_numeric(out[c], errors="coerce")
        if not np.isfinite(out[c].to_numpy(dtype=float)).any():
            raise _Unreadable(f"column {c!r} holds no finite numbers", path)
    return out


# ---------------------------------------------------------------- collector ----
class _Collector:
    def __init__(self, run: Path, report: Path, keep_going: bool):
        self.run = Path(run)
        self.root = self.run.resolve()
        self.report = Path(report).resolve()
        self.keep_going = keep_going
        self.dirs: dict[Path, _Dir] = {}
        self.order: list[Path] = []
        self.problems: list[Problem] = []
        self.circuit_hint: set[Path] = set()
        self.gone: list[str] = []
        self._cache: dict = {}

    # -- paths
    def show(self, path: Path) -> str:
        p = Path(path)
        try:
            rel = p.resolve().relative_to(self.root)
        except (ValueError, OSError):
            return str(p)
        return str(self.run / rel) if rel.parts else str(self.run)

    def inside(self, path: Path) -> bool:
        try:
            Path(path).resolve().relative_to(self.root)
            return True
        except (ValueError, OSError):
            return False

    # -- problems
    def owner(self, d: Path) -> Manifest | None:
        """The manifest that wrote directory ``d``: its own, or its parent's when that lists
        ``d`` as an artifact (``prune``'s ``circuit/graph``)."""
        info = self.dirs.get(d)
        if info is not None and info.manifest is not None:
            return info.manifest
        parent = self.dirs.get(d.parent)
        if parent is not None and parent.manifest is not None:
            if any(a.exists() and a.resolve() == d for a in parent.manifest.artifacts.values()):
                return parent.manifest
        return None

    def fix_for(self, path: Path) -> str:
        path = Path(path).resolve()
        for d in (path, path.parent):
            m = self.owner(d)
            if m is not None:
                return f"rerun `{rerun_command(m)}`"
        for d in (path.parent, path.parent.parent):
            if self._is_demo(d):
                return f"rerun `circuits demo --out {self.show(d)}`"
        maker = _MAKER.get(path.name)
        if path.name == "graph.json" and self._graph_role(path.parent) == "circuit":
            maker = "prune"
        if maker is None and path.name in ("validation.json", "faithfulness_curve.csv", "component_scores.csv",
                                           "feature_faithfulness_curve.csv", "predicted_vs_measured.csv",
                                           "component_circuit.json", "component_circuit.svg"):
            maker = "validate"
        where = self.show(path.parent.parent if path.name == "graph.json" and maker == "prune" else path.parent)
        if maker == "render":
            return "redraw it with `circuits render --graph CIRCUIT --out " + self.show(path) + "` or delete it"
        if maker:
            return f"rewrite it with `circuits {maker} ... --out {where} --overwrite`"
        return "rewrite it with the command that made it, or delete it"

    def problem(self, section: str, path: Path, reason: str, fix: str | None = None) -> None:
        prob = Problem(Path(path), reason, fix if fix is not None else self.fix_for(path), section)
        if not self.keep_going:
            raise ReportError(f"{self._where(prob)}; {prob.fix}, or pass --keep-going to report it as unreadable")
        if prob not in self.problems:  # two sections may look at one file (the demo's validation.json)
            self.problems.append(prob)

    def _where(self, prob: Problem) -> str:
        shown = self.show(prob.path)
        if shown in prob.reason or str(prob.path) in prob.reason:
            return prob.reason
        return f"{shown}: {prob.reason}"

    def unreadable_line(self, prob: Problem) -> str:
        return f"unreadable: {self._where(prob)}"

    # -- walking (steps 1-3)
    def walk(self) -> None:
        def listing_failed(d, exc):
            self.problem(MANIFESTS, d, f"cannot be listed ({exc.strerror or exc})",
                         "fix its permissions or move it out of the run directory")

        try:
            for d, _ in walk_dirs(self.run, MAX_DEPTH, on_error=listing_failed):
                self.scan(d.resolve())
        except ManifestError as exc:  # too many directories: --run is not a run
            raise ReportError(str(exc)) from None
        manifests = [self.dirs[d].manifest for d in list(self.order) if self.dirs[d].manifest is not None]
        for m in manifests:
            p = m.inputs.get("circuit")
            if p is not None:
                self.circuit_hint.add(Path(p).resolve() if Path(p).exists() else Path(p))
        # Inputs outside the run fill gaps only: a copied run's manifests still name the
        # original's absolute paths, and its own graphs must not be joined by those.
        have = {self._graph_role(i.path) for i in self.graph_dirs()}
        for m in manifests:
            self.follow(m, [n for n in FOLLOWED_INPUTS if n not in have])

    def scan(self, d: Path, external: str = "") -> _Dir:
        if d in self.dirs:
            return self.dirs[d]
        info = self.dirs[d] = _Dir(d, external=external)
        self.order.append(d)
        if (d / MANIFEST).is_file():
            try:
                info.manifest = parse_manifest(d / MANIFEST)
            except ManifestError as exc:
                fix = exc.fix.replace(str(d / MANIFEST), self.show(d / MANIFEST)).replace(str(d), self.show(d))
                self.problem(MANIFESTS, d / MANIFEST, exc.reason, fix)
        for name in KNOWN_FILES:
            if (d / name).is_file():
                info.files[name] = d / name
        if (d / "dashboards" / "index.html").is_file():
            info.files["dashboards"] = d / "dashboards" / "index.html"
        if (d / "dictionaries" / "index.json").is_file():
            info.files["dictionaries"] = d / "dictionaries"
        m = info.manifest
        if m is not None:
            for name, p in sorted(m.artifacts.items()):
                if not p.exists():
                    base = p.name or name.rstrip("/")
                    section = _SECTION_OF.get(base, _SECTION_OF.get(name.rstrip("/"), MANIFESTS))
                    if base in ("validation.json", "faithfulness_curve.csv", "predicted_vs_measured.csv"):
                        section = FEATURE_VAL if "--circuit" in m.argv else COMPONENT_VAL
                    self.problem(section, p, f"is listed in {self.show(m.path)} but missing",
                                 f"rerun `{rerun_command(m)}`")
        return info

    def follow(self, m: Manifest, names) -> None:
        for name in names:
            if name not in m.inputs or m.inputs[name] is None:
                continue
            p = Path(m.inputs[name])
            if self.inside(p):
                continue
            if not p.exists():
                self.gone.append(f"the {name} input recorded in {self.show(m.path)} ({p}) no longer exists")
                continue
            if not p.is_dir():
                continue
            via = f"input {name!r} of {self.show(m.path)}"
            self.scan(p.resolve(), via)
            parent = p.resolve().parent
            listed = False
            if (parent / MANIFEST).is_file():
                try:
                    pm = parse_manifest(parent / MANIFEST)
                    listed = any(a.resolve() == p.resolve() for a in pm.artifacts.values() if a.exists())
                except ManifestError:
                    listed = True  # scan() reports the corrupt manifest itself
            if listed or (parent / "scores.json").is_file():
                self.scan(parent, via)

    # -- roles (step 4)
    def _is_demo(self, d: Path) -> bool:
        info = self.dirs.get(d)
        if info is None:
            return False
        if info.manifest is not None:
            return info.manifest.command == "demo"
        return (d / "graph" / "graph.json").is_file() and (d / "circuit" / "graph.json").is_file()

    def _graph_role(self, d: Path) -> str:
        if d in self.circuit_hint:
            return "circuit"
        m = self.owner(d)
        if m is not None and m.command != "demo":
            return "circuit" if m.command == "prune" else "graph"
        if d.name == "circuit" or (d.name == "graph" and ((d.parent / "scores.json").is_file()
                                                          or d.parent.name == "circuit")):
            return "circuit"
        return "graph"

    def validation_level(self, info: _Dir) -> str:
        """feature, component or demo (step 4)."""
        try:
            rec = self.json(info.files["validation.json"])
            if rec.get("level") == "component":
                return "component"
            if "figures" in rec:
                return "demo"
            if rec.get("level") == "feature":
                return "feature"
        except _Unreadable:
            pass
        m = info.manifest
        if m is not None and m.command == "validate":
            return "feature" if "--circuit" in m.argv else "component"
        if m is not None and m.command == "demo":
            return "demo"
        if "component_scores.csv" in info.files:
            return "component"
        if "feature_faithfulness_curve.csv" in info.files:
            return "feature"
        return "demo" if self._is_demo(info.path) else "feature"

    # -- cached readers
    def json(self, path: Path, required: tuple = ()) -> dict:
        key = ("json", path)
        if key not in self._cache:
            try:
                self._cache[key] = read_json(path)
            except _Unreadable as exc:
                self._cache[key] = exc
        got = self._cache[key]
        if isinstance(got, _Unreadable):
            raise got
        missing = [k for k in required if k not in got]
        if missing:
            raise _Unreadable(f"lacks the keys {missing} (has {sorted(got)[:12]})")
        return got

    def label(self, info: _Dir) -> str:
        m = self.owner(info.path)
        if m is not None:
            how = f"written by `circuits {m.command}`" + (f" on {m.created}" if m.created else "")
        elif self._is_demo(info.path) or self._is_demo(info.path.parent):
            how = "written by `circuits demo`"
        else:
            how = "recognised by file name (no run.json)"
        return f"{self.show(info.path)}: {how}" + (f"; reached as the {info.external}" if info.external else "")

    def dirs_with(self, *names: str) -> list[_Dir]:
        out = [self.dirs[d] for d in self.order if any(n in self.dirs[d].files for n in names)]
        return sorted(out, key=lambda i: (bool(i.external), self.show(i.path)))

    def graph_dirs(self) -> list[_Dir]:
        return self.dirs_with("graph.json")

    def dicts_path(self) -> str | None:
        for info in self.dirs_with("dictionaries"):
            return self.show(info.files["dictionaries"])
        return None


# ----------------------------------------------------------------- sections ----
class _Section:
    def __init__(self, c: _Collector, title: str):
        self.c, self.title = c, title
        self.items: list = []
        self.sources: list[str] = []
        self.note = ""

    def part(self, info: _Dir, files: list[Path], build, section: str | None = None) -> bool:
        """Run ``build()`` -> items; a failure becomes a problem of this section."""
        from viz.report import Heading

        try:
            items = build()
        except _Unreadable as exc:
            path = exc.path or (files[0] if files else info.path)
            self.c.problem(section or self.title, path, exc.reason)
            return False
        if items:
            self.items.append(Heading(self.c.label(info)))
            self.items.extend(items)
            self.sources.extend(self.c.show(f) for f in files)
        return bool(items)

    def guarded(self, path: Path, fn):
        """``fn()`` with its ``_Unreadable`` pinned on ``path``."""
        try:
            return fn()
        except _Unreadable as exc:
            raise _Unreadable(exc.reason, exc.path or path) from None

    def result(self, hint: str):
        from viz.report import Note, Section

        probs = [p for p in self.c.problems if p.section == self.title]
        lines = tuple(self.c.unreadable_line(p) for p in probs)
        items = list(self.items) + [Note(f"{ln}; {p.fix}") for ln, p in zip(lines, probs)]
        if self.items:
            status, detail = "found", ""
            sec = Section(self.title, items, self.note)
        elif probs:
            status, detail = "unreadable", "; ".join(lines)
            sec = Section(self.title, items, detail, status="unreadable")
        else:
            status, detail = "missing", hint
            sec = Section(self.title, [], hint, status="missing")
        summary = SectionSummary(self.title, status, tuple(dict.fromkeys(self.sources)), detail, lines)
        return sec, summary


def _fig_svg_or_plot(c: _Collector, info: _Dir, svg_name: str, csv_path: Path | None, plot, deps=()):
    """An existing figure (unless older than its data), else ``plot(csv)``; returns (items, files)."""
    from viz.report import Note

    svg = info.files.get(svg_name)
    data = [p for p in [csv_path, *deps] if p is not None]
    fresh = svg is not None and all(svg.stat().st_mtime >= p.stat().st_mtime - 1 for p in data)
    if svg is not None and (fresh or csv_path is None):
        return [read_svg_at(svg)], [svg]
    if csv_path is None:
        return [], []
    items = [plot(csv_path)]
    if svg is not None:
        items.append(Note(f"{c.show(svg)} is older than {c.show(csv_path)}; drawn afresh from the CSV"))
    return items, [csv_path]


def read_svg_at(path: Path):
    """``read_svg`` with the failure pinned on ``path``."""
    try:
        return read_svg(path)
    except _Unreadable as exc:
        raise _Unreadable(exc.reason, path) from None


def _curve_figure(df, title: str, xlabel: str, method: str):
    from viz.plots import faithfulness_curves

    d = df.assign(method=method, pct=df["fraction"] * 100)
    d = d[d["pct"] > 0]
    return faithfulness_curves(d[["method", "pct", "faithfulness"]], title=title, xlabel=xlabel)


def _scatter(df, x: str, y: str, title: str, xlabel: str | None = None, ylabel: str | None = None, path=None):
    import numpy as np

    from viz.plots import predicted_vs_measured

    d = _numeric(df, (x, y), path)
    ok = np.isfinite(d[x].to_numpy(float)) & np.isfinite(d[y].to_numpy(float))
    kw = {k: v for k, v in (("xlabel", xlabel), ("ylabel", ylabel)) if v}
    return predicted_vs_measured(d[x].to_numpy(float)[ok], d[y].to_numpy(float)[ok], title=title, **kw)


def dictionary_section(c: _Collector):
    s = _Section(c, DICTIONARY)
    for info in c.dirs_with("dictionary_metrics.csv"):
        f = info.files["dictionary_metrics.csv"]

        def build(f=f):
            df = read_csv(f, required=("name",))
            if not {"l0", "fvu"} & set(df.columns):
                raise _Unreadable("lacks the metric columns l0 and fvu")
            return [_scalar_table(df)]

        s.part(info, [f], lambda f=f, b=build: s.guarded(f, b))
    dicts = c.dicts_path()
    if dicts:
        hint = f"run `circuits evaluate --dicts {dicts} --out {c.run / 'eval'}`"
    else:
        hint = (f"run `circuits train --out {c.run / 'tc'}`, then "
                f"`circuits evaluate --dicts {c.run / 'tc' / 'dictionaries'} --out {c.run / 'eval'}`")
    return s.result(f"no dictionary_metrics.csv — {hint}")


def _graph_row(c: _Collector, d: Path, role: str) -> dict:
    rec = c.json(d / "graph.json", required=("n_nodes", "metadata", "nodes"))
    if not (d / "graph.safetensors").is_file():
        raise _Unreadable("graph.safetensors is missing beside it", d / "graph.json")
    md = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
    types = rec.get("nodes", {}).get("type", []) if isinstance(rec.get("nodes"), dict) else []
    prompt = md.get("prompt")
    if not isinstance(prompt, str):  # the CLI records token ids, not text, for task prompts
        nodes = rec.get("nodes") if isinstance(rec.get("nodes"), dict) else {}
        text, kinds = nodes.get("token", []), nodes.get("type", [])
        prompt = "".join(str(t) for t, k in zip(text, kinds) if k == "token") if len(text) == len(kinds) else ""
    return {"role": role, "path": c.show(d), "method": str(md.get("method", "")),
            "prompt": prompt if len(prompt) <= 70 else prompt[:67] + "...",
            "nodes": int(rec.get("n_nodes", 0)), "edges": int(rec.get("n_edges", -1)),
            "features": int(sum(t == "feature" for t in types)), "errors": int(sum(t == "error" for t in types))}


def _circuit_svg_candidates(d: Path) -> list[Path]:
    """Where ``circuits render`` / the demo put a circuit's figure (module docstring, step 5)."""
    out = [d / "circuit.svg", d.parent / f"{d.name}.svg"]
    if d.name == "circuit":
        out.append(d.parent / "circuit.svg")
    if d.name == "graph":
        out += [d.parent / "circuit.svg", d.parent.parent / f"{d.parent.name}.svg"]
    return out


def _draw_circuit(d: Path):
    from attribution.graph import Graph
    from attribution.graph.errors import GraphError
    from viz.dot import to_dot
    from viz.errors import GraphvizNotFoundError, RenderError
    from viz.render import render_svg
    from viz.report import Note, Svg, clean_svg
    from viz.style import CircuitStyle

    try:
        graph = Graph.load(d)
    except GraphError as exc:
        raise _Unreadable(_line(exc), d / "graph.json") from None
    try:
        return Svg(clean_svg(render_svg(to_dot(graph, style=CircuitStyle(max_edges=MAX_FIGURE_EDGES)))))
    except (GraphvizNotFoundError, RenderError) as exc:
        return Note(f"circuit figure not drawn: {_line(exc)}")


def circuit_section(c: _Collector):
    import pandas as pd

    from viz.report import Note

    s = _Section(c, CIRCUIT)
    used_svgs: set[Path] = set()
    rows = []
    for info in c.graph_dirs():
        d = info.path
        role = c._graph_role(d)

        def build(d=d, role=role):
            row = _graph_row(c, d, role)
            rows.append(row)
            if role != "circuit":
                return []
            svgs = [p for p in _circuit_svg_candidates(d) if p.is_file()]
            gj = d / "graph.json"
            fresh = [p for p in svgs if p.stat().st_mtime >= gj.stat().st_mtime - 1]
            if fresh:
                used_svgs.add(fresh[0].resolve())
                s.sources.append(c.show(fresh[0]))
                return [read_svg_at(fresh[0]), Note(f"figure: {c.show(fresh[0])}")]
            note = (f"{c.show(svgs[0])} is older than the circuit; drawn afresh" if svgs
                    else f"no circuit.svg beside it; drawn here (at most {MAX_FIGURE_EDGES} edges)")
            used_svgs.update(p.resolve() for p in svgs)
            return [_draw_circuit(d), Note(note)]

        s.part(info, [d], lambda d=d, b=build: s.guarded(d / "graph.json", b))
    for info in c.dirs_with("circuit.svg"):
        svg = info.files["circuit.svg"]
        if svg.resolve() in used_svgs:
            continue
        s.part(info, [svg], lambda svg=svg: [read_svg_at(svg),
                                              Note(f"{c.show(svg)}: no circuit graph found beside it")])
    if rows:
        s.items.insert(0, pd.DataFrame(rows))
        s.sources[:0] = [r["path"] for r in rows]
    circuits = [r for r in rows if r["role"] == "circuit"]
    graphs = [r for r in rows if r["role"] == "graph"]
    if rows and not circuits:
        s.note = (f"no pruned circuit found — run `circuits prune --graph {graphs[0]['path']} "
                  f"--out {c.run / 'circuit'}`")
    return s.result(_circuit_hint(c, graphs))


def _circuit_hint(c: _Collector, graphs: list[dict]) -> str:
    gone = "; ".join(c.gone)
    if graphs:
        hint = f"run `circuits prune --graph {graphs[0]['path']} --out {c.run / 'circuit'}`"
    else:
        dicts = c.dicts_path() or str(c.run / "tc" / "dictionaries")
        hint = (f"run `circuits attribute --dicts {dicts} --out {c.run / 'graph'}`, then "
                f"`circuits prune --graph {c.run / 'graph'} --out {c.run / 'circuit'}`")
    return f"no graph or circuit — {hint}" + (f" ({gone})" if gone else "")


def prune_section(c: _Collector):
    import pandas as pd

    from viz.report import Note

    s = _Section(c, PRUNE)
    for info in c.dirs_with("scores.json"):
        f = info.files["scores.json"]

        def build(f=f):
            rec = c.json(f, required=("scores",))
            sc = rec["scores"]
            if not isinstance(sc, dict) or not all(isinstance(sc.get(k), dict) for k in ("full", "pruned")):
                raise _Unreadable("'scores' must map full/pruned/merged to score objects")
            rows = [{"graph": k, **{m: _number(v, m, f) for m in v}} for k, v in sc.items() if isinstance(v, dict)]
            kept = (f"{rec.get('nodes', '?')}/{rec.get('nodes_full', '?')} nodes and {rec.get('edges', '?')} edges "
                    f"kept (method {rec.get('method', '?')})")
            return [pd.DataFrame(rows), Note(kept)]

        s.part(info, [f], lambda f=f, b=build: s.guarded(f, b))
    for info in c.dirs_with("validation.json"):
        if "scores.json" in info.files or c.validation_level(info) != "demo":
            continue
        f = info.files["validation.json"]

        def build_demo(f=f):
            fig = c.json(f, required=("figures",))["figures"]
            if not isinstance(fig, dict):
                raise _Unreadable("'figures' must be an object")
            rows = [{"graph": g, "replacement": _number(fig, f"replacement_{g}", f),
                     "completeness": _number(fig, f"completeness_{g}", f)} for g in ("full", "pruned")
                    if f"replacement_{g}" in fig]
            if not rows:
                return []
            kept = f"{fig.get('circuit_nodes', '?')}/{fig.get('graph_nodes', '?')} nodes kept"
            return [pd.DataFrame(rows), Note(kept)]

        s.part(info, [f], lambda f=f, b=build_demo: s.guarded(f, b), section=FEATURE_VAL)
    graphs = [{"path": c.show(i.path)} for i in c.graph_dirs() if c._graph_role(i.path) == "graph"]
    return s.result(_circuit_hint(c, graphs).replace("no graph or circuit", "no scores.json"))


_DEMO_KEYS = ("prompt", "answer", "wrong", "faithfulness", "completeness_patching", "ig_vs_patching_r",
              "atp_vs_patching_r", "graph_vs_patching_r_constrained", "graph_vs_patching_r_iterative",
              "graph_nodes", "graph_edges", "circuit_nodes", "circuit_edges")
_FEATURE_KEYS = ("faithfulness", "completeness", "f_full", "f_circuit", "f_empty", "f_complement",
                 "n_features", "n_errors", "n_tokens", "ablation")


def feature_validation_section(c: _Collector):
    from viz.report import Note

    s = _Section(c, FEATURE_VAL)
    for info in c.dirs_with("validation.json", "feature_faithfulness_curve.csv"):
        f = info.files.get("validation.json")
        level = c.validation_level(info) if f is not None else "feature"
        if level == "component":
            continue
        files: list[Path] = []

        def build(info=info, f=f, level=level, files=files):
            items = []
            if f is not None:
                rec = c.json(f)
                if level == "demo":
                    fig = c.json(f, required=("figures",))["figures"]
                    if not isinstance(fig, dict):
                        raise _Unreadable("'figures' must be an object", f)
                    _number(fig, "faithfulness", f)
                    faith = rec.get("faithfulness") if isinstance(rec.get("faithfulness"), dict) else {}
                    both = {**faith, **fig}
                    keys = [k for k in _DEMO_KEYS if k in both] + sorted(k for k in both if k not in _DEMO_KEYS)
                    items += [_kv_table(both, keys), Note("ablation: counterfactual (the task's ABC prompt)")]
                else:
                    c.json(f, required=("faithfulness",))
                    _number(rec, "faithfulness", f)
                    items.append(_kv_table(rec, [k for k in _FEATURE_KEYS if k in rec] +
                                           sorted(k for k in rec if k not in _FEATURE_KEYS and k != "level")))
                files.append(f)
            curve = info.files.get("feature_faithfulness_curve.csv") or info.files.get("faithfulness_curve.csv")

            def plot_curve(p):
                df = _numeric(read_csv(p, required=("fraction", "faithfulness")), ("fraction", "faithfulness"), p)
                return _curve_figure(df, "Feature-circuit faithfulness (patching)",
                                     "graph nodes kept, by influence (%)", "influence ranking")

            def ig_plot(p):
                return _scatter(read_csv(p, required=("ig", "patching")), "ig", "patching",
                                "IG node scores vs exact patching", path=p)

            def graph_plot(p):
                return _scatter(read_csv(p, required=("predicted_total", "measured_iterative")), "predicted_total",
                                "measured_iterative", "Graph-predicted vs measured feature ablation",
                                "predicted by the graph (total effect)", "measured by patching", path=p)

            pvm = info.files.get("predicted_vs_measured.csv") if level == "demo" else None
            for svg, data, plot in (("faithfulness_curve.svg", curve, plot_curve),
                                    ("ig_vs_patching.svg", info.files.get("ig_vs_patching.csv"), ig_plot),
                                    ("graph_vs_patching.svg", pvm, graph_plot)):
                got, used = _fig_svg_or_plot(c, info, svg, data, lambda p, plot=plot: s.guarded(p, lambda: plot(p)))
                items += got
                files += used
            return items

        first = f or info.files["feature_faithfulness_curve.csv"]
        s.part(info, files, lambda b=build, first=first: s.guarded(first, b))
    return s.result(f"no feature-level validation.json — run `circuits validate --circuit "
                    f"{_first_circuit(c)} --graph {_first_graph(c)} --dicts "
                    f"{c.dicts_path() or c.run / 'tc' / 'dictionaries'} --out {c.run / 'val'}`")


def _first_circuit(c: _Collector) -> str:
    for i in c.graph_dirs():
        if c._graph_role(i.path) == "circuit":
            return c.show(i.path)
    return str(c.run / "circuit" / "graph")


def _first_graph(c: _Collector) -> str:
    for i in c.graph_dirs():
        if c._graph_role(i.path) == "graph":
            return c.show(i.path)
    return str(c.run / "graph")


_COMPONENT_KEYS = ("faithfulness", "completeness", "cpr", "cmd", "n_selected", "ig_vs_patching_r", "method",
                   "ablation")


def _component_figure(record: dict):
    """SVG of a ``component_circuit.json``-style record (``viz.components``)."""
    from viz.components import component_circuit_dot
    from viz.errors import GraphvizNotFoundError, RenderError, SchemaError
    from viz.render import render_svg
    from viz.report import Note, Svg, clean_svg

    try:
        dot = component_circuit_dot(record)
    except (SchemaError, KeyError, TypeError, ValueError) as exc:
        raise _Unreadable(f"cannot be drawn ({_line(exc)})") from None
    try:
        return Svg(clean_svg(render_svg(dot)))
    except (GraphvizNotFoundError, RenderError) as exc:
        return Note(f"component circuit figure not drawn: {_line(exc)}")


def _component_record_from_scores(df, rec: dict) -> dict | None:
    """The selected edges of ``component_scores.csv`` as a component-circuit record
    (validate runs that predate ``component_circuit.json``); None for node-level scores."""
    import pandas as pd

    sel = df[df["in_circuit"].astype(str).str.lower().isin(("true", "1"))]
    sel = sel[sel["downstream"].notna() & (sel["downstream"].astype(str).str.len() > 0)]
    if not len(sel):
        return None
    score = pd.to_numeric(sel["score"], errors="coerce").fillna(0.0)
    edges = [{"source": str(u), "target": str(d), "score": float(w)}
             for u, d, w in zip(sel["upstream"], sel["downstream"], score)]
    nodes = [{"name": n} for n in dict.fromkeys(x for e in edges for x in (e["source"], e["target"]))]
    return {"nodes": nodes, "edges": edges, "level": "edge",
            **{k: rec[k] for k in ("task", "metric", "method", "ablation", "faithfulness") if k in rec}}


def component_validation_section(c: _Collector):
    from viz.report import Heading, Note

    s = _Section(c, COMPONENT_VAL)
    for info in c.dirs_with("validation.json"):
        if c.validation_level(info) != "component":
            continue
        f = info.files["validation.json"]
        files: list[Path] = []

        def build(info=info, f=f, files=files):
            rec = c.json(f, required=("faithfulness",))
            _number(rec, "faithfulness", f)
            items = [_kv_table(rec, [k for k in _COMPONENT_KEYS if k in rec] +
                               sorted(k for k in rec if k not in _COMPONENT_KEYS and k != "level"))]
            files.append(f)
            method = str(rec.get("method", "ranking"))
            curve = info.files.get("faithfulness_curve.csv")
            if curve is not None:
                def plot(p=curve):
                    df = _numeric(read_csv(p, required=("fraction", "faithfulness")), ("fraction", "faithfulness"), p)
                    return _curve_figure(df, f"Component-circuit faithfulness ({rec.get('ablation', '')} ablation)",
                                         "edges kept (%)", method)
                items.append(s.guarded(curve, plot))
                files.append(curve)
            scores = None
            if "component_scores.csv" in info.files:
                p = info.files["component_scores.csv"]
                scores = s.guarded(p, lambda p=p: read_csv(p, required=("unit", "score")))
                files.append(p)
            fig = None
            svg, cj = info.files.get("component_circuit.svg"), info.files.get("component_circuit.json")
            if svg is not None and (cj is None or svg.stat().st_mtime >= cj.stat().st_mtime - 1):
                fig = read_svg_at(svg)
                files.append(svg)
            elif cj is not None:
                fig = s.guarded(cj, lambda cj=cj: _component_figure(c.json(cj, required=("nodes", "edges"))))
                files.append(cj)
            elif scores is not None and {"upstream", "downstream", "in_circuit"} <= set(scores.columns):
                record = _component_record_from_scores(scores, rec)
                if record is not None:
                    fig = s.guarded(info.files["component_scores.csv"], lambda r=record: _component_figure(r))
            if fig is not None:
                items += [Heading("Component circuit"), fig]
            if scores is not None:
                top = scores.sort_values("rank") if "rank" in scores else scores
                cols = [col for col in ("unit", "score", "rank", "in_circuit") if col in top]
                items += [Note(f"top {min(TOP_ROWS, len(top))} of {len(top)} scored units"), top[cols].head(TOP_ROWS)]
            if "predicted_vs_measured.csv" in info.files:
                p = info.files["predicted_vs_measured.csv"]
                items.append(s.guarded(p, lambda p=p: _scatter(
                    read_csv(p, required=("predicted", "measured")), "predicted", "measured",
                    f"{method} node effects vs exact patching", path=p)))
                files.append(p)
            return items

        s.part(info, files, lambda f=f, b=build: s.guarded(f, b))
    return s.result(f"no component-level validation.json — run `circuits validate --task ioi --method eap-ig "
                    f"--ablation counterfactual --out {c.run / 'components'}`")


def benchmark_section(c: _Collector):
    s = _Section(c, BENCHMARK)
    for info in c.dirs_with("benchmark.csv"):
        f = info.files["benchmark.csv"]
        s.part(info, [f], lambda f=f: s.guarded(f, lambda: [_scalar_table(read_csv(f, required=("method",)))]))
    return s.result(f"no benchmark.csv — run `circuits bench --out {c.run / 'bench'}`")


def dashboards_section(c: _Collector):
    import numpy as np
    import pandas as pd

    from viz.report import Links, Note

    s = _Section(c, DASHBOARDS)
    for info in c.dirs_with("dashboards", "feature_stats.csv", "log_density.svg", "coactivation_pairs.csv"):
        files: list[Path] = []

        def build(info=info, files=files):
            items = []
            idx = info.files.get("dashboards")
            if idx is not None:
                rel = os.path.relpath(idx.resolve(), c.report.parent)
                items.append(Links({f"feature dashboards of {c.show(info.path)}":
                                    urllib.parse.quote(rel.replace(os.sep, "/"))}))
                files.append(idx)
            if "feature_stats.csv" in info.files:
                p = info.files["feature_stats.csv"]

                def stats(p=p):
                    df = _numeric(read_csv(p, required=("feature", "density")), ("density",), p)
                    dens = df["density"].to_numpy(float)
                    return pd.DataFrame([{"features": len(df), "alive": int((dens > 0).sum()),
                                          "dead": int((dens <= 0).sum()),
                                          "median density": float(np.nanmedian(dens)),
                                          "max density": float(np.nanmax(dens))}])
                items.append(s.guarded(p, stats))
                files.append(p)
            if "log_density.svg" in info.files:
                items.append(read_svg_at(info.files["log_density.svg"]))
                files.append(info.files["log_density.svg"])
            if "coactivation_pairs.csv" in info.files:
                p = info.files["coactivation_pairs.csv"]
                df = s.guarded(p, lambda p=p: read_csv(p, allow_empty=True))
                if len(df):
                    items += [Note(f"top {min(TOP_ROWS, len(df))} of {len(df)} co-activating pairs "
                                   f"({c.show(p)})"), _scalar_table(df.head(TOP_ROWS))]
                else:
                    items.append(Note(f"{c.show(p)}: no co-activating pairs"))
                files.append(p)
            return items

        s.part(info, files, build)
    dicts = c.dicts_path() or str(c.run / "tc" / "dictionaries")
    return s.result(f"no dashboards/index.html — run `circuits features --dicts {dicts} --out {c.run / 'features'}`")


def manifests_section(c: _Collector, manifests: list[Manifest]):
    import pandas as pd

    s = _Section(c, MANIFESTS)
    rows = [{"directory": c.show(m.directory), "command": m.command, "created": m.created or "",
             "version": m.version or "", "artifacts": len(m.artifacts),
             "inputs": ", ".join(f"{k}={v}" for k, v in sorted(m.inputs_given.items()))} for m in manifests]
    if rows:
        s.items.append(pd.DataFrame(rows))
        s.sources.extend(c.show(m.path) for m in manifests)
    no_manifest = [c.show(d) for d in c.order if c.owner(d) is None and set(c.dirs[d].files) & RESULT_FILES]
    if no_manifest:
        s.note = "read by file name (no run.json): " + ", ".join(no_manifest)
    sec, summ = s.result("no run.json manifests (files were recognised by name)")
    if summ.status == "missing":  # not a result: the files were simply read by name
        from viz.report import Section

        detail = summ.detail + (f"; {s.note}" if s.note else "")
        sec = Section(MANIFESTS, [], detail)
        summ = SectionSummary(MANIFESTS, "found", (), detail, ())
    return sec, summ


def _summary_section(summaries):
    import pandas as pd

    from viz.report import Section

    rows = [{"section": s.title, "status": {"found": "found", "missing": "not found"}.get(s.status, s.status),
             "details": ", ".join(s.sources) if s.status == "found" else s.detail}
            for s in summaries]
    return Section("Summary", [pd.DataFrame(rows)])


def check_run_dir(run: Path) -> Path:
    """``run`` if it is a readable directory, else ``ReportError`` saying what to pass."""
    run = Path(run)
    if not run.exists():
        raise ReportError(f"--run {run} does not exist; pass the directory your commands wrote into "
                          "(e.g. out), or run `circuits demo` first")
    if not run.is_dir():
        raise ReportError(f"--run {run} is a file; pass the directory your commands wrote into (e.g. out)")
    if not os.access(run, os.R_OK | os.X_OK):
        raise ReportError(f"--run {run} cannot be read; fix its permissions")
    return run


def collect_report(run: Path, report: Path, keep_going: bool = False) -> RunReport:
    """Collect ``run`` into report sections (module docstring). ``report`` is where the
    page will be written (dashboard links are made relative to it). Raises ``ReportError``."""
    run = check_run_dir(run)
    c = _Collector(run, report, keep_going)
    c.walk()
    for info in c.dirs.values():
        if any(p.resolve() == c.report for p in info.files.values()):
            raise ReportError(f"--out {report} is one of the run's artifacts; choose another --out "
                              "(e.g. RUN/report.html)")
    built = [dictionary_section(c), circuit_section(c), prune_section(c), feature_validation_section(c),
             component_validation_section(c), benchmark_section(c), dashboards_section(c)]
    manifests = [c.dirs[d].manifest for d in c.order if c.dirs[d].manifest is not None]
    built.append(manifests_section(c, manifests))
    summaries = tuple(s for _, s in built)
    if not any(s.status != "missing" for s in summaries if s.title in SECTIONS) and not c.problems:
        seen = ", ".join(f"{c.show(m.directory)} ({m.command})" for m in manifests)
        raise ReportError(
            f"{run} holds no results to report"
            + (f" (only {seen})" if seen else ": no run.json manifests and none of dictionary_metrics.csv, "
               f"graph.json, scores.json, validation.json, benchmark.csv, dashboards/ within {MAX_DEPTH} levels")
            + f"; run the quick-start commands with --out under {run} (e.g. `circuits evaluate ... --out "
              f"{run / 'eval'}`), or `circuits demo --out {run}`")
    sections = (_summary_section(summaries),) + tuple(sec for sec, _ in built)
    return RunReport(sections, summaries, tuple(manifests))


__all__ = ["KNOWN_FILES", "SECTIONS", "Problem", "ReportError", "RunReport", "SectionSummary", "check_run_dir",
           "collect_report", "read_csv", "read_json", "read_svg"]
