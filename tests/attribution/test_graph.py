"""The Graph type: keys, validation, views, exact save/load, corrupt files, sparsify, memory."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.errors import AttributionError
from attribution.graph import (
    ErrorNode,
    FeatureNode,
    Graph,
    GraphError,
    GraphFileError,
    GraphMemoryError,
    GraphSchemaError,
    GraphValidationError,
    LogitNode,
    NodeKeyError,
    SparseRowBuilder,
    SparsifyError,
    TokenNode,
    estimate_memory,
    parse_key,
    sparsify,
)
from attribution.graph.io import JSON_NAME, TENSORS_NAME

T0, T1 = TokenNode(0, 5), TokenNode(1, 7)
F = FeatureNode(0, 1, 3)
E0, E1 = ErrorNode(0, 0), ErrorNode(0, 1)
G = FeatureNode(1, 1, 9)
LA, LD = LogitNode(1, 9), LogitNode(1, -1, "logit_diff")
CANON = [T0, T1, E0, F, E1, G, LA, LD]  # tokens; layer 0 by (pos, feature before error); layer 1; logits


def small_graph(dtype=np.float32) -> Graph:
    """8 nodes; the builder passes them shuffled and ``from_keys`` sorts them."""
    order = [G, LA, T1, E1, LD, F, T0, E0]
    i = {k: n for n, k in enumerate(order)}
    a = sp.lil_matrix((8, 8), dtype=dtype)
    for s, t, w in [(T0, F, 0.5), (T1, F, -1.0), (F, G, 2.0), (E0, G, 0.25), (T1, G, 0.125),
                    (G, LA, 1.5), (E1, LA, -0.5), (F, LD, 3.0), (G, LD, -1.0)]:
        a[i[t], i[s]] = w
    act = {k: float(n) + 0.5 for n, k in enumerate(CANON)}
    prob = {LA: 0.7, LD: 0.0}
    return Graph.from_keys(
        order, a.tocsr(), [act[k] for k in order], logit_weights=[0.7, 0.2],
        metadata={"n_layers": 2, "model": "tiny", "prompt": "a b", "tokens": ("a", "b"), "method": "exact"},
        token=["b" if k.pos else "a" for k in order], logit_prob=[prob.get(k, 0.0) for k in order],
        label=["hello é" if k == F else "" for k in order], dropped_mass=[0.0, 0.25, 0, 0, 0, 1.5, 0, 0])


# ---------------------------------------------------------------- keys
def test_key_strings_and_parsing():
    assert [str(k) for k in CANON] == ["tok:0:5", "tok:1:7", "err:0:0", "feat:0:1:3", "err:0:1", "feat:1:1:9",
                                       "logit:1:9", "logit:1:logit_diff"]
    for k in CANON:
        assert parse_key(str(k)) == k and type(parse_key(str(k))) is type(k)
    assert TokenNode(0, 5) != ErrorNode(0, 5) and len({TokenNode(0, 5), ErrorNode(0, 5)}) == 2


@pytest.mark.parametrize("bad", ["feat:1:2", "err:a:1", "tok:-1:3", "logit:1:-1", "logit:1:9bad!", "x:1:2",
                                 "logit:-1:3", ""])
def test_malformed_keys_raise(bad):
    with pytest.raises(NodeKeyError) as info:
        parse_key(bad)
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyError)


@given(kind=st.sampled_from(["f", "e", "t", "l", "n"]), a=st.integers(0, 10**6), b=st.integers(0, 10**6),
       c=st.integers(0, 10**6), name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True))
def test_property_key_round_trip(kind, a, b, c, name):
    key = {"f": FeatureNode(a, b, c), "e": ErrorNode(a, b), "t": TokenNode(a, b), "l": LogitNode(a, b),
           "n": LogitNode(a, -1, name)}[kind]
    assert parse_key(str(key)) == key


# ---------------------------------------------------------------- construction and views
def test_from_keys_sorts_and_builds_table():
    g = small_graph()
    assert g.keys == tuple(CANON)
    assert list(g.nodes.columns) == ["key", "type", "layer", "pos", "feature", "token_id", "token",
                                     "activation", "logit_prob", "label"]
    assert g.nodes["layer"].tolist() == [-1, -1, 0, 0, 0, 1, 2, 2]
    assert g.nodes["feature"].tolist() == [-1, -1, -1, 3, -1, 9, -1, -1]
    assert g.nodes["token_id"].tolist() == [5, 7, -1, -1, -1, -1, 9, -1]
    assert g.nodes["activation"].tolist() == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5]
    assert g.logit_weights.tolist() == [0.7, 0.2] and g.metadata["tokens"] == ["a", "b"]
    assert g.metadata["schema"] == "mlx-circuits.graph" and g.metadata["version"] == 1
    assert g.dropped_mass[g.index(LA)] == 0.25 and g.dropped_mass[g.index(F)] == 1.5
    assert g.weight(F, G) == 2.0 and g.weight("tok:1:7", "feat:0:1:3") == -1.0 and g.weight(G, F) == 0.0
    assert g.nodes_of("error") == [E0, E1] and g.nodes_of("logit") == [LA, LD]
    assert F in g and "feat:9:9:9" not in g and "garbage" not in g
    with pytest.raises(NodeKeyError):
        g.index(FeatureNode(0, 0, 0))
    assert g.n_nodes == 8 and g.n_edges == 9 and g.n_layers == 2
    assert g.logit_weight_vector().tolist() == [0, 0, 0, 0, 0, 0, 0.7, 0.2]


def test_edges_views():
    g = small_graph()
    df = g.edges()
    assert list(df.columns) == ["source", "target", "weight"] and len(df) == 9
    triples = set(zip(df.source, df.target, df.weight))
    assert ("feat:0:1:3", "logit:1:logit_diff", 3.0) in triples
    assert {(str(s), str(t), w) for s, t, w in g.iter_edges()} == triples
    nxg = g.to_networkx()
    assert set(nxg.nodes) == {str(k) for k in CANON} and nxg.number_of_edges() == 9
    assert nxg.edges["feat:0:1:3", "feat:1:1:9"]["weight"] == 2.0  # source -> target
    attrs = nxg.nodes["feat:0:1:3"]
    assert attrs["node_key"] == F and attrs["type"] == "feature" and attrs["layer"] == 0
    assert isinstance(attrs["activation"], float) and attrs["label"] == "hello é"


def test_subgraph():
    g = small_graph()
    s = g.subgraph([T0, T1, F, LD])
    assert s.keys == (T0, T1, F, LD) and s.logit_weights.tolist() == [0.2]
    assert {(str(a), str(b), w) for a, b, w in s.iter_edges()} == {
        ("tok:0:5", "feat:0:1:3", 0.5), ("tok:1:7", "feat:0:1:3", -1.0), ("feat:0:1:3", "logit:1:logit_diff", 3.0)}
    mask = np.array([k != E1 for k in g.keys])
    s2 = g.subgraph(mask)
    assert E1 not in s2 and s2.dropped_mass.tolist() == [0, 0, 0, 1.5, 0, 0.25, 0]
    with pytest.raises(GraphValidationError):
        g.subgraph(np.ones(3, bool))


def _parts(g: Graph):
    return dict(nodes=g.nodes, adjacency=g.adjacency, logit_weights=g.logit_weights, metadata=g.metadata)


def test_validation_errors():
    g = small_graph()
    p = _parts(g)
    cases = {
        "order": dict(p, nodes=g.nodes.iloc[::-1], adjacency=g.adjacency[::-1, ::-1]),
        "transposed": dict(p, adjacency=g.adjacency.T.tocsr()),
        "shape": dict(p, adjacency=sp.csr_matrix((3, 3), dtype=np.float32)),
        "dense": dict(p, adjacency=g.adjacency.toarray()),
        "int dtype": dict(p, adjacency=g.adjacency.astype(np.int64)),
        "weights sum": dict(p, logit_weights=[0.9, 0.2]),
        "negative weight": dict(p, logit_weights=[-0.1, 0.2]),
        "weights length": dict(p, logit_weights=[0.5]),
        "no n_layers": dict(p, metadata={"model": "x"}),
        "not json": dict(p, metadata={"n_layers": 2, "f": object()}),
        "nan metadata": dict(p, metadata={"n_layers": 2, "x": float("nan")}),
        "layer range": dict(p, metadata={"n_layers": 1}),
        "column": dict(p, nodes=g.nodes.assign(layer=0)),
        "extra column": dict(p, nodes=g.nodes.assign(extra=1)),
        "duplicate": dict(p, nodes=pd.concat([g.nodes.iloc[:1], g.nodes.iloc[:7]])),
        "nan activation": dict(p, nodes=g.nodes.assign(activation=np.nan)),
        "inf weight": dict(p, adjacency=sp.csr_matrix(g.adjacency.multiply(np.inf))),
    }
    for name, kwargs in cases.items():
        with pytest.raises(GraphValidationError):
            Graph(**kwargs)
            pytest.fail(name)
    assert issubclass(GraphValidationError, AttributionError) and issubclass(GraphError, ValueError)


def test_construction_does_not_mutate_inputs_and_drops_explicit_zeros():
    g = small_graph(np.float64)
    a = g.adjacency.copy()
    a.data[0] = 0.0  # an explicit zero
    before = (a.data.copy(), a.indices.copy())
    h = Graph(**dict(_parts(g), adjacency=a))
    assert np.array_equal(a.data, before[0]) and np.array_equal(a.indices, before[1])
    assert h.n_edges == g.n_edges - 1


# ---------------------------------------------------------------- save / load
def _assert_identical(a: Graph, b: Graph):
    assert a.equals(b)
    pd.testing.assert_frame_equal(a.nodes, b.nodes, check_exact=True)
    for x, y in [(a.adjacency.indptr, b.adjacency.indptr), (a.adjacency.indices, b.adjacency.indices),
                 (a.adjacency.data, b.adjacency.data), (a.logit_weights, b.logit_weights),
                 (a.dropped_mass, b.dropped_mass)]:
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    assert a.metadata == b.metadata


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_exact_round_trip(tmp_path, dtype):
    g = small_graph(dtype)
    g.save(tmp_path / "g")
    assert sorted(os.listdir(tmp_path / "g")) == [JSON_NAME, TENSORS_NAME]  # no temp files, no pickle
    h = Graph.load(tmp_path / "g")
    _assert_identical(g, h)
    text = (tmp_path / "g" / JSON_NAME).read_text()
    doc = json.loads(text)
    assert text == json.dumps(doc, sort_keys=True, indent=1)
    assert doc["schema"] == "mlx-circuits.graph" and doc["version"] == 1 and doc["metadata"]["n_layers"] == 2
    h.save(tmp_path / "g")  # overwrite in place
    _assert_identical(g, Graph.load(tmp_path / "g"))


def test_save_load_random_and_empty(tmp_path):
    rng = np.random.default_rng(0)
    keys = [TokenNode(p, p) for p in range(4)] + [FeatureNode(1, p, f) for p in range(4) for f in range(5)]
    keys += [LogitNode(3, 11)]
    n = len(keys)
    lay = np.array([-1] * 4 + [1] * 20 + [3])
    dense = rng.normal(size=(n, n)) * (lay[:, None] > lay[None, :]) * (rng.random((n, n)) < 0.3)
    g = Graph.from_keys(keys, sp.csr_matrix(dense), rng.normal(size=n), [1.0], {"n_layers": 3, "seed": 0},
                        dropped_mass=rng.random(n))
    g.save(tmp_path / "r")
    _assert_identical(g, Graph.load(tmp_path / "r"))
    a64 = g.adjacency.copy()  # int64 index arrays are normalised to scipy's choice, so loads stay exact
    a64.indices, a64.indptr = a64.indices.astype(np.int64), a64.indptr.astype(np.int64)
    g64 = Graph(g.nodes, a64, g.logit_weights, g.metadata)
    g64.save(tmp_path / "r64")
    _assert_identical(g64, Graph.load(tmp_path / "r64"))
    e = g.subgraph([keys[0], keys[-1]])
    assert e.n_edges == 0
    e.save(tmp_path / "e")
    _assert_identical(e, Graph.load(tmp_path / "e"))


def test_corrupt_and_missing_files(tmp_path):
    g = small_graph()
    d = tmp_path / "g"
    with pytest.raises(GraphFileError):
        Graph.load(d)  # no directory
    g.save(d)
    good_json, good_st = (d / JSON_NAME).read_text(), (d / TENSORS_NAME).read_bytes()

    def restore():
        (d / JSON_NAME).write_text(good_json)
        (d / TENSORS_NAME).write_bytes(good_st)

    (d / TENSORS_NAME).write_bytes(good_st[: len(good_st) // 2])  # truncated tensors
    with pytest.raises(GraphFileError, match="hash"):
        Graph.load(d)
    restore()
    (d / JSON_NAME).write_text(good_json[:-10])  # truncated JSON
    with pytest.raises(GraphFileError, match="JSON"):
        Graph.load(d)
    for field, value, exc in [("schema", "other", GraphSchemaError), ("version", 99, GraphSchemaError),
                              ("n_nodes", 3, GraphFileError)]:
        doc = json.loads(good_json)
        doc[field] = value
        (d / JSON_NAME).write_text(json.dumps(doc))
        with pytest.raises(exc):
            Graph.load(d)
    doc = json.loads(good_json)
    doc["nodes"]["key"][0] = "tok:0:6"  # disagrees with the token_id column
    (d / JSON_NAME).write_text(json.dumps(doc))
    with pytest.raises(GraphFileError, match="invalid graph"):
        Graph.load(d)
    restore()
    os.remove(d / TENSORS_NAME)
    with pytest.raises(GraphFileError, match="missing"):
        Graph.load(d)
    assert issubclass(GraphFileError, ValueError) and issubclass(GraphSchemaError, GraphFileError)


# ---------------------------------------------------------------- sparsify
def _dropped_by_hand(rows, kept_dense):
    return np.abs(rows).sum(1) - np.abs(kept_dense).sum(1)


def test_sparsify_rules_by_hand():
    rows = np.array([[0.0, 3.0, -1.0, 0.5, -4.0], [1.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    # top-2: row 0 keeps -4 and 3 (drops 1 + .5 = 1.5); row 1 keeps 1 (only non-zero)
    r = sparsify([(np.array([3, 1]), rows)], k=2)
    assert r.adjacency[3].toarray().tolist() == [[0, 3, 0, 0, -4]] and r.dropped_mass[3] == 1.5
    assert r.adjacency[1].toarray().tolist() == [[1, 0, 0, 0, 0]] and r.dropped_mass[1] == 0
    # |w| >= 1: row 0 keeps 3, -1, -4 (drops .5)
    r = sparsify([(np.array([3, 1]), rows)], threshold=1.0)
    assert r.adjacency.nnz == 4 and r.dropped_mass.tolist() == [0, 0, 0, 0.5, 0]
    # both: top-1 and >= 1 -> -4 and 1; neither -> all non-zeros
    r = sparsify([(np.array([3, 1]), rows)], k=1, threshold=1.0)
    assert r.adjacency.nnz == 2 and r.dropped_mass[3] == 4.5
    r = sparsify([(np.array([3, 1]), rows)], n_nodes=5)
    assert r.adjacency.nnz == 5 and not r.dropped_mass.any() and r.adjacency.dtype == np.float32
    assert sparsify([], n_nodes=4).adjacency.shape == (4, 4)
    with pytest.raises(SparsifyError):
        sparsify([])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.one_of(st.none(), st.integers(0, 12)),
       thr=st.one_of(st.none(), st.floats(0, 2)), nb=st.integers(1, 4))
def test_property_sparsify_dropped_mass(seed, k, thr, nb):
    rng = np.random.default_rng(seed)
    n = 10
    rows = rng.normal(size=(7, n)) * (rng.random((7, n)) < 0.7)
    targets = rng.permutation(n)[:7]
    batches = [(targets[i::nb], rows[i::nb]) for i in range(nb)]  # streamed in pieces
    r = sparsify(batches, k=k, threshold=thr)
    kept = r.adjacency.toarray()[targets]
    assert np.all((kept == 0) | (kept == rows))  # kept entries are copies of the input
    mag = np.abs(rows)
    if k is not None:
        assert ((kept != 0).sum(1) <= k).all()
        # every kept |w| is >= every dropped non-zero |w| of the same row
        for i in range(7):
            dropped = mag[i][(kept[i] == 0) & (mag[i] > 0) & (mag[i] >= (thr or 0))]
            assert dropped.size == 0 or np.abs(kept[i][kept[i] != 0]).min(initial=np.inf) >= dropped.max()
    if thr is not None:
        assert (np.abs(kept[kept != 0]) >= thr).all()
    np.testing.assert_allclose(r.dropped_mass[targets], _dropped_by_hand(rows, kept), rtol=1e-12, atol=1e-12)
    others = np.setdiff1d(np.arange(n), targets)
    assert not r.dropped_mass[others].any() and r.adjacency[others].nnz == 0


def test_sparsify_errors():
    b = SparseRowBuilder(4, k=1)
    b.add([0], np.ones((1, 4)))
    for targets, block in [([0], np.ones((1, 4))), ([1], np.ones((1, 3))), ([9], np.ones((1, 4))),
                           ([1], np.ones((1, 4), np.float32)), ([1], np.full((1, 4), np.nan))]:
        with pytest.raises(SparsifyError):
            b.add(targets, block)
    for kwargs in [dict(k=-1), dict(threshold=-1.0), dict(threshold=float("nan"))]:
        with pytest.raises(SparsifyError):
            SparseRowBuilder(4, **kwargs)


# ---------------------------------------------------------------- memory
def test_estimate_memory_formula():
    m = estimate_memory(10, 2, 3.0, 4, d_model=16, edges_per_target=5, batch_size=2, sites_cached=1)
    # F = 10*2*3 = 60; N = 60 + 20 errors + 10 tokens + 4 logits = 94; S = 90; T = 64; E = 64*5
    assert (m.n_nodes, m.n_sources, m.n_targets, m.n_edges) == (94, 90, 64, 320)
    assert m.edge_bytes == 320 * 8 + 95 * 4 + 94 * 8
    assert m.assembly_bytes == 2 * 320 * 20 and m.node_table_bytes == 94 * 160
    assert m.batch_working_bytes == 2 * 90 * 26 + 2 * 10 * 16 * 4 * 3
    assert m.forward_bytes == 10 * 16 * 4 * 2 + 60 * 16 * 4
    assert m.total_bytes == sum(m[4:9])
    # Threshold mode bound: every source kept per target.
    assert estimate_memory(10, 2, 3.0, 4, d_model=16).n_edges == 64 * 90
    # Top-k edges grow linearly with the prompt, not quadratically.
    e1 = estimate_memory(1000, 4, 10, d_model=64, edges_per_target=100).n_edges
    e2 = estimate_memory(2000, 4, 10, d_model=64, edges_per_target=100).n_edges
    assert e2 < 2.01 * e1
    with pytest.raises(GraphMemoryError):
        m.check(available_bytes=1000)
    m.check(available_bytes=10**12)
    with pytest.raises(GraphError):
        estimate_memory(0, 2, 3.0, d_model=16)


def test_sparsify_feeds_a_graph():
    """Rows streamed per target batch (logits first, then features), as a builder would."""
    keys = ["tok:0:1", "tok:1:2", "feat:0:1:4", "err:0:1", "logit:1:3"]  # string keys are accepted
    dense = np.zeros((5, 5))
    dense[2, :2] = [0.5, -2.0]
    dense[4, :4] = [0.1, 0.2, 3.0, -0.05]
    r = sparsify([(np.array([4]), dense[[4]]), (np.array([2]), dense[[2]])], k=2)
    g = Graph.from_keys(keys, r.adjacency, np.ones(5), [0.9], {"n_layers": 1}, dropped_mass=r.dropped_mass)
    assert g.weight("feat:0:1:4", "logit:1:3") == 3.0 and g.weight("tok:0:1", "logit:1:3") == 0.0
    assert g.dropped_mass[g.index("logit:1:3")] == pytest.approx(0.1 + 0.05)
    assert g.n_edges == 4
