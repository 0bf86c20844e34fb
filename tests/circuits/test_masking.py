"""Masking core: the all-ones / all-zeros masks against ``run`` + ``Patch``; one edge
against a hand-built splice with ``run``/``Add``/``Replace``/``W_O``; GQA head
isolation against an equivalent model whose KV heads are unshared."""

import mlx.core as mx
import numpy as np
import pytest

import attribution  # noqa: F401  (BLAS before mlx)
from attribution import Add, Patch, Replace, Site, load_model, run
from attribution.tiny import make_tiny_model
from circuits import tasks
from circuits.discover import MaskedModel
from circuits.discover.graph import ComponentGraph
from circuits.errors import DiscoveryError, UnsupportedModelError

ATOL = 2e-4


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return load_model(make_tiny_model("llama", tmp_path_factory.mktemp("llama"), seed=1))


@pytest.fixture(scope="module")
def data(llama):
    return tasks.get("induction", segment_len=4, repeat_len=2).generate(5, 0, llama.tokenizer)


def _all_sites(m):
    return [Site(0, "resid_pre")] + [Site(layer, k) for layer in range(m.n_layers)
                                     for k in ("attn_z", "mlp_out")]


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen2", "mistral"])
def test_ones_is_clean_and_zeros_is_fully_patched(arch, tmp_path):
    m = load_model(make_tiny_model(arch, tmp_path, seed=2))
    d = tasks.get("induction", segment_len=4, repeat_len=2).generate(4, 1, m.tokenizer)
    for qkv in ("joint", "separate"):
        mm = MaskedModel(m, d, "counterfactual", qkv=qkv)
        b = mm.states[0].batch
        assert np.allclose(np.array(mm.logits(mm.ones())), np.array(m(b.clean)), atol=ATOL)
        corr = run(m, b.corrupted, capture=_all_sites(m)).cache
        patched = run(m, b.clean, interventions=[Patch(s, source=corr) for s in _all_sites(m)])
        assert np.allclose(np.array(mm.logits(mm.zeros())), np.array(patched.logits), atol=ATOL)


def test_zero_ablation_all_zeros_matches_replace_by_zero(llama, data):
    mm = MaskedModel(llama, data, "zero")
    b = mm.states[0].batch
    shape = lambda s: (b.clean.shape[0], b.clean.shape[1], llama.n_heads, llama.d_head) \
        if s.kind == "attn_z" else (b.clean.shape[0], b.clean.shape[1], llama.d_model)
    ivs = [Replace(s, mx.zeros(shape(s))) for s in _all_sites(llama)]
    want = run(llama, b.clean, interventions=ivs).logits
    assert np.allclose(np.array(mm.logits(mm.zeros())), np.array(want), atol=ATOL)


def _splice_metric(m, data, b, sender, receiver):
    """Metric with one edge patched, by hand: sender's write delta reaches only receiver."""
    sites = _all_sites(m)
    clean = run(m, b.clean, capture=sites).cache
    corr = run(m, b.corrupted, capture=sites).cache
    if sender == "embed":
        delta = corr[Site(0, "resid_pre")] - clean[Site(0, "resid_pre")]
    else:
        layer, h = sender
        dz = (corr[Site(layer, "attn_z")] - clean[Site(layer, "attn_z")])[:, :, h]
        delta = dz @ m.W_O(layer)[h]
    if receiver == "logits":
        ivs = [Add(Site(m.n_layers - 1, "resid_post"), delta)]
    else:
        layer, h = receiver
        if h is None:  # an MLP reads resid_mid
            read, into = Site(layer, "mlp_out"), Site(layer, "resid_mid")
        else:
            read, into = Site(layer, "attn_z"), Site(layer, "resid_pre")
        value = run(m, b.clean, interventions=[Add(into, delta)], capture=[read]).cache[read]
        ivs = [Replace(read, value, head=h)] if h is not None else [Replace(read, value)]
    logits = run(m, b.clean, interventions=ivs).logits
    return float(mx.mean(data.metric(logits[:, -1], b)))


