"""``circuits render`` end to end (in-process): the default edge cap on a ~100-node
circuit and its legend note, ``--max-edges N|all``, every format written, ``--overwrite``,
relative paths, the named target, and the dispatch of component circuits to
``viz.components.render_component_file``. Bad input lives in
``tests/circuits/test_bad_input_render.py``."""

from __future__ import annotations

import json
import re
import shutil
import sys
import types
from pathlib import Path

import pytest
from viz_synthetic import make_circuit

from circuits.cli import main
from viz.style import DEFAULT_MAX_EDGES

EDGE_LINE = re.compile(r'^  "[^"]+" -> "[^"]+" ', re.MULTILINE)
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([*map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _no_staging(d: Path) -> None:
    assert not [p.name for p in d.rglob("*") if ".staging-" in p.name]


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, int]:
    """A saved 107-node circuit with 2,535 edges (a large pruned circuit)."""
    g = make_circuit(n_layers=6, n_pos=12, per_layer=15, n_errors=3, seed=0, fan_in=30, focus=5)
    d = tmp_path_factory.mktemp("big") / "graph"
    g.save(d)
    return d, g.n_edges


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, int]:
    g = make_circuit()
    d = tmp_path_factory.mktemp("small") / "graph"
    g.save(d)
    return d, g.n_edges


def test_default_caps_a_large_circuit_and_says_so(big, tmp_path, capsys):
    graph, n = big
    assert len(make_circuit(n_layers=6, n_pos=12, per_layer=15, n_errors=3, seed=0, fan_in=30,
                            focus=5).nodes) == 107 and n > DEFAULT_MAX_EDGES
    code, out, err = cli(capsys, "render", "--graph", graph, "--out", tmp_path / "c.dot")
    assert code == 0, err
    dot = (tmp_path / "c.dot").read_text()
    assert len(EDGE_LINE.findall(dot)) == DEFAULT_MAX_EDGES == 120
    assert f"showing the 120 strongest of {n:,} edges" in dot
    assert f"drew the 120 strongest of {n:,} edges (--max-edges all draws every edge)" in out
    code, out, err = cli(capsys, "--json", "render", "--graph", graph, "--out", tmp_path / "c.dot", "--overwrite")
    rec = json.loads(out)
    assert code == 0 and rec["edges_shown"] == 120 and rec["edges_total"] == n
    assert rec["target"].startswith('top logits: " Mary" (p=0.62)') and rec["written"] == [str(tmp_path / "c.dot")]


@pytest.mark.parametrize("flag,want", [("all", None), ("ALL", None), ("37", 37), ("100000", None)])
def test_max_edges_flag(big, tmp_path, capsys, flag, want):
    graph, n = big
    code, out, err = cli(capsys, "render", "--graph", graph, "--out", tmp_path / "c.dot", "--max-edges", flag)
    assert code == 0, err
    dot = (tmp_path / "c.dot").read_text()
    assert len(EDGE_LINE.findall(dot)) == (want or n)
    assert ("showing the" in dot) == (want is not None) and ("drew the" in out) == (want is not None)


def test_max_edges_from_a_config_file(big, tmp_path, capsys):
    graph, n = big
    cfg = tmp_path / "render.toml"
    cfg.write_text(f'max_edges = 25\nout = "{tmp_path / "c.dot"}"\n')
    code, _, err = cli(capsys, "render", "--graph", graph, "--config", cfg)
    assert code == 0, err
    assert len(EDGE_LINE.findall((tmp_path / "c.dot").read_text())) == 25


def test_small_circuit_is_drawn_whole(small, tmp_path, capsys):
    graph, n = small
    assert n < DEFAULT_MAX_EDGES
    code, out, err = cli(capsys, "render", "--graph", graph, "--out", tmp_path / "c.dot")
    assert code == 0, err
    dot = (tmp_path / "c.dot").read_text()
    assert len(EDGE_LINE.findall(dot)) == n and "showing" not in dot and "drew the" not in out


