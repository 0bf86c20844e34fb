"""Feature-to-feature edges by exact patching, attribution patching and IG, each checked
against the spliced model rebuilt from public runs (independent of attribution.replacement)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from spliced_setup import TOKENS, spliced_setup

import attribution  # noqa: F401  (BLAS preload before mlx)
from attribution import Replace, Site, run
from attribution.attribute import GraphConfig, build_graph, node_scores
from attribution.graph.keys import ErrorNode, FeatureNode


def _latents_by_runs(model, dicts, deltas):
    """{layer: [T,m] latents} of the spliced model with ``deltas`` {layer: [T,d]} added at
    mlp_out (clean errors frozen, features re-encoded), from public runs only."""
    toks = mx.array([TOKENS])
    L = model.n_layers
    sites = [Site(l, k) for l in range(L) for k in ("mlp_in", "mlp_out")]
    clean = run(model, toks, capture=sites).cache

    def enc(l, x):
        return mx.maximum(x @ dicts[l].W_enc + dicts[l].b_enc, 0)

    err = {l: clean[Site(l, "mlp_out")][0] - (enc(l, clean[Site(l, "mlp_in")][0]) @ dicts[l].W_dec_
                                             + dicts[l].b_dec) for l in range(L)}
    ivs, lat = [], {}
    for l in range(L):
        x = run(model, toks, interventions=ivs, capture=[Site(l, "mlp_in")]).cache[Site(l, "mlp_in")][0]
        lat[l] = np.asarray(enc(l, x), dtype=np.float64)
        out = lat[l].astype(np.float32) @ np.asarray(dicts[l].W_dec_) + np.asarray(dicts[l].b_dec) \
            + np.asarray(err[l]) + deltas.get(l, 0.0)
        ivs.append(Replace(Site(l, "mlp_out"), mx.array(out.astype(np.float32))))
    return lat


def _delta(model, rm, state, key, lat0, scale=1.0):
    """[T,d] mlp_out change that zero-ablates ``key`` (scaled)."""
    d = np.zeros((len(TOKENS), model.d_model), np.float32)
    if isinstance(key, ErrorNode):
        d[key.pos] = -np.asarray(state.error[key.layer][key.pos])
    else:
        w = np.asarray(rm.units[key.layer].dictionary.W_dec_[key.feature])
        d[key.pos] = -lat0[key.pos, key.feature] * w
    return d * scale


def _rows(ns):
    """{target FeatureNode: edge row over ns.keys} (the metric column dropped)."""
    adj = ns.edges.adjacency.tocsr()
    assert adj.shape == (len(ns.keys) + 1, len(ns.keys) + 1)
    return {k: adj[i].toarray()[0, :-1] for i, k in enumerate(ns.keys) if isinstance(k, FeatureNode)}


def _sources(ns, lat0):
    errs = [ErrorNode(0, p) for p in (2, 5, 7)]
    feats = [k for k in ns.keys if isinstance(k, FeatureNode) and k.layer == 0
             and lat0[k.pos, k.feature] > 0][:4]
    assert len(feats) == 4
    return errs + feats


def test_patching_edges_match_independent_runs(tiny_models):
    model, rm, state, tg = spliced_setup(tiny_models)
    dicts = [rm.units[l].dictionary for l in rm.layers]
    ns = node_scores(rm, state, tg, "patching", ablation="zero", feature_edges=True)
    rows = _rows(ns)
    assert ns.edges.adjacency[len(ns.keys)].nnz == 0  # no row for the metric: scores carry it
    clean = _latents_by_runs(model, dicts, {})
    n_checked = 0
    for src in _sources(ns, clean[0]):
        new = _latents_by_runs(model, dicts, {0: _delta(model, rm, state, src, clean[0])})
        j = ns.keys.index(src)
        for tgt, row in rows.items():
            want = new[tgt.layer][tgt.pos, tgt.feature] - clean[tgt.layer][tgt.pos, tgt.feature]
            assert abs(row[j] - want) < 1e-4, (src, tgt, row[j], want)
            n_checked += abs(want) > 1e-3
    assert n_checked > 20  # the edges are not trivially zero
    # A layer's features respond only to earlier layers; last-layer sources have no targets.
    for tgt, row in rows.items():
        same_or_later = [j for j, k in enumerate(ns.keys) if k.layer >= tgt.layer]
        assert np.abs(row[same_or_later]).max() == 0.0


def test_atp_edges_are_directional_derivatives(tiny_models):
    model, rm, state, tg = spliced_setup(tiny_models)
    dicts = [rm.units[l].dictionary for l in rm.layers]
    ns = node_scores(rm, state, tg, "atp", ablation="zero", feature_edges=True, batch_size=16)
    rows = _rows(ns)
    clean = _latents_by_runs(model, dicts, {})
    eps = 1e-2
    n_checked = 0
    for src in _sources(ns, clean[0]):
        d = _delta(model, rm, state, src, clean[0])
        up = _latents_by_runs(model, dicts, {0: d * eps})
        down = _latents_by_runs(model, dicts, {0: -d * eps})
        j = ns.keys.index(src)
        for tgt, row in rows.items():
            if tgt.layer != 1 or clean[1][tgt.pos, tgt.feature] < 0.05:
                continue  # central differences are only meaningful away from the ReLU kink
            fd = (up[1][tgt.pos, tgt.feature] - down[1][tgt.pos, tgt.feature]) / (2 * eps)
            assert abs(row[j] - fd) < 2e-3 * max(1.0, abs(fd)), (src, tgt, row[j], fd)
            n_checked += abs(fd) > 1e-3
    assert n_checked > 10


def test_ig_edges_are_complete_per_source_layer(tiny_models):
    # Sum over layer 0's nodes of IG(u -> v) = a_v(all of layer 0 ablated) - a_v(clean).
    model, rm, state, tg = spliced_setup(tiny_models)
    dicts = [rm.units[l].dictionary for l in rm.layers]
    ns = node_scores(rm, state, tg, "ig", ablation="zero", feature_edges=True, steps=64,
                     batch_size=64)
    clean = _latents_by_runs(model, dicts, {})
    out0 = np.asarray(run(model, mx.array([TOKENS]), capture=[Site(0, "mlp_out")])
                      .cache[Site(0, "mlp_out")][0])
    ablated = _latents_by_runs(model, dicts, {0: np.asarray(dicts[0].b_dec) - out0})
    layer0 = [j for j, k in enumerate(ns.keys) if k.layer == 0]
    worst, n = 0.0, 0
    for tgt, row in _rows(ns).items():
        if tgt.layer != 1:
            continue
        want = ablated[1][tgt.pos, tgt.feature] - clean[1][tgt.pos, tgt.feature]
        worst = max(worst, abs(row[layer0].sum() - want) / max(1.0, abs(want)))
        n += abs(want) > 1e-2
    assert n > 5 and worst < 2e-2, worst


@pytest.mark.parametrize("method", ["atp", "ig", "patching"])
def test_graph_with_feature_edges(tiny_models, method):
    _, rm, _, tg = spliced_setup(tiny_models)
    cfg = GraphConfig(ablation="zero", ig_steps=4, feature_edges=True, edges_per_target=3)
    g = build_graph(rm, None, TOKENS, targets=[tg.keys[0].token_id], method=method, config=cfg)
    plain = build_graph(rm, None, TOKENS, targets=[tg.keys[0].token_id], method=method,
                        config=GraphConfig(ablation="zero", ig_steps=4))
    n = len(g.nodes)
    adj = g.adjacency.tocsr()
    # the metric row is the node scores, unchanged by feature edges
    np.testing.assert_allclose(adj[n - 1].toarray(), plain.adjacency.tocsr()[n - 1].toarray(),
                               atol=1e-6)
    per_row = np.diff(adj.indptr)[: n - 1]
    assert per_row.max() <= 3 and per_row.sum() > 0
    feat_rows = [i for i, k in enumerate(g.nodes["type"]) if k == "feature"]
    assert np.asarray(g.dropped_mass)[feat_rows].sum() > 0  # top-3 dropped some mass
    assert g.metadata["config"]["feature_edges"] is True
