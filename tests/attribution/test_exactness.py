"""Exactness of graph edges: every column equals the measured frozen intervention effect.

The "measured" side never touches attribution.replacement / attribution.attribute:
it runs the model through ``attribution.run(..., freeze=True)`` with public
interventions and differentiates in *forward* mode (``mx.jvp``):
  1. every dictionary's MLP output is ``Replace``d by its clean value (MLP
     held constant) and the node's write vector is ``Add``ed there (or at
     resid_pre[0] for a token node), scaled by the JVP variable t;
  2. a skip transcoder's W_skip path is added back layer by layer: the
     tangent of mlp_in at layer l (from a pass with the skip terms of the
     layers below) times W_skip is added at mlp_out l (L+1 passes);
  3. the frozen forward is linear in t, so the tangent is exactly the change
     caused by doubling the feature (adding back the error / token vector)
     with attention patterns, norm scales and every other feature held fixed.
Targets: feature pre-activations (tangent of mlp_in · encoder column, from the
dictionary's own weights) and demeaned logits (softcap undone for gemma2).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import attribution  # noqa: F401  (BLAS preload before mlx)
from attribution import Add, Replace, Site, run
from attribution.attribute import GraphConfig, build_graph
from attribution.graph.keys import ErrorNode, FeatureNode, LogitNode, TokenNode
from attribution.testing_dicts import random_clt, random_transcoders

ATOL = 1e-4
TOKENS = [2, 5, 9, 14, 7, 22, 31, 11]


def _weights(dicts, model):
    """Per layer: (W_enc, b_enc, {target_layer: W_dec_to_target}, b_dec_total, W_skip)."""
    L = model.n_layers
    if not isinstance(dicts, list):  # CLT
        return {l: (dicts.W_enc[l], dicts.b_enc[l], {j: dicts.W_dec_layers[l][:, j - l] for j in range(l, L)},
                    dicts.b_dec[l], None) for l in range(L)}
    return {d.out_site.layer: (d.W_enc, d.b_enc, {d.out_site.layer: d.W_dec_}, d.b_dec, d.W_skip_)
            for d in dicts}


def _clean(model, toks, w):
    L = model.n_layers
    sites = [Site(0, "resid_pre")] + [Site(l, k) for l in range(L) for k in ("mlp_in", "mlp_out")]
    cache = run(model, toks, capture=sites).cache
    f = {l: mx.maximum(cache[Site(l, "mlp_in")][0] @ w[l][0] + w[l][1], 0) for l in range(L)}
    err = {}
    for j in range(L):
        rec = w[j][3] + sum(f[i] @ w[i][2][j] for i in range(L) if j in w[i][2])
        if w[j][4] is not None:
            rec = rec + cache[Site(j, "mlp_in")][0] @ w[j][4]
        err[j] = cache[Site(j, "mlp_out")][0] - rec
    return cache, f, err


def _measure(model, toks, w, cache, vecs):
    """Tangents (mlp_in per layer [B,T,d], logits [B,T,V]) for per-copy write vectors."""
    L = model.n_layers
    b = vecs["tok"].shape[0]
    tt = mx.broadcast_to(toks, (b, toks.shape[1]))
    skips = {l: mx.zeros_like(vecs["tok"]) for l in range(L)}

    def passes(skips):
        def f(t):
            ivs = [Add(Site(0, "resid_pre"), t * vecs["tok"])]
            for l in range(L):
                site = Site(l, "mlp_out")
                ivs += [Replace(site, cache[site]), Add(site, t * (vecs[l] + skips[l]))]
            r = run(model, tt, interventions=ivs, capture=[Site(l, "mlp_in") for l in range(L)], freeze=True)
            return [r.logits] + [r.cache[Site(l, "mlp_in")] for l in range(L)]

        _, tan = mx.jvp(f, [mx.array(0.0)], [mx.array(1.0)])
        return tan

    for l in range(L):
        if w[l][4] is not None:
            skips[l] = passes(skips)[1 + l] @ w[l][4]
    tan = passes(skips)
    return tan[1:], tan[0]


def _check(model, dicts, n_features=60, seed=0):
    toks = mx.array([TOKENS])
    g = build_graph(model, dicts, toks, config=GraphConfig(batch_size=24))
    w = _weights(dicts, model)
    cache, f, err = _clean(model, toks, w)
    rng = np.random.default_rng(seed)
    feats = g.nodes_of("feature")
    assert len(feats) >= 50, "dictionaries too sparse for the test"
    pick = [feats[i] for i in rng.choice(len(feats), min(n_features, len(feats)), replace=False)]
    sources = g.nodes_of("token") + g.nodes_of("error") + pick
    T, d = len(TOKENS), model.d_model
    vecs = {"tok": np.zeros((len(sources), T, d), np.float32)}
    vecs.update({l: np.zeros((len(sources), T, d), np.float32) for l in range(model.n_layers)})
    emb = np.asarray(cache[Site(0, "resid_pre")][0])
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
    cap = model.logit_softcap
    if cap is not None:  # undo the final softcap: d logits = (1 - tanh^2) dz
        clean = np.asarray(run(model, toks).logits, dtype=np.float64)
        dlog = dlog / (1 - (clean / cap) ** 2)
    targets = g.nodes_of("feature") + g.nodes_of("logit")
    measured = np.zeros((len(targets), len(sources)))
    tan_np = [np.asarray(t) for t in tan_in]
    enc = {l: np.asarray(w[l][0]) for l in w}
    for r, t in enumerate(targets):
        if isinstance(t, FeatureNode):
            measured[r] = tan_np[t.layer][:, t.pos] @ enc[t.layer][:, t.feature]
        else:
            assert isinstance(t, LogitNode)
            row = dlog[:, t.pos]
            measured[r] = row[:, t.token_id] - row.mean(axis=1)
    dense = g.adjacency[[g.index(t) for t in targets]][:, [g.index(s) for s in sources]].toarray()
    diff = np.abs(dense - measured)
    assert np.abs(measured).max() > 1e-2, "measured effects are all ~0: the test would be vacuous"
    return float(diff.max()), float(np.abs(measured).max()), g


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3", "gpt2"])
def test_transcoder_columns_equal_frozen_interventions(tiny_models, arch):
    model = tiny_models[arch]
    err, scale, g = _check(model, random_transcoders(model, 64, seed=3))
    assert err <= ATOL, f"{arch}: max |graph - measured| = {err:.2e} (scale {scale:.2f})"
    assert g.metadata["backward_passes"] >= 2


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_skip_transcoder_columns(tiny_models, arch):
    model = tiny_models[arch]
    err, scale, _ = _check(model, random_transcoders(model, 64, seed=5, kind="skip"))
    assert err <= ATOL, f"{arch} skip: max |graph - measured| = {err:.2e} (scale {scale:.2f})"


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_clt_columns(tiny_models, arch):
    model = tiny_models[arch]
    err, scale, _ = _check(model, random_clt(model, 48, seed=7))
    assert err <= ATOL, f"{arch} CLT: max |graph - measured| = {err:.2e} (scale {scale:.2f})"


def test_sae_cut_with_frozen_mlp(tiny_models):
    """Llama: a residual SAE at L0.resid_post (MLP 0 has no transcoder: frozen) and a
    transcoder on layer 1. Measured with public runs: MLP 0 and the SAE site are Replaced
    by their clean values (the SAE cuts the stream), write vectors Added, JVP in t."""
    from attribution.testing_dicts import random_dictionary

    model = tiny_models["llama"]
    d = model.d_model
    sae = random_dictionary(d, 0, 64, seed=21, kind="sae", site="resid_post", bias=-0.3)
    tc = random_dictionary(d, 1, 64, seed=22)
    toks = mx.array([TOKENS])
    g = build_graph(model, [sae, tc], toks)
    s0, m0, m1, i1 = Site(0, "resid_post"), Site(0, "mlp_out"), Site(1, "mlp_out"), Site(1, "mlp_in")
    mid0, emb_site = Site(0, "resid_mid"), Site(0, "resid_pre")
    cache = run(model, toks, capture=[s0, m0, m1, i1, emb_site]).cache
    f0 = mx.maximum(cache[s0][0] @ sae.W_enc + sae.b_enc, 0)
    e0 = cache[s0][0] - (f0 @ sae.W_dec_ + sae.b_dec)
    f1 = mx.maximum(cache[i1][0] @ tc.W_enc + tc.b_enc, 0)
    e1 = cache[m1][0] - (f1 @ tc.W_dec_ + tc.b_dec)
    feats = g.nodes_of("feature")
    sources = g.nodes_of("token") + g.nodes_of("error") + feats[:: max(1, len(feats) // 60)]
    T = len(TOKENS)
    v = {k: np.zeros((len(sources), T, d), np.float32) for k in ("tok", 0, 1)}
    for b, s in enumerate(sources):
        if isinstance(s, TokenNode):
            v["tok"][b, s.pos] = np.asarray(cache[emb_site][0, s.pos])
        elif isinstance(s, ErrorNode):
            v[s.layer][b, s.pos] = np.asarray((e0 if s.layer == 0 else e1)[s.pos])
        else:
            f, w = (f0, sae.W_dec_) if s.layer == 0 else (f1, tc.W_dec_)
            v[s.layer][b, s.pos] = float(f[s.pos, s.feature]) * np.asarray(w[s.feature])
    vv = {k: mx.array(x) for k, x in v.items()}
    tt = mx.broadcast_to(toks, (len(sources), T))

    def fwd(t):
        ivs = [Add(emb_site, t * vv["tok"]), Replace(m0, cache[m0]),
               Replace(s0, cache[s0]), Add(s0, t * vv[0]),
               Replace(m1, cache[m1]), Add(m1, t * vv[1])]
        r = run(model, tt, interventions=ivs, capture=[mid0, i1], freeze=True)
        return [r.logits, r.cache[mid0], r.cache[i1]]

    _, (dlog, dmid, din1) = mx.jvp(fwd, [mx.array(0.0)], [mx.array(1.0)])
    dlog, dmid, din1 = (np.asarray(x, dtype=np.float64) for x in (dlog, dmid, din1))
    targets = feats + g.nodes_of("logit")
    measured = np.zeros((len(targets), len(sources)))
    for r, t in enumerate(targets):
        if isinstance(t, FeatureNode):
            # SAE features read resid_post 0 before the cut = resid_mid 0 + (frozen) MLP 0.
            x, w = (dmid, sae.W_enc) if t.layer == 0 else (din1, tc.W_enc)
            measured[r] = x[:, t.pos] @ np.asarray(w[:, t.feature])
        else:
            measured[r] = dlog[:, t.pos, t.token_id] - dlog[:, t.pos].mean(axis=1)
    dense = g.adjacency[[g.index(t) for t in targets]][:, [g.index(s) for s in sources]].toarray()
    assert np.abs(measured).max() > 1e-2
    assert np.abs(dense - measured).max() <= ATOL
    # The cut: tokens reach layer-1 features only through the SAE's nodes.
    tok_cols = [g.index(s) for s in g.nodes_of("token")]
    l1 = [g.index(f) for f in feats if f.layer == 1]
    assert g.adjacency[l1][:, tok_cols].nnz == 0
