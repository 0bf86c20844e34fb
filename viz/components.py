"""Component circuits (heads, MLPs) from a ``component_circuit.json`` record, drawn with Graphviz.

The record (written by ``circuits validate`` at the component level) is a dict:
``nodes`` (list of ``{"name", "score"?}``), ``edges`` (list of ``{"source", "target",
"score"?, "port"?}``) and provenance: ``task``, ``metric``, ``method``, ``ablation``,
``model``, ``level`` (edge or node), optional ``faithfulness``. Names may be
``L1.H2``/``L1H2`` (head), ``L0.MLP``/``L0.mlp``, ``embed``/``EMB``/``embedding`` and
``logits``.

Algorithm (``component_circuit_dot``):
  1. Check the record (one-line ``SchemaError`` naming the key or value) and
     normalise every name to ``viz.component``'s spelling (``L1.H2``, ``L0.MLP``).
  2. Edge weights are the scores; an edge without a score (a node-level circuit,
     whose edges are just the residual connections between kept nodes) gets weight
     1, and the legend says the edges are unscored. Edges that appear with several
     ports (q, k, v) are summed by ``component_to_dot``.
  3. Lay out with ``component_to_dot``: embeddings at the bottom, per layer a row
     of heads then a row for the MLP, logits on top; width ∝ |score|, colour = sign.
     The legend title names the task, its metric, the method, the ablation and the
     faithfulness.
``render_component_circuit`` writes DOT text (``.dot``) or runs Graphviz for
``.svg``/``.pdf``/``.png``; ``render_component_file`` reads the record from a JSON
file or a directory holding ``component_circuit.json``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pandas as pd

from viz._atomic import atomic_write_text
from viz.component import component_to_dot
from viz.errors import SchemaError
from viz.render import FORMATS, render
from viz.style import CircuitStyle

FILENAME = "component_circuit.json"
"""Name of the record inside a run directory."""
_HEAD = re.compile(r"l(\d+)\.?h(\d+)", re.IGNORECASE)
_MLP = re.compile(r"l(\d+)\.?mlp", re.IGNORECASE)
_EMBED = ("embed", "emb", "embedding", "embeddings")


def normalise_name(name) -> str:
    """``L1.H2``, ``L0.MLP``, ``embed`` or ``logits`` from any accepted spelling."""
    if not isinstance(name, str):
        raise SchemaError(f"component names are strings such as L0.H2, L1.MLP, embed; got {name!r}")
    key = name.strip()
    if key.lower() in _EMBED:
        return "embed"
    if key.lower() == "logits":
        return "logits"
    m = _HEAD.fullmatch(key)
    if m:
        return f"L{int(m[1])}.H{int(m[2])}"
    m = _MLP.fullmatch(key)
    if m:
        return f"L{int(m[1])}.MLP"
    raise SchemaError(f"component name {name!r} is not L<l>.H<h>, L<l>.MLP, embed or logits")


def _score(v, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SchemaError(f"{where}: score must be a finite number or null, got {v!r}")
    return float(v)


def _tables(circuit: dict) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """(nodes, edges, edges_scored) tables for ``component_to_dot`` (steps 1-2)."""
    if not isinstance(circuit, dict):
        raise SchemaError(f"a component circuit is a dict with 'nodes' and 'edges'; got {type(circuit).__name__}")
    for key in ("nodes", "edges"):
        if not isinstance(circuit.get(key), list):
            raise SchemaError(f"component circuit lacks a '{key}' list")
    names, scores = [], []
    for i, n in enumerate(circuit["nodes"]):
        if not isinstance(n, dict) or "name" not in n:
            raise SchemaError(f"component circuit node {i} must be an object with a 'name'; got {n!r}")
        names.append(normalise_name(n["name"]))
        scores.append(_score(n.get("score"), f"node {n['name']!r}"))
    src, dst, w = [], [], []
    scored = True
    for i, e in enumerate(circuit["edges"]):
        if not isinstance(e, dict) or "source" not in e or "target" not in e:
            raise SchemaError(f"component circuit edge {i} must be an object with 'source' and 'target'; got {e!r}")
        s = _score(e.get("score"), f"edge {e['source']}->{e['target']}")
        scored = scored and s is not None
        src.append(normalise_name(e["source"]))
        dst.append(normalise_name(e["target"]))
        w.append(1.0 if s is None else s)
    known = set(names)
    for extra in [n for n in dict.fromkeys(src + dst) if n not in known]:  # endpoints not listed
        names.append(extra)
        scores.append(None)
        known.add(extra)
    nodes = pd.DataFrame({"name": names, "score": [float("nan") if s is None else s for s in scores]})
    nodes = nodes.drop_duplicates("name")
    return nodes, pd.DataFrame({"source": src, "target": dst, "weight": w}), scored


def legend_title(circuit: dict, scored: bool = True) -> str:
    """Task, metric, method, ablation and faithfulness, for the figure's legend."""
    parts = []
    for key, label in (("task", "task"), ("metric", "metric"), ("method", "method"),
                       ("ablation", "ablation"), ("level", "circuit")):
        if isinstance(circuit.get(key), (str, int, float)) and str(circuit[key]):
            parts.append(f"{label}: {circuit[key]}")
    f = circuit.get("faithfulness")
    if isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f):
        parts.append(f"faithfulness {f:.3g}")
    if not scored:
        parts.append("edges unscored (node circuit: residual connections between kept nodes)")
    else:
        parts.append(f"edge width = |score| ({circuit.get('metric', 'metric')} units)")
    return " · ".join(parts)


