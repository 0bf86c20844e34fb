"""Bad-input matrix for ``circuits render``.

Each case asserts the contract of ``cli_harness.assert_bad_input``: a non-zero exit,
one stderr line naming the problem and the fix (matched by a regex), no traceback or
raw exception name, every output path and input exactly as before, and nothing new
beside them (no staging directory, no partial file). Output checks run before any
rendering: the cases that reach Graphviz would fail the test through ``no_render``.
The all-or-none cases make one of several formats fail inside Graphviz and check that
the formats that did render were not written either.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import attribution  # noqa: F401  (BLAS before mlx)
from attribution.graph import ErrorNode, FeatureNode, Graph, LogitNode, TokenNode
from cli_harness import assert_bad_input

render_mod = importlib.import_module("viz.render")  # viz.render the attribute is the function


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory):
    """A saved 7-node graph (tokens, features, an error, a logit)."""
    d = tmp_path_factory.mktemp("badrender")
    keys = [TokenNode(0, 5), TokenNode(1, 6), FeatureNode(0, 1, 3), FeatureNode(1, 1, 4), ErrorNode(0, 1),
            LogitNode(1, 7)]
    n = len(keys)
    rows, cols = [2, 2, 3, 3, 5, 5], [0, 1, 2, 4, 3, 2]
    adj = sp.csr_matrix((np.array([0.5, -1.0, 2.0, 0.3, 1.5, -0.4]), (rows, cols)), shape=(n, n))
    g = Graph.from_keys(keys, adj, [1.0, 1.0, 2.0, 3.0, 0.5, 4.0], [1.0],
                        {"n_layers": 2, "tokens": ["a", " b"], "prompt": "a b"},
                        token=["a", " b", "", "", "", " c"], logit_prob=[0, 0, 0, 0, 0, 0.7])
    g.save(d / "graph")
    return d / "graph"


@pytest.fixture
def no_render(monkeypatch):
    """Fail the test if Graphviz is run: these inputs must be refused before any work."""
    def boom(*a, **k):
        raise AssertionError("Graphviz ran on input that should have been refused first")

    monkeypatch.setattr(render_mod, "run_dot", boom)


def test_unknown_suffix(capsys, graph_dir, tmp_path, no_render):
    out = tmp_path / "c.gif"
    assert_bad_input(capsys, ["render", "--graph", graph_dir, "--out", out],
                     r"--out .*c\.gif has suffix '\.gif'.*one of \.svg \.pdf \.png \.dot", out=out)


def test_no_suffix(capsys, graph_dir, tmp_path, no_render):
    out = tmp_path / "circuit"
    assert_bad_input(capsys, ["render", "--graph", graph_dir, "--out", out],
                     r"has no suffix.*format comes from the suffix", out=out)


def test_unknown_suffix_among_good_ones_writes_nothing(capsys, graph_dir, tmp_path, no_render):
    good, bad = tmp_path / "c.svg", tmp_path / "c.jpeg"
    assert_bad_input(capsys, ["render", "--graph", graph_dir, "--out", good, bad],
                     r"suffix '\.jpeg'", out=good, watch=(bad,))


def test_existing_output_needs_overwrite(capsys, graph_dir, tmp_path, no_render):
    old = tmp_path / "c.svg"
    old.write_text("<svg>old</svg>")
    new = tmp_path / "c.png"
    assert_bad_input(capsys, ["render", "--graph", graph_dir, "--out", new, old],
                     r"--out .*c\.svg already exists; pass --overwrite", out=old, watch=(new,))


def test_output_is_a_directory(capsys, graph_dir, tmp_path, no_render):
    out = tmp_path / "fig.svg"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    msg = assert_bad_input(capsys, ["render", "--graph", graph_dir, "--out", out, "--overwrite"],
                           r"--out .*fig\.svg is a directory; give a file name", out=out)
    assert "fig.svg/circuit.svg" in msg


def test_output_parent_is_a_file(capsys, graph_dir, tmp_path, no_render):
    parent = tmp_path / "notes.txt"
    parent.write_text("x")
    out = parent / "sub" / "c.svg"
    assert_bad_input(capsys, ["render", "--graph", graph_dir, "--out", out],
                     r"notes\.txt is a file, not a directory; choose another --out", watch=(parent,))


def test_output_directory_not_writable(capsys, graph_dir, tmp_path, no_render):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root writes through permissions: use a read-only mount
        locked.chmod(0o755)
        locked = Path("/proc/sys")
        if not locked.is_dir() or os.access(locked, os.W_OK):
            pytest.skip("no unwritable directory here (root, and /proc/sys is writable)")
    try:
        assert_bad_input(capsys, ["render", "--graph", graph_dir, "--out", locked / "new" / "c.svg"],
                         rf"directory {locked} is not writable; choose another --out", watch=(locked / "new",))
    finally:
        if locked.is_relative_to(tmp_path):
            locked.chmod(0o755)


def test_same_output_twice(capsys, graph_dir, tmp_path, no_render):
    out = tmp_path / "c.svg"
    assert_bad_input(capsys, ["render", "--graph", graph_dir, "--out", out, tmp_path / "." / "c.svg"],
                     r"names .*c\.svg twice", out=out)


@pytest.mark.parametrize("value,match", [
    ("0", r"--max-edges 0 would draw no edge; give a positive integer, or 'all'"),
    ("-5", r"--max-edges -5 would draw no edge"),
    ("many", r"--max-edges 'many' is not a number; give a positive integer, or 'all'"),
    ("2.5", r"--max-edges '2\.5' is not a number"),
])
def test_bad_max_edges(capsys, graph_dir, tmp_path, no_render, value, match):
    out = tmp_path / "c.svg"
    assert_bad_input(capsys, ["render", "--graph", graph_dir, "--out", out, "--max-edges", value], match, out=out)


def test_missing_graph(capsys, tmp_path):
    out = tmp_path / "c.svg"
    assert_bad_input(capsys, ["render", "--graph", tmp_path / "nope", "--out", out],
                     r"--graph .*nope does not exist; pass the graph directory", out=out)


def test_directory_without_graph(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "c.svg"
    assert_bad_input(capsys, ["render", "--graph", empty, "--out", out],
                     r"--graph .*empty holds no graph\.json; pass a graph directory", out=out, watch=(empty,))


def test_parent_of_graph_directory_suggests_the_graph(capsys, graph_dir, tmp_path):
    out = tmp_path / "c.svg"
    assert_bad_input(capsys, ["render", "--graph", graph_dir.parent, "--out", out],
                     rf"did you mean --graph {graph_dir}\?", out=out)


def test_graph_is_a_plain_file(capsys, graph_dir, tmp_path):
    out = tmp_path / "c.svg"
    assert_bad_input(capsys, ["render", "--graph", graph_dir / "graph.safetensors", "--out", out],
                     r"graph\.safetensors is a file; pass the graph directory", out=out, watch=(graph_dir,))


def test_corrupt_graph(capsys, graph_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "graph.json").write_text('{"n_nodes": ')
    (bad / "graph.safetensors").write_bytes((graph_dir / "graph.safetensors").read_bytes())
    out = tmp_path / "c.svg"
    assert_bad_input(capsys, ["render", "--graph", bad, "--out", out],
                     r"--graph .*bad could not be read: .*re-run `circuits attribute`", out=out, watch=(bad,))


def test_config_file_with_bad_suffix(capsys, graph_dir, tmp_path, no_render):
    cfg = tmp_path / "render.toml"
    out = tmp_path / "c.bmp"
    cfg.write_text(f'out = "{out}"\n')
    assert_bad_input(capsys, ["render", "--graph", graph_dir, "--config", cfg], r"suffix '\.bmp'",
                     out=out, watch=(cfg,))


def test_failing_format_writes_none(capsys, graph_dir, tmp_path, monkeypatch):
    """svg and dot render, png fails inside Graphviz: neither svg nor dot is written."""
    real = render_mod.run_dot

    def flaky(dot, fmt="svg", *a, **k):
        if fmt == "png":
            return real("digraph { a -> ", "png")  # real Graphviz failure (syntax error)
        return real(dot, fmt, *a, **k)

    monkeypatch.setattr(render_mod, "run_dot", flaky)
    outs = [tmp_path / "c.svg", tmp_path / "c.dot", tmp_path / "c.png"]
    assert_bad_input(capsys, ["render", "--graph", graph_dir, "--out", *outs],
                     r"Graphviz .*failed with exit code", out=outs[0], watch=tuple(outs[1:]))


def test_failing_format_keeps_old_files_with_overwrite(capsys, graph_dir, tmp_path, monkeypatch):
    """--overwrite with a failing format: the old files stay exactly as they were."""
    real = render_mod.run_dot

    def flaky(dot, fmt="svg", *a, **k):
        if fmt == "pdf":
            return real("digraph { a -> ", "pdf")
        return real(dot, fmt, *a, **k)

    monkeypatch.setattr(render_mod, "run_dot", flaky)
    outs = [tmp_path / "sub" / "c.svg", tmp_path / "c.pdf"]
    outs[0].parent.mkdir()
    for o in outs:
        o.write_text("old")
    assert_bad_input(capsys, ["render", "--graph", graph_dir, "--overwrite", "--out", *outs],
                     r"failed with exit code", out=outs[0], watch=(outs[1],))


def test_new_output_directory_left_no_trace(capsys, graph_dir, tmp_path, monkeypatch):
    """A render that fails after creating the output's directory removes that directory."""
    monkeypatch.setattr(render_mod.shutil, "which", lambda name: None)
    out = tmp_path / "new" / "deeper" / "c.svg"
    assert_bad_input(capsys, ["render", "--graph", graph_dir, "--out", tmp_path / "c.dot", out],
                     r"Graphviz `dot` was not found on PATH; install Graphviz: `apt-get install -y graphviz`",
                     out=tmp_path / "c.dot")
    assert not (tmp_path / "new").exists()


