"""Replacement and completeness scores against hand arithmetic and a dense computation.

Same 10-node hand graph as tests/circuits/test_prune.py (influences there):
    t0 .125, t1 .375, f0b .025, f0a .3, e01 .15, f1a .6, f1b .05, e11 .15; w = (.6, .2).

Full graph:
    replacement = (t0 + t1) / (t0 + t1 + e01 + e11) = .5 / .8 = .625
    error fractions e_i: f1a .25 (e01 is 1 of |2|+|1|+|1|), L1 .25 (e11 is 1 of 3+1), others 0
    influence + w summed = 1.775 + .8 = 2.575
    completeness = 1 - (.25*.6 + .25*.6) / 2.575 = 2.275 / 2.575
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.graph import ErrorNode, FeatureNode, Graph, LogitNode, TokenNode, validate_neuronpedia
from circuits.prune import graph_scores, merge_into_errors, prune, top_edges

T0, T1 = TokenNode(0, 10), TokenNode(1, 11)
F0B, F0A, E01 = FeatureNode(0, 0, 3), FeatureNode(0, 1, 5), ErrorNode(0, 1)
F1A, F1B, E11 = FeatureNode(1, 1, 7), FeatureNode(1, 1, 8), ErrorNode(1, 1)
L1, L2 = LogitNode(1, 20), LogitNode(1, 21)
KEYS = [T0, T1, F0B, F0A, E01, F1A, F1B, E11, L1, L2]
EDGES = [(T0, F0A, 1.0), (T1, F0A, -3.0), (T0, F0B, 2.0), (F0A, F1A, 2.0), (E01, F1A, 1.0), (T1, F1A, 1.0),
         (F0B, F1B, -1.0), (T0, F1B, 1.0), (F1A, L1, 3.0), (E11, L1, -1.0), (F1A, L2, 3.0), (F1B, L2, 1.0)]


def build(keys, edges, n_layers, weights) -> Graph:
    idx = {k: i for i, k in enumerate(keys)}
    a = sp.lil_matrix((len(keys), len(keys)))
    for s, t, w in edges:
        a[idx[t], idx[s]] = w
    it = iter(weights)
    probs = [next(it) if isinstance(k, LogitNode) else 0.0 for k in keys]
    return Graph.from_keys(keys, a.tocsr(), np.ones(len(keys)), list(weights), {"n_layers": n_layers},
                           token=["a", "b"] + ["?"] * (len(keys) - 2), logit_prob=probs)


def hand_graph() -> Graph:
    return build(KEYS, EDGES, 2, [0.6, 0.2])


def test_full_scores_by_hand():
    s = graph_scores(hand_graph())
    assert s.token_influence == pytest.approx(0.5, abs=1e-12)
    assert s.error_influence == pytest.approx(0.3, abs=1e-12)
    assert s.replacement == pytest.approx(0.625, abs=1e-12)
    assert s.completeness == pytest.approx(2.275 / 2.575, abs=1e-12)


def test_pruned_and_merged_scores_by_hand():
    r = prune(hand_graph())  # keeps t0 t1 f0a e01 f1a e11 L1 L2 and all 8 edges between them
    # Pruned graph alone, rows re-normalised: L2 <- f1a is 1; influence' t0 .08125,
    # t1 .40625 (.1625 via f1a + .24375 via f0a), e01 .1625, e11 .15, f0a .325, f1a .65.
    # replacement = .4875 / .8; completeness = 1 - (.25*.65 + .25*.6) / (1.775 + .8).
    assert r.scores.pruned.replacement == pytest.approx(0.4875 / 0.8, abs=1e-12)
    assert r.scores.pruned.completeness == pytest.approx(1 - 0.3125 / 2.575, abs=1e-12)
    # Merged: f0b -> err:0:0 (created), f1b -> err:1:1. L2 <- f1a 3, e11 1 (was f1b's);
    # f1b's inputs are dropped. Influence: f1a .6, e11 .15 + .05 = .2, f0a .3, e01 .15,
    # t1 .15 + .225 = .375, t0 .075 (only via f0a). replacement = .45 / .8 = .5625.
    # error fractions: f1a .25, L1 .25, L2 .25; influence + w = 1.7 + .8 = 2.5;
    # completeness = 1 - .25 * (.6 + .6 + .2) / 2.5 = .86.
    assert r.scores.merged.replacement == pytest.approx(0.5625, abs=1e-12)
    assert r.scores.merged.completeness == pytest.approx(0.86, abs=1e-12)
    assert r.scores.full == graph_scores(hand_graph())


def test_merge_into_errors_structure():
    g = hand_graph()
    keep = np.array([k not in (F0B, F1B) for k in g.keys])
    m = merge_into_errors(g, keep)
    assert set(m.keys) == {T0, T1, ErrorNode(0, 0), F0A, E01, F1A, E11, L1, L2}
    assert m.weight(E11, L2) == 1.0 and m.weight(E11, L1) == -1.0
    assert m.n_edges == 9  # 12 - f0b<-t0 - f1b<-f0b - f1b<-t0; L2<-f1b became L2<-e11
    assert m.nodes.set_index("key").loc[str(ErrorNode(0, 0)), "token"] == "a"
    # Signed weights add up when a merged feature and the error feed the same target:
    # merging f1a into e11 gives L1 <- e11 = -1 + 3 = 2 and L2 <- e11 = 3.
    m2 = merge_into_errors(g, np.array([k != F1A for k in g.keys]))
    assert m2.weight(E11, L1) == 2.0 and m2.weight(E11, L2) == 3.0 and F1A not in m2


def test_perfect_and_empty_graphs():
    t, f, e, lg = TokenNode(0, 1), FeatureNode(0, 0, 0), ErrorNode(0, 0), LogitNode(0, 2)
    s = graph_scores(build([t, f, e, lg], [(t, f, 2.0), (f, lg, -1.0)], 1, [0.9]))
    assert (s.replacement, s.completeness) == (1.0, 1.0)
    s0 = graph_scores(build([t, f, e, lg], [(t, f, 2.0), (f, lg, -1.0)], 1, [0.0]))
    assert math.isnan(s0.replacement) and math.isnan(s0.completeness)


def random_dag(seed: int, n_layers: int = 4, n_pos: int = 6, p: float = 0.15) -> Graph:
    rng = np.random.default_rng(seed)
    keys = [TokenNode(q, int(rng.integers(100))) for q in range(n_pos)]
    for layer in range(n_layers):
        for q in range(n_pos):
            keys += [FeatureNode(layer, q, int(f)) for f in sorted(rng.choice(500, rng.integers(0, 10), replace=False))]
            keys.append(ErrorNode(layer, q))
    keys += [LogitNode(n_pos - 1, t) for t in (7, 8)]
    lay = np.array([-1 if isinstance(k, TokenNode) else n_layers if isinstance(k, LogitNode) else k.layer
                    for k in keys])
    a = sp.lil_matrix((len(keys), len(keys)))
    for i, k in enumerate(keys):
        if isinstance(k, (FeatureNode, LogitNode)):
            lower = np.flatnonzero(lay < lay[i])
            src = lower[rng.random(lower.size) < p]
            a[i, src] = rng.normal(size=src.size)
    return Graph.from_keys(keys, a.tocsr(), rng.random(len(keys)), rng.dirichlet([1, 1]) * 0.95, {"n_layers": n_layers})


def dense_scores(g: Graph) -> tuple[float, float]:
    """Independent dense computation: explicit inverse and explicit sums."""
    a = np.abs(g.adjacency.toarray())
    s = a.sum(1, keepdims=True)
    a_n = np.divide(a, s, out=np.zeros_like(a), where=s > 0)
    n = len(a)
    types = g.nodes["type"].to_numpy()
    w = np.zeros(n)
    w[types == "logit"] = g.logit_weights
    infl = w @ (np.linalg.inv(np.eye(n) - a_n) - np.eye(n))
    tok, err = infl[types == "token"].sum(), infl[types == "error"].sum()
    frac = a_n[:, types == "error"].sum(1)
    return tok / (tok + err), ((1 - frac) * (infl + w)).sum() / (infl + w).sum()


@pytest.mark.parametrize("seed", [3, 4])
def test_random_dag_scores_match_dense(seed):
    g = random_dag(seed)
    r = prune(g)
    for graph, got in ((g, r.scores.full), (r.graph, r.scores.pruned)):
        rep, comp = dense_scores(graph)
        assert got.replacement == pytest.approx(rep, abs=1e-10)
        assert got.completeness == pytest.approx(comp, abs=1e-10)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_property_scores_in_unit_interval(seed):
    r = prune(random_dag(seed, n_layers=3, n_pos=3, p=0.3))
    for s in r.scores:
        for v in (s.replacement, s.completeness):
            assert math.isnan(v) or -1e-12 <= v <= 1 + 1e-12
    # Merging pruned features into errors can only move mass from tokens to errors.
    assert r.scores.merged.replacement <= r.scores.full.replacement + 1e-12


def test_result_views():
    g = hand_graph()
    r = prune(g)
    nxg = r.to_networkx()
    assert set(nxg.nodes) == {str(k) for k in r.node_keys}
    assert nxg.nodes[str(F1A)]["influence"] == pytest.approx(0.6)
    assert nxg.edges[str(F1A), str(L1)]["score"] == pytest.approx(0.45)
    assert nxg.edges[str(F1A), str(L1)]["weight"] == 3.0
    d = r.to_neuronpedia(slug="hand")
    validate_neuronpedia(d)
    assert d["metadata"]["node_threshold"] == 0.8 and len(d["links"]) == r.graph.n_edges
    cum = r.cumulative_influence()  # f1a has the largest influence: .6 / 1.775
    assert cum[g.index(F1A)] == pytest.approx(0.6 / 1.775)
    assert top_edges(g, 2).scores.full == r.scores.full
