"""Feature interventions (constrained / iterative) and steered generation."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import attribution  # noqa: F401  (BLAS preload before mlx)
from attribution import Add, Site, run
from attribution.attribute import GraphConfig, build_graph
from attribution.graph.keys import FeatureNode
from attribution.replacement import (
    FeatureIntervention,
    ReplacementModel,
    SteeringError,
    generate,
    steer,
)
from attribution.testing_dicts import random_clt, random_transcoders

TOKENS = [2, 5, 9, 14, 7, 22, 31, 11]


@pytest.mark.parametrize("arch,kind", [("llama", "transcoder"), ("gemma3", "skip"), ("gpt2", "clt")])
def test_constrained_doubling_equals_graph_edges(tiny_models, arch, kind):
    """Constrained mode (a forward-mode JVP) must reproduce the graph's direct effects
    (reverse-mode VJP rows) on every logit node: two independent code paths."""
    model = tiny_models[arch]
    dicts = random_clt(model, 32, seed=1) if kind == "clt" else random_transcoders(model, 32, seed=1, kind=kind)
    rm = ReplacementModel(model, dicts)
    g = build_graph(rm, None, TOKENS, config=GraphConfig())
    feats = [f for f in g.nodes_of("feature") if f.layer == 0][:6]
    for f in feats:
        res = steer(rm, None, TOKENS, [FeatureIntervention(f.layer, f.feature, "scale", 2.0, f.pos)])
        d = np.asarray(res.logits[-1] - res.clean_logits[-1], dtype=np.float64)
        for lk in g.nodes_of("logit"):
            assert abs((d[lk.token_id] - d.mean()) - g.weight(f, lk)) < 1e-4, (f, lk)
        # Constrained: the edited feature is doubled and nothing else is fed back.
        assert np.isclose(float(res.activations[f.layer][f.pos, f.feature]),
                          2 * float(res.clean_activations[f.layer][f.pos, f.feature]), rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_iterative_equals_adding_the_decoder_delta(tiny_models, arch):
    """Iterative mode = the real model with (new - current) * W_dec added at the MLP output."""
    model = tiny_models[arch]
    dicts = random_transcoders(model, 32, seed=2)
    rm = ReplacementModel(model, dicts)
    state = rm.clean(mx.array([TOKENS]))
    a = np.asarray(state.acts[0])
    pos, feat = map(int, np.argwhere(a > 0)[0])
    res = steer(rm, None, TOKENS, [FeatureIntervention(0, feat, "set", 5.0, pos)], mode="iterative")
    delta = np.zeros((len(TOKENS), model.d_model), np.float32)
    delta[pos] = (5.0 - a[pos, feat]) * np.asarray(dicts[0].W_dec_[feat])
    want = run(model, mx.array([TOKENS]), interventions=[Add(Site(0, "mlp_out"), mx.array(delta))]).logits[0]
    assert np.abs(np.asarray(res.logits) - np.asarray(want)).max() < 1e-4
    assert float(res.activations[0][pos, feat]) == 5.0
    # Effects propagate: later positions' layer-1 features change.
    assert np.abs(np.asarray(res.activations[1]) - np.asarray(res.clean_activations[1]))[pos:].max() > 1e-4
    # Setting a feature to its own value changes nothing.
    same = steer(rm, None, TOKENS, [FeatureIntervention(0, feat, "set", float(a[pos, feat]), pos)],
                 mode="iterative")
    assert np.abs(np.asarray(same.logits - same.clean_logits)).max() < 1e-5


def test_ablate_and_generate(tiny_models):
    model = tiny_models["llama"]
    rm = ReplacementModel(model, random_transcoders(model, 32, seed=3))
    # No interventions: plain greedy decoding of the model itself.
    out = generate(rm, None, TOKENS[:4], [], n_tokens=3)
    ids = list(TOKENS[:4])
    for _ in range(3):
        ids.append(int(mx.argmax(model(mx.array([ids]))[0, -1])))
    assert out.tokens == ids and out.new_tokens == ids[4:]
    # Ablating every active layer-1 feature everywhere changes the logits.
    state = rm.clean(mx.array([TOKENS]))
    active = np.flatnonzero(np.asarray(state.acts[1]).max(0) > 0)
    ivs = [FeatureIntervention(1, int(f), "ablate") for f in active]
    res = steer(rm, None, TOKENS, ivs, mode="iterative")
    assert np.asarray(res.activations[1]).max() == 0
    assert np.abs(np.asarray(res.logits - res.clean_logits)).max() > 1e-3
    steered = generate(rm, None, TOKENS[:4], ivs, n_tokens=2, mode="constrained")
    assert len(steered.new_tokens) == 2


def test_bad_interventions(tiny_models):
    model = tiny_models["llama"]
    rm = ReplacementModel(model, random_transcoders(model, 16))
    with pytest.raises(SteeringError, match="no dictionary"):
        steer(rm, None, TOKENS, [FeatureIntervention(7, 0)])
    with pytest.raises(SteeringError, match="out of range"):
        steer(rm, None, TOKENS, [FeatureIntervention(0, 16)])
    with pytest.raises(SteeringError, match="positions"):
        steer(rm, None, TOKENS, [FeatureIntervention(0, 1, positions=[99])])
    with pytest.raises(SteeringError):
        FeatureIntervention(0, 1, mode="boost")
    with pytest.raises(SteeringError):
        steer(rm, None, TOKENS, [], mode="sideways")
    assert isinstance(FeatureNode(0, 1, 2), tuple)
