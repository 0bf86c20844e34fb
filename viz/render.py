"""Rendering DOT text with Graphviz: the only place in ``viz`` that runs ``dot``.

1. Accept DOT text, or anything ``to_dot`` accepts (a Graph, a circuit) plus a style.
2. Find ``dot`` on PATH; when missing raise ``GraphvizNotFoundError`` with the install
   command (``apt-get install -y graphviz`` / ``brew install graphviz``).
3. Pick the engine: DOT text with the graph attribute ``layout="neato"`` (the fixed
   positions of ``to_dot``) runs as ``dot -Kneato -n2`` (keep the pinned positions,
   in points, route only the edges); anything else as plain ``dot``.
4. Pipe the DOT text to Graphviz with ``-T<format>`` (PNG at ``dpi``), with a timeout;
   a non-zero exit raises ``RenderError`` with Graphviz's stderr.
5. ``render`` picks the format from the file suffix (svg, pdf, png, or the
   diagnostic json/plain) and writes the bytes atomically.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from viz._atomic import atomic_write_bytes
from viz.errors import GraphvizNotFoundError, RenderError
from viz.style import CircuitStyle

FORMATS = ("svg", "pdf", "png", "json", "plain")
"""Output formats ``render``/``run_dot`` accept (svg/pdf are vector)."""
_NEATO = re.compile(r'\bgraph\s*\[[^\]\n]*?\blayout\s*=\s*"?neato\b')
INSTALL_HINT = "install Graphviz: `apt-get install -y graphviz` (Debian/Ubuntu) or `brew install graphviz` (macOS)"


def dot_executable() -> str:
    """Path of Graphviz ``dot``; raises ``GraphvizNotFoundError`` when it is missing."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizNotFoundError(f"Graphviz `dot` was not found on PATH; {INSTALL_HINT}")
    return exe


def _dot_text(dot_or_graph, style: CircuitStyle | None) -> str:
    if isinstance(dot_or_graph, str):
        return dot_or_graph
    from viz.dot import to_dot

    return to_dot(dot_or_graph, style)


def engine_args(text: str) -> list[str]:
    """Graphviz arguments for this DOT text (step 3): fixed positions need ``-Kneato -n2``."""
    return ["-Kneato", "-n2"] if _NEATO.search(text) else []


def run_dot(dot_or_graph, fmt: str = "svg", style: CircuitStyle | None = None, dpi: int = 150,
            timeout: float = 120.0) -> bytes:
    """Run Graphviz (``dot``, or ``dot -Kneato -n2`` for fixed positions) with ``-T<fmt>``
    on DOT text (or a graph/circuit) and return the output bytes."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise RenderError(f"unsupported format {fmt!r}; one of {FORMATS}")
    text = _dot_text(dot_or_graph, style)
    cmd = [dot_executable(), *engine_args(text), f"-T{fmt}"]
    if fmt == "png":
        cmd.append(f"-Gdpi={int(dpi)}")
    try:
        proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RenderError(f"`{' '.join(cmd[1:])}` did not finish in {timeout:g} s") from None
    except OSError as exc:  # e.g. removed between which() and exec
        raise GraphvizNotFoundError(f"could not run Graphviz `dot` ({exc}); {INSTALL_HINT}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise RenderError(f"Graphviz `{' '.join(cmd[1:])}` failed with exit code {proc.returncode}: {err[:2000]}")
    return proc.stdout


def render(dot_or_graph, path: str | os.PathLike, style: CircuitStyle | None = None, dpi: int = 150) -> Path:
    """Render to ``path``; the format comes from its suffix (``.svg``, ``.pdf``, ``.png``).
    Written atomically; returns the path."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise RenderError(f"cannot tell the format of {path}: use a suffix in {['.' + f for f in FORMATS]}")
    return atomic_write_bytes(path, run_dot(dot_or_graph, fmt, style, dpi))


def render_svg(dot_or_graph, style: CircuitStyle | None = None) -> str:
    """SVG text of DOT text or a graph/circuit (for inlining into HTML)."""
    return run_dot(dot_or_graph, "svg", style).decode("utf-8")


__all__ = ["FORMATS", "INSTALL_HINT", "dot_executable", "engine_args", "render", "render_svg", "run_dot"]
