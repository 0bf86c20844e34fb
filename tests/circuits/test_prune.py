"""Influence and pruning against hand arithmetic and against a dense matrix inverse.

The hand graph (n_layers = 2, positions 0 and 1; 10 nodes):

    tokens  t0 = tok:0:10, t1 = tok:1:11
    layer 0 f0b = feat:0:0:3, f0a = feat:0:1:5, e01 = err:0:1
    layer 1 f1a = feat:1:1:7, f1b = feat:1:1:8, e11 = err:1:1
    logits  L1 = logit:1:20 (w = 0.6), L2 = logit:1:21 (w = 0.2)

    edges (target <- source: weight)        row-normalised |A| (A_n)
    f0a <- t0: 1, t1: -3                    .25, .75
    f0b <- t0: 2                            1
    f1a <- f0a: 2, e01: 1, t1: 1            .5, .25, .25
    f1b <- f0b: -1, t0: 1                   .5, .5
    L1  <- f1a: 3, e11: -1                  .75, .25
    L2  <- f1a: 3, f1b: 1                   .75, .25

Influence = w·(A_n + A_n² + ...), level by level:
    1 step : f1a = .6*.75 + .2*.75 = .6 ; e11 = .6*.25 = .15 ; f1b = .2*.25 = .05
    2 steps: f0a = .6*.5 = .3 ; e01 = .6*.25 = .15 ; t1 = .6*.25 = .15
             f0b = .05*.5 = .025 ; t0 = .05*.5 = .025
    3 steps: t0 += .3*.25 + .025*1 = .1 -> t0 = .125 ; t1 += .3*.75 = .225 -> t1 = .375
    sum over sources t0 + t1 + e01 + e11 = .125 + .375 + .15 + .15 = .8 = sum(w)
    total influence = .125+.375+.3+.025+.15+.6+.05+.15 = 1.775
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.graph import ErrorNode, FeatureNode, Graph, LogitNode, TokenNode
from circuits.prune import (
    PruneConfig,
    PruneError,
    find_threshold,
    greedy_prune,
    influence,
    propagate,
    prune,
    prune_with,
    remove_dangling,
    threshold_edges,
    top_edges,
)

T0, T1 = TokenNode(0, 10), TokenNode(1, 11)
F0B, F0A, E01 = FeatureNode(0, 0, 3), FeatureNode(0, 1, 5), ErrorNode(0, 1)
F1A, F1B, E11 = FeatureNode(1, 1, 7), FeatureNode(1, 1, 8), ErrorNode(1, 1)
L1, L2 = LogitNode(1, 20), LogitNode(1, 21)
EDGES = [(T0, F0A, 1.0), (T1, F0A, -3.0), (T0, F0B, 2.0), (F0A, F1A, 2.0), (E01, F1A, 1.0), (T1, F1A, 1.0),
         (F0B, F1B, -1.0), (T0, F1B, 1.0), (F1A, L1, 3.0), (E11, L1, -1.0), (F1A, L2, 3.0), (F1B, L2, 1.0)]


def make_graph(keys, edges, n_layers, logit_w, dtype=np.float64) -> Graph:
    idx = {k: i for i, k in enumerate(keys)}
    a = sp.lil_matrix((len(keys), len(keys)), dtype=dtype)
    for s, t, w in edges:
        a[idx[t], idx[s]] = w
    probs = [logit_w.pop(0) if isinstance(k, LogitNode) else 0.0 for k in keys]
    return Graph.from_keys(keys, a.tocsr(), np.ones(len(keys)), [p for p in probs if p], {"n_layers": n_layers},
                           logit_prob=probs)


def hand_graph() -> Graph:
    keys = [T0, T1, F0B, F0A, E01, F1A, F1B, E11, L1, L2]
    return make_graph(keys, EDGES, 2, [0.6, 0.2])


HAND_INFLUENCE = {T0: .125, T1: .375, F0B: .025, F0A: .3, E01: .15, F1A: .6, F1B: .05, E11: .15, L1: 0, L2: 0}


def test_hand_influence():
    g = hand_graph()
    got = dict(zip(g.keys, influence(g)))
    for k, v in HAND_INFLUENCE.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k


def test_hand_prune_defaults():
    g = hand_graph()
    r = prune(g)  # node .8, edge .98
    # Node threshold: sorted influence .6 (f1a), .375 (t1), .3 (f0a), .15 (e01), .15 (e11), .125, ...
    # cumulative / 1.775: .338, .549, .718, .803 -> reaches .8 at the value .15; both .15 ties kept.
    # Tokens and logits are always kept; f1b (.05) and f0b (.025) are dropped.
    kept = {T0, T1, F0A, E01, F1A, E11, L1, L2}
    assert {g.keys[i] for i in np.flatnonzero(r.influence_mask)} == kept
    # Edge scores on the node-pruned graph, re-normalised: f1a <- f0a .5, e01 .25, t1 .25;
    # L2 <- f1a 1. influence': f1a = .6*.75 + .2*1 = .65, f0a = .65*.5 = .325.
    # score = A_n'[t,s] * (influence'[t] + w[t]):
    expected = {(F1A, L1): .75 * .6, (E11, L1): .25 * .6, (F1A, L2): 1 * .2, (F0A, F1A): .5 * .65,
                (E01, F1A): .25 * .65, (T1, F1A): .25 * .65, (T0, F0A): .25 * .325, (T1, F0A): .75 * .325}
    # Sorted scores .45 .325 .24375 .2 .1625 .1625 .15 .08125; cumulative/1.775 reaches .98 only
    # at the last one, so all 8 candidate edges are kept; nothing dangles.
    assert set(r.node_keys) == kept
    got = {(str(s), str(t)): (w, sc) for s, t, w, sc in r.edges.itertuples(index=False)}
    assert set(got) == {(str(s), str(t)) for s, t in expected}
    for (s, t), sc in expected.items():
        assert got[(str(s), str(t))][1] == pytest.approx(sc, abs=1e-12)
        assert got[(str(s), str(t))][0] == g.weight(s, t)  # original signed weights
    assert r.graph.n_edges == 8 and r.method == "influence"
    assert r.node_threshold == 0.8 and r.edge_threshold == 0.98


def test_hand_prune_edge_threshold_removes_dangling_error():
    g = hand_graph()
    r = prune(g, node_threshold=0.8, edge_threshold=0.75)
    # cumulative edge shares .254 .437 .574 .687 .778 (two .1625 ties) -> cut .1625: drop
    # L1 <- e11 (.15) and f0a <- t0 (.08125). e11 then has no kept outgoing edge: removed.
    assert set(r.node_keys) == {T0, T1, F0A, E01, F1A, L1, L2}
    assert r.graph.n_edges == 6
    assert E11 not in r.graph and r.graph.weight(T0, F0A) == 0.0


def test_hand_prune_full_nodes_dangling_features():
    g = hand_graph()
    r = prune(g, node_threshold=1.0, edge_threshold=0.95)
    # All nodes have influence > 0, so all are kept; scores use the full A_n:
    # .45 (L1<-f1a) .3 (f1a<-f0a) .225 (f0a<-t1) .15 x4 .075 (f0a<-t0) .05 (L2<-f1b) .025 x3.
    # cumulative/1.775 reaches .95 at .05 (.9577): the three .025 edges (f1b<-f0b, f1b<-t0,
    # f0b<-t0) are dropped. f1b then has no input -> removed, taking L2<-f1b with it;
    # f0b has neither input nor output -> removed.
    assert r.influence_mask.all()
    assert set(r.node_keys) == {T0, T1, F0A, E01, F1A, E11, L1, L2}
    assert r.graph.n_edges == 12 - 3 - 1 - 0  # 8: L2<-f1b went with f1b


def test_remove_dangling_cascades_along_a_chain():
    # t -> fa -> fb -> fc -> L with the edge t -> fa not kept: pass 1 drops fa (no input),
    # pass 2 drops fb, pass 3 drops fc; the token and the logit stay.
    t, lg = TokenNode(0, 1), LogitNode(0, 2)
    fa, fb, fc = FeatureNode(0, 0, 0), FeatureNode(1, 0, 0), FeatureNode(2, 0, 0)
    g = make_graph([t, fa, fb, fc, lg], [(t, fa, 1.0), (fa, fb, 1.0), (fb, fc, 1.0), (fc, lg, 1.0)], 3, [1.0])
    keep_e = np.array([False, True, True, True])  # CSR order: fa<-t, fb<-fa, fc<-fb, L<-fc
    nodes, edges = remove_dangling(g, np.ones(5, bool), keep_e)
    assert nodes.tolist() == [True, False, False, False, True] and not edges.any()


def test_top_and_threshold_edges():
    g = hand_graph()
    r = top_edges(g, 3)  # the three |w| = 3 edges
    assert {(str(s), str(t)) for s, t in zip(r.edges.source, r.edges.target)} == {
        (str(T1), str(F0A)), (str(F1A), str(L1)), (str(F1A), str(L2))}
    assert set(r.node_keys) == {T0, T1, F0A, F1A, L1, L2}
    assert r.edge_scores.tolist() == [3.0, 3.0, 3.0]
    # With dangling removal f0a (no output) and f1a (no input) go, leaving no edge.
    r2 = top_edges(g, 3, remove_dangling=True)
    assert set(r2.node_keys) == {T0, T1, L1, L2} and r2.graph.n_edges == 0
    # |w| >= 2: f0a<-t1, f0b<-t0, f1a<-f0a, L1<-f1a, L2<-f1a; f0b dangles (no output).
    r3 = threshold_edges(g, 2.0, remove_dangling=True)
    assert set(r3.node_keys) == {T0, T1, F0A, F1A, L1, L2} and r3.graph.n_edges == 4
    assert top_edges(g, 100).graph.n_edges == 12 and top_edges(g, 0).graph.n_edges == 0


def test_greedy_hand():
    g = hand_graph()
    # Removal order by current influence (no re-normalisation): f0b (.025) -> retained
    # (.8 - .025)/.8 = .96875; f1b (.05) -> .75/.8 = .9375; e01 (.15, tie with e11, first
    # in node order) -> .6/.8 = .75; e11 -> .45/.8 = .5625; f0a -> .15/.8; f1a -> 0.
    assert set(greedy_prune(g, 0.9).node_keys) == {T0, T1, F0A, E01, F1A, E11, L1, L2}
    assert set(greedy_prune(g, 0.7).node_keys) == {T0, T1, F0A, F1A, E11, L1, L2}
    assert set(greedy_prune(g, 0.5).node_keys) == {T0, T1, F0A, F1A, L1, L2}
    assert set(greedy_prune(g, 0.7, batch_size=4).node_keys) == {T0, T1, F0A, F1A, E11, L1, L2}


@pytest.mark.parametrize("bad", [0, -0.1, 1.01, float("nan"), "x", None])
def test_bad_thresholds_raise(bad):
    g = hand_graph()
    with pytest.raises(PruneError):
        prune(g, node_threshold=bad)
    with pytest.raises(PruneError):
        prune(g, edge_threshold=bad)
    with pytest.raises(ValueError):  # PruneError is a ValueError
        greedy_prune(g, min_retained=bad)


def test_config_dispatch_and_checks():
    g = hand_graph()
    assert prune_with(g, PruneConfig()).node_keys == prune(g).node_keys
    assert prune_with(g, PruneConfig(method="greedy", min_retained=0.7)).node_keys == greedy_prune(g, 0.7).node_keys
    assert prune_with(g, PruneConfig(method="top_edges", n_edges=3)).graph.n_edges == 3
    assert prune_with(g, PruneConfig(method="threshold_edges", abs_threshold=2.0)).graph.n_edges == 5
    for kwargs in [dict(method="nope"), dict(node_threshold=0), dict(edge_threshold=2), dict(method="top_edges"),
                   dict(method="threshold_edges"), dict(batch_size=0), dict(min_retained=-1)]:
        with pytest.raises(PruneError):
            PruneConfig(**kwargs)


def test_bad_selection_args_raise():
    g = hand_graph()
    for call in (lambda: top_edges(g, -1), lambda: top_edges(g, 1.5), lambda: threshold_edges(g, -1.0),
                 lambda: threshold_edges(g, float("inf")), lambda: greedy_prune(g, 0.5, batch_size=0)):
        with pytest.raises(PruneError):
            call()


def test_find_threshold():
    # shares of [4, 3, 2, 1]: cumulative .4 .7 .9 1 -> .75 is first reached at the value 2
    assert find_threshold(np.array([1.0, 4.0, 2.0, 3.0]), 0.75) == 2.0
    assert find_threshold(np.array([1.0, 4.0, 2.0, 3.0]), 0.4) == 4.0
    assert find_threshold(np.array([1.0, 4.0, 2.0, 3.0]), 1.0) == 1.0
    assert find_threshold(np.array([0.0, 0.0]), 0.5) == np.inf


def random_dag(seed: int, n_layers: int = 5, n_pos: int = 8, p: float = 0.1) -> Graph:
    """A few hundred nodes; every feature/logit target draws sources from lower layers."""
    rng = np.random.default_rng(seed)
    keys = [TokenNode(q, int(rng.integers(100))) for q in range(n_pos)]
    for layer in range(n_layers):
        for q in range(n_pos):
            keys += [FeatureNode(layer, q, int(f)) for f in sorted(rng.choice(500, rng.integers(0, 12), replace=False))]
            keys.append(ErrorNode(layer, q))
    keys += [LogitNode(n_pos - 1, int(t)) for t in (7, 8, 9)]
    layer_of = np.array([-1 if isinstance(k, TokenNode) else n_layers if isinstance(k, LogitNode) else k.layer
                         for k in keys])
    a = sp.lil_matrix((len(keys), len(keys)))
    for i, k in enumerate(keys):
        if isinstance(k, (FeatureNode, LogitNode)):
            lower = np.flatnonzero(layer_of < layer_of[i])
            src = lower[rng.random(lower.size) < p]
            a[i, src] = rng.normal(size=src.size)
    w = rng.dirichlet(np.ones(3)) * 0.9
    return Graph.from_keys(keys, a.tocsr(), rng.random(len(keys)), w, {"n_layers": n_layers})


def dense_influence(g: Graph) -> np.ndarray:
    a = np.abs(g.adjacency.toarray())
    s = a.sum(axis=1, keepdims=True)
    a_n = np.divide(a, s, out=np.zeros_like(a), where=s > 0)
    n = a.shape[0]
    return g.logit_weight_vector() @ (np.linalg.inv(np.eye(n) - a_n) - np.eye(n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_dag_influence_matches_dense_inverse(seed):
    g = random_dag(seed)
    assert 200 <= g.n_nodes <= 400 and g.n_edges > 500
    np.testing.assert_allclose(influence(g), dense_influence(g), rtol=0, atol=1e-10)


def test_cycle_is_detected():
    a = sp.csr_matrix(np.array([[0, 1.0], [1.0, 0]]))
    with pytest.raises(PruneError, match="cycle"):
        propagate(a, np.array([1.0, 0.0]))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), t1=st.floats(0.05, 1.0), t2=st.floats(0.05, 1.0))
def test_property_influence_nonnegative_and_monotone(seed, t1, t2):
    g = random_dag(seed, n_layers=3, n_pos=3, p=0.3)
    infl = influence(g)
    assert (infl >= 0).all()
    lo, hi = sorted((t1, t2))
    # Node-influence stage: a higher node threshold keeps a superset.
    a, b = prune(g, lo, 0.98), prune(g, hi, 0.98)
    assert not (a.influence_mask & ~b.influence_mask).any()
    # Fixed node threshold: a higher edge threshold keeps a superset of nodes and edges.
    c, d = prune(g, 0.8, lo), prune(g, 0.8, hi)
    assert not (c.node_mask & ~d.node_mask).any()
    assert set(zip(c.edges.source, c.edges.target)) <= set(zip(d.edges.source, d.edges.target))
    # Greedy: a higher retained fraction keeps a superset.
    assert not (greedy_prune(g, lo).node_mask & ~greedy_prune(g, hi).node_mask).any()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_property_pruned_graph_invariants(seed):
    g = random_dag(seed, n_layers=3, n_pos=3, p=0.3)
    r = prune(g)
    kept = r.graph
    # tokens and logits always kept; every kept feature has an input and an output;
    # every kept error has an output.
    assert set(g.nodes_of("token")) <= set(kept.keys) and set(g.nodes_of("logit")) <= set(kept.keys)
    a = kept.adjacency
    has_in = np.diff(a.indptr) > 0
    has_out = np.bincount(a.indices, minlength=kept.n_nodes) > 0
    assert (has_in & has_out)[kept.type_mask("feature")].all()
    assert has_out[kept.type_mask("error")].all()
    assert len(r.edge_scores) == kept.n_edges and (r.edge_scores > 0).all()
