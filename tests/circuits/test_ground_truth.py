"""Ground truth: recomputes identically, and its patching agrees with independent
computations that splice the mlx-lm modules by hand (no attribution hooks)."""

import json

import numpy as np
import pytest

import attribution  # noqa: F401  (optimised BLAS before mlx)
import mlx.core as mx
from mlx import nn
from attribution import Ablate, Site, load_model, run

from circuits import organisms, tasks
from circuits.errors import OrganismError
from circuits.organisms import Component, GroundTruthConfig
from circuits.organisms.patching import Patcher, components


class Tap(nn.Module):
    """Wraps a module: records its input, optionally edits it with ``fn`` first."""

    def __init__(self, inner, fn=None):
        super().__init__()
        self.inner, self._fn, self._seen = inner, fn, []

    def __call__(self, x, *args, **kw):
        x = self._fn(x) if self._fn else x
        self._seen.append(x)
        return self.inner(x, *args, **kw)


def _tapped(parent, attr, fn=None):
    """Context: replace ``parent.attr`` by a Tap; yields the tap."""
    from contextlib import contextmanager

    @contextmanager
    def cm():
        orig = getattr(parent, attr)
        tap = Tap(orig, fn)
        setattr(parent, attr, tap)
        try:
            yield tap
        finally:
            setattr(parent, attr, orig)

    return cm()


@pytest.fixture(scope="module")
def ind():
    m = load_model(organisms.path("induction"))
    data = tasks.get("induction").generate(40, 5, m.tokenizer)
    return m, data, Patcher(m, data)


def _metric(data, logits, b):
    return float(mx.mean(data.metric(logits[:, -1], b)))


def test_stored_ground_truth_is_complete():
    for name in organisms.names():
        gt = organisms.load_ground_truth(name)
        m_cfg = json.loads((organisms.path(name) / "config.json").read_text())
        L, H = m_cfg["num_hidden_layers"], m_cfg["num_attention_heads"]
        for t, g in gt.tasks.items():
            assert g.ablation == "counterfactual"
            assert len(g.nodes) == L * (H + 1)
            n_paths = sum(H * (H * (L - 1 - l) + (L - l) + 1) for l in range(L))
            assert len(g.paths) == n_paths, (name, t)
            assert g.faithfulness >= gt.config.threshold and g.circuit


def test_ground_truth_recomputes_identically():
    stored = organisms.load_ground_truth("induction")
    fresh = organisms.ground_truth("induction", config=stored.config)
    a, b = stored.to_dict(), fresh.to_dict()
    for t in a["tasks"]:
        sa, sb = a["tasks"][t], b["tasks"][t]
        assert sa["circuit"] == sb["circuit"] and sa["search"] == sb["search"]
        for key in ("nodes", "paths"):
            assert sa[key].keys() == sb[key].keys()
            np.testing.assert_allclose([sa[key][k] for k in sa[key]],
                                       [sb[key][k] for k in sa[key]], atol=1e-4, rtol=1e-4)
        assert sb["faithfulness"] == pytest.approx(sa["faithfulness"], abs=1e-4)


def test_head_patch_matches_manual_splice(ind):
    """Node patching == a two-run splice of the o_proj input done by hand."""
    m, data, p = ind
    b = data.batches()[0]
    dh = m.d_head
    for layer, head in [(0, 0), (1, 1), (1, m.n_heads - 1)]:
        attn = m.module.layers[layer].self_attn
        with _tapped(attn, "o_proj") as tap:
            m.module(b.corrupted)
        z_corr = tap._seen[0]
        sl = slice(head * dh, (head + 1) * dh)

        def splice(x, z=z_corr, sl=sl):
            x = np.array(x)
            x[..., sl] = np.array(z)[..., sl]
            return mx.array(x)

        with _tapped(attn, "o_proj", splice):
            manual = _metric(data, m.module(b.clean), b)
        assert p.node_metric(Component(layer, "head", head)) == pytest.approx(manual, abs=1e-4)
    assert p.node_metric(Component(0, "head", 1)) < p.clean_metric - 1.0  # a real effect


def test_zero_ablation_matches_o_proj_weight_slice(ind):
    m, data, _ = ind
    b = data.batches()[0]
    layer, head, dh = 1, 0, m.d_head
    ours = run(m, b.clean, interventions=[Ablate(Site(layer, "attn_z"), "zero", head=head)]).logits
    o = m.module.layers[layer].self_attn.o_proj
    w = o.weight
    w0 = np.array(w)
    w0[:, head * dh:(head + 1) * dh] = 0
    o.weight = mx.array(w0)
    try:
        manual = m.module(b.clean)
    finally:
        o.weight = w
    np.testing.assert_allclose(np.array(ours), np.array(manual), atol=1e-4)


def test_path_patch_matches_manual_splice(ind):
    """Path L0Hh -> L1Hh' and L0Hh -> logits by hand: add the sender's delta only where
    the receiver reads it (input norm of layer 1 / final norm)."""
    m, data, p = ind
    b, dh = data.batches()[0], m.d_head
    sender, recv = Component(0, "head", 0), Component(1, "head", 1)
    got = p.path_metrics(sender, [recv, "logits"])
    attn0 = m.module.layers[0].self_attn
    zs = {}
    for name, toks in (("clean", b.clean), ("corr", b.corrupted)):
        with _tapped(attn0, "o_proj") as tap:
            m.module(toks)
        zs[name] = np.array(tap._seen[0])[..., :dh]
    w = np.array(attn0.o_proj.weight)[:, :dh]  # [d, dh]
    delta = mx.array((zs["corr"] - zs["clean"]) @ w.T)
    layer1 = m.module.layers[1]
    with _tapped(layer1, "input_layernorm", lambda x: x + delta), \
            _tapped(layer1.self_attn, "o_proj") as tap:
        m.module(b.clean)
    z_new = np.array(tap._seen[0])

    def splice(x):
        x = np.array(x)
        x[..., dh:2 * dh] = z_new[..., dh:2 * dh]
        return mx.array(x)

    with _tapped(layer1.self_attn, "o_proj", splice):
        to_head = _metric(data, m.module(b.clean), b)
    with _tapped(m.module.model, "norm", lambda x: x + delta):
        to_logits = _metric(data, m.module(b.clean), b)
    assert got[0] == pytest.approx(to_head, abs=1e-4)
    assert got[1] == pytest.approx(to_logits, abs=1e-4)
    clean = _metric(data, m.module(b.clean), b)
    assert abs(clean - to_head) > 0.05  # the path matters, so the comparison has teeth


def test_circuit_faithfulness_definition(ind):
    m, _data, p = ind
    comps = components(m)
    assert p.circuit_metric(comps, comps) == pytest.approx(p.clean_metric, abs=1e-5)
    empty = p.circuit_metric([], comps)
    # Patching every component leaves only the direct token-embedding path.
    assert np.isfinite(empty)


def test_bad_inputs():
    with pytest.raises(OrganismError):
        GroundTruthConfig(n=0)
    with pytest.raises(OrganismError, match="no ground_truth.json"):
        organisms.load_ground_truth("/tmp")
    with pytest.raises(OrganismError, match="cannot parse component"):
        Component.parse("head3")
    assert Component.parse("L1H2") == Component(1, "head", 2)
    assert str(Component.parse("L3.mlp")) == "L3.mlp"