def test_component_circuit_with_max_edges(capsys, tmp_path, no_render):
    comp = tmp_path / "component_circuit.json"
    comp.write_text('{"nodes": [], "edges": []}')
    out = tmp_path / "c.svg"
    assert_bad_input(capsys, ["render", "--graph", comp, "--out", out, "--max-edges", "10"],
                     r"component circuit", out=out, watch=(comp,))


def test_json_that_is_not_a_component_circuit(capsys, graph_dir, tmp_path, no_render):
    pytest.importorskip("viz.components")
    other = tmp_path / "neuronpedia.json"
    other.write_text('{"nodes": [{"node_id": "x"}], "links": []}')
    out = tmp_path / "c.svg"
    assert_bad_input(capsys, ["render", "--graph", other, "--out", out],
                     r"neuronpedia\.json is a JSON file but not a component circuit.*pass a graph directory",
                     out=out, watch=(other,))
    assert_bad_input(capsys, ["render", "--graph", graph_dir / "graph.json", "--out", out],
                     rf"not a component circuit.*pass --graph {graph_dir} or", out=out)


def test_broken_component_circuit(capsys, tmp_path):
    pytest.importorskip("viz.components")
    d = tmp_path / "circuit"
    d.mkdir()
    (d / "component_circuit.json").write_text('{"nodes": [{"name": "L0.Q7"}], "edges": []}')
    out = tmp_path / "c.svg"
    assert_bad_input(capsys, ["render", "--graph", d, "--out", out], r"component name 'L0\.Q7'", out=out,
                     watch=(d,))