def component_circuit_dot(circuit: dict, style: CircuitStyle | None = None) -> str:
    """DOT text of a component-circuit record (module docstring). Deterministic."""
    nodes, edges, scored = _tables(circuit)
    return component_to_dot(nodes, edges, style, title=legend_title(circuit, scored))


def render_component_circuit(circuit: dict, path: str | os.PathLike,
                             style: CircuitStyle | None = None) -> Path:
    """Write the circuit to ``path``: DOT text for ``.dot``, else Graphviz output by suffix
    (``.svg``, ``.pdf``, ``.png``). Atomic; returns the path."""
    path = Path(path)
    dot = component_circuit_dot(circuit, style)
    if path.suffix.lower() == ".dot":
        return atomic_write_text(path, dot)
    if path.suffix.lower().lstrip(".") not in FORMATS:
        raise SchemaError(f"cannot tell the figure format of {path}: use .svg, .pdf, .png or .dot")
    return render(dot, path)


def load_component_circuit(path: str | os.PathLike) -> dict:
    """The record in a ``component_circuit.json`` file, or in a directory holding one."""
    p = Path(path)
    f = p / FILENAME if p.is_dir() else p
    if not f.is_file():
        where = f"{p} holds no {FILENAME}" if p.is_dir() else f"{p} does not exist"
        raise SchemaError(f"{where}; give a {FILENAME} written by `circuits validate` "
                          "(component level) or its directory")
    try:
        rec = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"{f} is not valid JSON ({exc}); rerun `circuits validate` to rewrite it") from None
    if not isinstance(rec, dict):
        raise SchemaError(f"{f} must hold a JSON object with 'nodes' and 'edges'")
    return rec


def render_component_file(json_path: str | os.PathLike, out_path: str | os.PathLike,
                          style: CircuitStyle | None = None) -> Path:
    """Render the record at ``json_path`` (file or directory) to ``out_path`` (by suffix)."""
    return render_component_circuit(load_component_circuit(json_path), out_path, style)


def is_component_circuit(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a component-circuit file or a directory holding one (for ``render``)."""
    p = Path(path)
    if p.is_dir():
        return (p / FILENAME).is_file()
    return p.is_file() and p.name.endswith(".json") and p.name != "graph.json" and _looks_like(p)


def _looks_like(p: Path) -> bool:
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(rec, dict) and rec.get("schema") == "mlx-circuits/component-circuit"


__all__ = ["FILENAME", "component_circuit_dot", "is_component_circuit", "legend_title",
           "load_component_circuit", "normalise_name", "render_component_circuit",
           "render_component_file"]
