"""Discovery methods against independent computations: EAP against finite differences,
EAP-IG against exact patching (convergence in steps), exact node patching against the
organisms' ``Patcher``, ACDC against its own invariants and brute-force exact scores,
ablations against activations captured with ``run``."""

import mlx.core as mx
import numpy as np
import pytest

import attribution  # noqa: F401  (BLAS before mlx)
from circuits_helpers import small_induction, tiny_llama
from attribution import Site, capture
from circuits.discover import (
    DiscoverConfig,
    MaskedModel,
    acdc,
    discover,
    discover_masked,
    eap,
    eap_ig,
    exact,
    integrated_gradients,
)
from circuits.discover.methods import acdc_order
from circuits.errors import DiscoveryError
from circuits.organisms.patching import Component, Patcher


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_llama(tmp_path_factory, seed=3)


@pytest.fixture(scope="module")
def data(model):
    return small_induction(model, 6)


@pytest.fixture(scope="module")
def mm(model, data):
    return MaskedModel(model, data, "counterfactual")


def test_eap_equals_finite_differences(mm):
    grad = eap(mm, "edge")
    eps = 1e-2
    for e in [0, 7, mm.graph.edge_id("L0H1->L1H2"), mm.graph.n_edges - 1]:
        up, down = mm.ones(), mm.ones()
        up[e] += eps
        down[e] -= eps
        fd = (mm.metric(up) - mm.metric(down)) / (2 * eps)
        assert grad[e] == pytest.approx(fd, rel=2e-2, abs=2e-4)


def test_eap_node_is_sum_of_outgoing_edges(mm):
    edge, node = eap(mm, "edge"), eap(mm, "node")
    u = mm.graph.node_id("L0H2")
    assert node[u] == pytest.approx(edge[mm.graph.edge_upstream == u].sum(), abs=1e-6)


def test_ig_converges_to_exact_single_edge(mm):
    e = mm.graph.edge_id("L0H1->L1H2")
    start = mm.ones()
    start[e] = 0.0
    want = mm.metric(mm.ones()) - mm.metric(start)
    errs = [abs(integrated_gradients(mm, start, mm.ones(), k)[e] - want) for k in (1, 4, 32)]
    assert errs[2] < errs[0] + 1e-9
    assert errs[2] < 1e-3 * max(1.0, abs(want)) + 1e-5


def test_ig_completeness(mm):
    total = eap_ig(mm, "edge", steps=32).sum()
    assert total == pytest.approx(mm.metric(mm.ones()) - mm.metric(mm.zeros()), rel=2e-2, abs=1e-3)


def test_exact_nodes_match_patcher(model, data, mm):
    p = Patcher(model, data)
    ex = exact(mm, "node")
    for name in ("L0H0", "L1H3", "L0.mlp"):
        want = p.clean_metric - p.node_metric(Component.parse(name))
        assert ex[mm.graph.node_id(name)] == pytest.approx(want, abs=2e-4)


def test_acdc_invariants_and_brute_force(mm):
    tau = 0.02
    scores, kept = acdc(mm, "edge", tau=tau)
    brute = exact(mm, "edge")
    first = acdc_order(mm, "edge")[0]
    assert scores[first] == pytest.approx(brute[first], abs=1e-5)  # visited on the full model
    assert np.all(np.abs(scores[kept]) >= tau) and np.all(np.abs(scores[~kept]) < tau)
    # Removing everything ACDC removed changes the metric by at most the sum of its steps.
    drift = abs(mm.metric(kept.astype(np.float32)) - mm.metric(mm.ones()))
    assert drift <= np.abs(scores[~kept]).sum() + 1e-4
    # Edges whose exact removal matters far more than all ACDC drift are kept.
    big = np.abs(brute) > 4 * (np.abs(scores[~kept]).sum() + tau)
    assert kept[big].all()
    all_kept = acdc(mm, "edge", tau=0.0)[1]
    assert all_kept.all()


def test_discover_api_records_ablation_and_selects(model, data):
    r = discover(model, data, method="eap", level="edge", ablation="zero", top_n=5)
    assert r.ablation == "zero" and (r.scores["ablation"] == "zero").all()
    assert r.metadata["ablation"] == "zero" and len(r.selected) == 5
    assert r.mask().sum() == 5
    ranks = r.scores.sort_values("rank")["abs_score"].to_numpy()
    assert np.all(np.diff(ranks) <= 0)
    t = r.above(float(ranks[2]))
    assert len(t.selected) >= 3
    n = discover(model, data, method="exact", level="node", ablation="counterfactual",
                 top_fraction=0.5)
    assert len(n.selected) == int(np.ceil(0.5 * n.graph.n_nodes))
    assert n.mask().shape == (n.graph.n_edges,)
    a = discover(model, data, method="acdc", level="component", tau=0.05)
    assert a.level == "edge" and set(a.selected) == set(a.scores[a.scores.in_circuit].unit)
    assert r.clean_metric != r.ablated_metric


def test_config_errors(model, data):
    for bad in ({"method": "sgd"}, {"level": "neuron"}, {"ablation": "noise"}, {"ig_steps": 0},
                {"top_fraction": 0.0}, {"tau": -1.0}, {"top_n": -1}):
        with pytest.raises(DiscoveryError):
            DiscoverConfig(**bad)
    mm = MaskedModel(model, data, "zero")
    with pytest.raises(DiscoveryError, match="ablation"):
        discover_masked(mm, DiscoverConfig(ablation="mean"))


def test_mean_ablation_is_reference_mean(model, data):
    mm = MaskedModel(model, data, "mean")
    st = mm.states[0]
    t = st.batch.clean.shape[1]
    ref = np.stack([r[:t] for r in data.reference if r.size >= t])
    cache = capture(model, mx.array(ref), [Site(0, "resid_pre"), Site(0, "mlp_out")])
    emb = np.array(cache[Site(0, "resid_pre")]).mean(0)
    mlp = np.array(cache[Site(0, "mlp_out")]).mean(0)
    assert np.allclose(np.array(st.ablated[0, 0]), emb, atol=1e-5)
    assert np.allclose(np.array(st.ablated[mm.graph.node_id("L0.mlp"), 0]), mlp, atol=1e-4)


def test_resample_never_uses_own_prompt(model, data):
    mm = MaskedModel(model, data, "resample", seed=1)
    st = mm.states[0]
    own = np.array(mm.writes(st.batch.clean)[0])
    abl = np.array(st.ablated[0])
    for i in range(own.shape[0]):
        assert not np.allclose(own[i], abl[i])
    assert mm.metric(mm.zeros()) != pytest.approx(mm.metric(mm.ones()))
