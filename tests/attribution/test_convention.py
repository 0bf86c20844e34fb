"""``GraphConfig(convention="circuit-tracer")``: BOS prepended, position 0 zeroed, token
nodes without the positional embedding, checked against measured frozen interventions
(the machinery of ``test_exactness``) and against the default graph."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import attribution  # noqa: F401  (BLAS preload before mlx)
from attribution import Site
from attribution.attribute import GraphConfig, build_graph
from attribution.graph.keys import ErrorNode, FeatureNode, LogitNode, TokenNode
from attribution.testing_dicts import random_transcoders
from test_exactness import ATOL, TOKENS, _clean, _measure, _weights

CT = GraphConfig(batch_size=24, convention="circuit-tracer")


def test_bos_is_prepended_only_when_missing(tiny_models):
    model = tiny_models["llama"]
    dicts = random_transcoders(model, 32, seed=1)
    bos = int(model.tokenizer.bos_token_id)
    g = build_graph(model, dicts, mx.array([[5, 9, 14]]), config=CT)
    assert g.metadata["tokens"] == [bos, 5, 9, 14] and g.metadata["convention"] == "circuit-tracer"
    g2 = build_graph(model, dicts, mx.array([[bos, 5, 9, 14]]), config=CT)
    assert g2.metadata["tokens"] == [bos, 5, 9, 14]
    assert build_graph(model, dicts, mx.array([[5, 9, 14]])).metadata["tokens"] == [5, 9, 14]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_circuit_tracer_columns_equal_frozen_interventions(tiny_models, arch):
    model = tiny_models[arch]
    dicts = random_transcoders(model, 64, seed=3)
    toks = mx.array([TOKENS])  # TOKENS starts with the tiny tokenizer's BOS
    g = build_graph(model, dicts, toks, config=CT)
    ours = build_graph(model, dicts, toks, config=GraphConfig(batch_size=24))
    nodes = g.nodes
    assert not ((nodes["type"].isin(["feature", "error"])) & (nodes["pos"] == 0)).any()
    assert ((ours.nodes["type"] == "error") & (ours.nodes["pos"] == 0)).any()

    w = _weights(dicts, model)
    cache, f, err = _clean(model, toks, w)
    feats = g.nodes_of("feature")
    sources = g.nodes_of("token") + g.nodes_of("error") + feats[:: max(1, len(feats) // 40)]
    T, d = len(TOKENS), model.d_model
    vecs = {"tok": np.zeros((len(sources), T, d), np.float32)}
    vecs.update({l: np.zeros((len(sources), T, d), np.float32) for l in range(model.n_layers)})
    emb = np.asarray(cache[Site(0, "resid_pre")][0])
    if model.W_pos is not None:  # circuit-tracer's token vector: W_E[token] only
        emb = emb - np.asarray(model.W_pos[:T])
    for b, s in enumerate(sources):
        if isinstance(s, TokenNode):
            vecs["tok"][b, s.pos] = emb[s.pos]
        elif isinstance(s, ErrorNode):
            vecs[s.layer][b, s.pos] = np.asarray(err[s.layer][s.pos])
        else:
            a = float(f[s.layer][s.pos, s.feature])
            for j, wd in w[s.layer][2].items():
                vecs[j][b, s.pos] += a * np.asarray(wd[s.feature])
    tan_in, dlog = _measure(model, toks, w, cache, {k: mx.array(v) for k, v in vecs.items()})
    dlog = np.asarray(dlog, dtype=np.float64)
    targets = feats + g.nodes_of("logit")
    measured = np.zeros((len(targets), len(sources)))
    tan_np = [np.asarray(t) for t in tan_in]
    for r, t in enumerate(targets):
        if isinstance(t, FeatureNode):
            measured[r] = tan_np[t.layer][:, t.pos] @ np.asarray(w[t.layer][0])[:, t.feature]
        else:
            assert isinstance(t, LogitNode)
            measured[r] = dlog[:, t.pos, t.token_id] - dlog[:, t.pos].mean(axis=1)
    dense = g.adjacency[[g.index(t) for t in targets]][:, [g.index(s) for s in sources]].toarray()
    assert np.abs(measured).max() > 1e-2
    assert np.abs(dense - measured).max() <= ATOL

    # Feature and error columns at positions >= 1 are the default graph's, unchanged.
    common = [s for s in sources if not isinstance(s, TokenNode)]
    a = g.adjacency[[g.index(t) for t in targets]][:, [g.index(s) for s in common]].toarray()
    b = ours.adjacency[[ours.index(t) for t in targets]][:, [ours.index(s) for s in common]].toarray()
    assert np.abs(a - b).max() <= 1e-5
    # Token columns differ exactly when there is a positional embedding.
    toks_ct = g.adjacency[:, [g.index(s) for s in g.nodes_of("token")]].toarray()
    toks_ours = ours.adjacency[:, [ours.index(s) for s in ours.nodes_of("token")]].toarray()
    rows = [ours.index(t) for t in targets]
    moved = np.abs(toks_ct[[g.index(t) for t in targets]] - toks_ours[rows]).max()
    assert (moved > 1e-3) == (model.W_pos is not None)


def test_unknown_convention_and_patching_refused(tiny_models):
    from attribution.replacement.errors import AttributionMethodError

    model = tiny_models["llama"]
    dicts = random_transcoders(model, 32, seed=1)
    with pytest.raises(AttributionMethodError, match="convention"):
        GraphConfig(convention="neuronpedia")
    with pytest.raises(AttributionMethodError, match="exact"):
        build_graph(model, dicts, mx.array([[2, 5, 9]]), method="atp", config=CT)