@needs_dot
def test_every_format_written_and_overwrite(small, tmp_path, capsys, monkeypatch):
    graph, _ = small
    monkeypatch.chdir(tmp_path)  # bare file names: the output directory is "."
    outs = ["c.svg", "c.pdf", "c.png", "figs/new/c.dot"]
    code, out, err = cli(capsys, "render", "--graph", graph, "--out", *outs)
    assert code == 0, err
    assert Path("c.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert Path("c.pdf").read_bytes()[:5] == b"%PDF-" and Path("c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path("figs/new/c.dot").read_text().startswith('digraph "circuit"')
    assert out.splitlines()[:4] == [f"wrote {o}" for o in outs]
    _no_staging(tmp_path)
    assert oct(Path("c.svg").stat().st_mode & 0o777) != "0o600"  # published files get the umask mode
    Path("c.svg").write_text("old")
    code, _, err = cli(capsys, "render", "--graph", graph, "--out", "c.svg")
    assert code == 1 and "already exists; pass --overwrite" in err and Path("c.svg").read_text() == "old"
    code, _, err = cli(capsys, "render", "--graph", graph, "--out", "c.svg", "--overwrite")
    assert code == 0, err
    assert "<svg" in Path("c.svg").read_text()
    _no_staging(tmp_path)


@needs_dot
def test_target_is_named_in_the_rendered_svg(tmp_path, capsys):
    from attribution.graph import Graph

    g = make_circuit()
    md = dict(g.metadata, target={"kind": "logit_diff", "answer": " Kate", "wrong": " Anna",
                                  "label": 'logit(" Kate") − logit(" Anna")'})
    g2 = Graph(g.nodes, g.adjacency, g.logit_weights, md, g.dropped_mass)
    g2.save(tmp_path / "graph")
    code, _, err = cli(capsys, "render", "--graph", tmp_path / "graph", "--out", tmp_path / "c.svg")
    assert code == 0, err
    svg = (tmp_path / "c.svg").read_text()
    assert "target: " in svg and "logit(&quot; Kate&quot;) − logit(&quot; Anna&quot;)" in svg


def _fake_components(monkeypatch, fail_on: str | None = None) -> list:
    """A stand-in ``viz.components`` recording its calls (the real one is another engineer's)."""
    calls = []

    def render_component_file(json_path, out_path):
        calls.append((Path(json_path), Path(out_path)))
        if fail_on and Path(out_path).suffix == fail_on:
            raise ValueError(f"cannot draw {Path(out_path).suffix}")
        Path(out_path).write_text(f"drawn from {Path(json_path).name}")
        return Path(out_path)

    mod = types.ModuleType("viz.components")
    mod.render_component_file = render_component_file
    monkeypatch.setitem(sys.modules, "viz.components", mod)
    return calls


def test_component_circuit_dispatch(small, tmp_path, capsys, monkeypatch):
    calls = _fake_components(monkeypatch)
    comp_dir = tmp_path / "circuit"
    comp_dir.mkdir()
    (comp_dir / "component_circuit.json").write_text("{}")
    for src in (comp_dir, comp_dir / "component_circuit.json"):
        out = tmp_path / f"{src.name}.svg"
        code, stdout, err = cli(capsys, "render", "--graph", src, "--out", out)
        assert code == 0, err
        assert calls[-1][0] == comp_dir / "component_circuit.json" and calls[-1][1].name == out.name
        assert calls[-1][1] != out  # rendered into staging, then moved
        assert out.read_text() == "drawn from component_circuit.json" and stdout.strip() == f"wrote {out}"
    # a graph directory that also holds a component file is still drawn as a graph
    graph, _ = small
    both = tmp_path / "both"
    shutil.copytree(graph, both)
    (both / "component_circuit.json").write_text("{}")
    n = len(calls)
    code, _, err = cli(capsys, "render", "--graph", both, "--out", tmp_path / "both.dot")
    assert code == 0 and len(calls) == n and 'digraph "circuit"' in (tmp_path / "both.dot").read_text()
    _no_staging(tmp_path)


def test_component_circuit_all_or_none(tmp_path, capsys, monkeypatch):
    calls = _fake_components(monkeypatch, fail_on=".png")
    comp = tmp_path / "component_circuit.json"
    comp.write_text("{}")
    outs = [tmp_path / "a.svg", tmp_path / "a.png"]
    code, _, err = cli(capsys, "render", "--graph", comp, "--out", *outs)
    assert code == 1 and "cannot draw .png" in err and len(calls) == 2
    assert not any(o.exists() for o in outs)
    _no_staging(tmp_path)


def test_real_component_renderer(tmp_path, capsys):
    """Once ``viz.components`` exists: its file renders through the CLI."""
    comps = pytest.importorskip("viz.components")
    if not hasattr(comps, "render_component_file"):
        pytest.skip("viz.components.render_component_file not written yet")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` not installed")
    doc = {"schema": "mlx-circuits/component-circuit", "task": "induction", "metric": "logit_diff",
           "nodes": [{"name": "embed", "score": 1.0}, {"name": "L0.H1", "score": 0.5},
                     {"name": "L1.MLP", "score": 0.3}, {"name": "logits", "score": 1.0}],
           "edges": [{"source": "embed", "target": "L0.H1", "score": 1.0},
                     {"source": "L0.H1", "target": "L1.MLP", "score": -0.5},
                     {"source": "L1.MLP", "target": "logits", "score": 0.8}]}
    (tmp_path / "component_circuit.json").write_text(json.dumps(doc))
    code, _, err = cli(capsys, "render", "--graph", tmp_path, "--out", tmp_path / "comp.svg", tmp_path / "comp.dot")
    assert code == 0, err
    dot = (tmp_path / "comp.dot").read_text()
    assert "L0.H1" in dot and "task: induction" in dot
    assert "<svg" in (tmp_path / "comp.svg").read_text()