@pytest.mark.parametrize("edge,sender,receiver", [
    ("L0H1->L1H2", (0, 1), (1, 2)),
    ("L0H3->L1.mlp", (0, 3), (1, None)),
    ("L1H0->logits", (1, 0), "logits"),
    ("embed->L1H3", "embed", (1, 3)),
    ("L0H2->L0.mlp", (0, 2), (0, None)),
])
def test_single_edge_equals_hand_splice(llama, data, edge, sender, receiver):
    one = data.subset([i for i, c in enumerate(data.clean) if c.size == data.clean[0].size])
    mm = MaskedModel(llama, one, "counterfactual")
    mask = mm.ones()
    mask[mm.graph.edge_id(edge)] = 0.0
    want = _splice_metric(llama, one, mm.states[0].batch, sender, receiver)
    assert mm.metric(mask) == pytest.approx(want, abs=ATOL)


def _mha_copy(m, tmp_path):
    """The same network with KV heads repeated (n_kv_heads = n_heads): nothing shared."""
    mha = load_model(make_tiny_model("llama", tmp_path, seed=1, num_key_value_heads=m.n_heads))
    rep = m.n_heads // m.n_kv_heads
    from mlx.utils import tree_flatten

    weights = []
    for name, w in tree_flatten(m.module.parameters()):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            w = mx.repeat(w.reshape(m.n_kv_heads, m.d_head, -1), rep, axis=0).reshape(-1, w.shape[-1])
        weights.append((name, w))
    mha.module.load_weights(weights)
    return mha


def test_gqa_head_isolated_from_kv_siblings(llama, data, tmp_path):
    assert llama.n_kv_heads < llama.n_heads
    mm = MaskedModel(llama, data, "zero")
    st = mm.states[0]
    g = mm.graph
    mask = mm.ones()
    mask[g.head_index[1][:, 0]] = 0.0  # every input edge of L1H0 ablated (zero)
    base = mm.writes(st.batch.clean, st.embed, mx.array(mm.ones()), st.ablated)
    cut = mm.writes(st.batch.clean, st.embed, mx.array(mask), st.ablated)
    sib = g.upstream_pos[g.upstream[g.n_upstream_of_heads(1) + 1]]  # L1H1 shares L1H0's KV head
    assert np.allclose(np.array(base[sib]), np.array(cut[sib]), atol=1e-6)
    l1h0 = g.n_upstream_of_heads(1)
    assert not np.allclose(np.array(base[l1h0]), np.array(cut[l1h0]), atol=1e-3)
    # Independent: an unshared-KV copy with head 0's q/k/v rows of layer 1 zeroed.
    mha = _mha_copy(llama, tmp_path)
    b = st.batch
    assert np.allclose(np.array(mha(b.clean)), np.array(llama(b.clean)), atol=ATOL)
    attn = mha.module.model.layers[1].self_attn
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        w = np.array(proj.weight)
        w[: llama.d_head] = 0.0
        proj.weight = mx.array(w)
    assert np.allclose(np.array(mm.logits(mask)), np.array(mha(b.clean)), atol=1e-3)


def test_graph_counts_and_lookup():
    g = ComponentGraph(2, 4, "joint")
    # heads L0: 1 upstream x 4, L1: 6 x 4; MLP0: 5, MLP1: 10; logits: 11
    assert g.n_edges == 4 + 24 + 5 + 10 + 11
    assert g.edges[g.edge_id("L0H1->L1H2")].port is None
    gs = ComponentGraph(2, 4, "separate")
    assert gs.n_edges == 3 * 28 + 5 + 10 + 11
    assert str(gs.edges[gs.edge_id("embed->L1H0.k")]) == "embed->L1H0.k"
    with pytest.raises(DiscoveryError):
        g.edge_id("L1H0->L0H1")
    with pytest.raises(DiscoveryError):
        ComponentGraph(2, 4, "split")


def test_bad_inputs(llama, data, tmp_path):
    mm = MaskedModel(llama, data)
    with pytest.raises(DiscoveryError, match="shape"):
        mm.metric(np.ones(3))
    with pytest.raises(DiscoveryError, match="ablation"):
        MaskedModel(llama, data, "noise")
    gpt2 = load_model(make_tiny_model("gpt2", tmp_path, seed=0))
    d2 = tasks.get("induction", segment_len=4, repeat_len=2).generate(2, 0, gpt2.tokenizer)
    with pytest.raises(UnsupportedModelError):
        MaskedModel(gpt2, d2)
