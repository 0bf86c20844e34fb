"""Exact graphs at scale: the feature budget, the batched VJP variants, presets, a smoke test.

Independent computations:
  - the feature budget is replayed with dense numpy matrices (rows of the uncapped,
    unsparsified graph, influence by explicit matrix powers) and must pick the same
    features in the same chunks as the streamed, sparse implementation;
  - one target per backward pass (each on its own shortest prompt prefix) must give
    the same rows as 32 targets per pass on the whole prompt;
  - the tiled ``mx.grad`` path (used for quantized models) must equal the vmapped VJP;
  - a 4-bit model's graph must equal the graph of the same weights dequantized.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import attribution  # noqa: F401  (BLAS preload before mlx)
from attribution import load_model
from attribution.attribute import GraphConfig, build_graph
from attribution.attribute import exact as ex
from attribution.attribute.nodes import feature_rows, make_node_set
from attribution.attribute.synthetic import (
    make_config_model,
    published_config,
    random_prompt,
    sparse_transcoders,
)
from attribution.attribute.targets import resolve_targets
from attribution.graph import GraphMemoryError, SparseRowBuilder
from attribution.replacement import ReplacementModel

TOKENS = [2, 5, 9, 14, 7, 22, 31, 11, 4, 9, 17, 3]


@pytest.fixture(scope="module")
def small(tiny_models):
    model = tiny_models["llama"]
    dicts = sparse_transcoders(model, 48, 6, TOKENS, seed=1)
    return model, dicts


def _plan(model, dicts, config=GraphConfig()):
    rm = ReplacementModel(model, dicts)
    state = rm.clean(TOKENS)
    tg = resolve_targets(model, None, state.logits[-1], state.norm_out[-1], len(TOKENS) - 1,
                         config.max_logits, config.logit_prob_mass)
    nodes = make_node_set(state, rm.layers, 0.0, len(tg.keys))
    return ex._Plan(rm, state, nodes, tg, config), rm, state, nodes, tg


def test_feature_rows_cover_every_feature_once(small):
    plan, *_ = _plan(*small)
    for l, f in plan.nodes.features.items():
        fr = feature_rows(f, plan.nodes.n_tokens)
        real = fr.node[fr.node >= 0]
        assert sorted(real.tolist()) == list(range(f.offset, f.offset + len(f.pos)))
        rows, cols = np.nonzero(fr.node >= 0)
        k = fr.node[rows, cols] - f.offset
        assert np.array_equal(fr.pos[rows], f.pos[k]) and np.array_equal(fr.feature[rows, cols], f.feature[k])
        assert np.allclose(fr.act[rows, cols], f.act[k]) and (fr.act[fr.node < 0] == 0).all()
        assert np.all(np.diff(fr.pos) >= 0)


def test_prefix_batches_equal_whole_prompt_batches(small):
    model, dicts = small
    one = build_graph(model, dicts, TOKENS, config=GraphConfig(batch_size=1))
    many = build_graph(model, dicts, TOKENS, config=GraphConfig(batch_size=32))
    assert one.metadata["backward_passes"] > many.metadata["backward_passes"]
    assert one.keys == many.keys
    d = abs(one.adjacency - many.adjacency)
    assert d.max() <= 1e-5 * max(1.0, abs(many.adjacency).max())


def test_tiled_path_equals_vmapped(tiny_models):
    for arch in ("llama", "gpt2", "gemma2"):
        model = tiny_models[arch]
        dicts = sparse_transcoders(model, 40, 5, TOKENS, seed=2)
        plan, *_ = _plan(model, dicts)
        nodes = plan.nodes
        batch = np.concatenate([np.arange(nodes.logit_offset, nodes.n_nodes),
                                np.arange(nodes.n_tokens, nodes.error_offset)[::3]])
        vm = ex._block(plan, batch)
        plan.tiled = True
        tiled = ex._block(plan, batch)
        assert np.abs(vm).max() > 1e-3
        np.testing.assert_allclose(vm, tiled, rtol=1e-4, atol=1e-5 * np.abs(vm).max())


def _dense_budget_replay(full, nodes, weights, cap, chunk, layer_of, pos_of):
    """The budgeted order, recomputed from the dense rows of the uncapped graph."""
    n = nodes.n_nodes
    dense = np.zeros((n, n))
    dense[:] = full
    mass = np.abs(dense).sum(axis=1)
    logits = np.arange(nodes.logit_offset, n)
    done = np.zeros(n, bool)
    done[logits] = True
    feats = np.arange(nodes.n_tokens, nodes.error_offset)
    chosen, total = [], 0
    while total < cap:
        a_n = np.where(done[:, None], np.abs(dense) / np.where(mass > 0, mass, 1)[:, None], 0.0)
        x = np.zeros(n)
        x[logits] = weights
        infl = np.zeros(n)
        for _ in range(len(nodes.layers) + 2):
            x = a_n.T @ x
            infl += x
        todo = feats[~done[feats]]
        order = todo[np.lexsort((todo, -infl[todo]))][: min(chunk, cap - total)]
        chosen.append(sorted(order.tolist()))
        total += len(order)
        done[order] = True
    return chosen


def test_budget_matches_dense_influence_replay(small, monkeypatch):
    model, dicts = small
    cap, bs = 37, 4
    cfg = GraphConfig(max_feature_nodes=cap, batch_size=bs, update_interval=2)
    plan, rm, state, nodes, tg = _plan(model, dicts, cfg)
    chunks, calls = [], []
    real_run = ex._cost_order

    def spy(plan_, idx, bs_):
        chunks.append(sorted(idx.tolist()))
        return real_run(plan_, idx, bs_)

    real_infl = ex.partial_influence

    def count(*a, **k):
        calls.append(1)
        return real_infl(*a, **k)

    full = ex.exact_rows(rm, state, nodes, tg, GraphConfig(batch_size=16))
    monkeypatch.setattr(ex, "_cost_order", spy)
    monkeypatch.setattr(ex, "partial_influence", count)
    capped = ex.exact_rows(rm, state, nodes, tg, cfg)
    feats = np.arange(nodes.n_tokens, nodes.error_offset)
    assert capped.processed[feats].sum() == cap
    assert len(calls) == -(-cap // (2 * bs))  # one influence per chunk of update_interval batches
    replay = _dense_budget_replay(full.adjacency.toarray(), nodes, plan.weights, cap, 2 * bs,
                                  plan.layer_of, plan.pos_of)
    assert chunks == replay
    # Processed rows equal the uncapped graph's rows.
    rows = np.flatnonzero(capped.processed)
    d = abs(capped.adjacency[rows] - full.adjacency[rows])
    assert d.max() <= 1e-6


def test_partial_influence_is_linear_in_kept_edges():
    """100k nodes, 300 rows: one influence pass touches the kept edges, never N²."""
    n, rng = 100_000, np.random.default_rng(0)
    b = SparseRowBuilder(n, k=50)
    inv = np.zeros(n)
    for t0 in range(0, 300, 100):
        targets = np.arange(n - 300 + t0, n - 200 + t0)
        block = np.zeros((100, n), np.float32)
        cols = rng.integers(0, n - 300, size=(100, 60))
        np.put_along_axis(block, cols, rng.standard_normal((100, 60)).astype(np.float32), axis=1)
        b.add(targets, block)
        inv[targets] = 1.0 / np.abs(block).sum(axis=1)
    import time
    t0 = time.perf_counter()
    infl = ex.partial_influence(b, inv, np.full(10, 0.1), n - 10, depth=20)
    assert time.perf_counter() - t0 < 1.0  # an N x N pass would take minutes
    assert infl.shape == (n,) and infl[: n - 300].sum() > 0
    assert b.n_edges == 300 * 50


def test_large_model_preset_and_edge_cap(small):
    cfg = GraphConfig.large_model()
    assert (cfg.max_feature_nodes, cfg.edges_per_target, cfg.batch_size) == (7500, 1024, 64)
    assert cfg.max_batch_tokens == 8192 and ex.effective_batch_size(cfg, 512) == 16
    assert GraphConfig.large_model(max_feature_nodes=10).max_feature_nodes == 10
    model, dicts = small
    with pytest.raises(GraphMemoryError) as info:
        build_graph(model, dicts, TOKENS, config=GraphConfig(max_edges=1000))
    msg = str(info.value)
    assert "\n" not in msg
    for knob in ("max_edges", "edges_per_target", "max_feature_nodes", "large_model"):
        assert knob in msg


def test_quantized_graph_equals_dequantized(tmp_path):
    from mlx.utils import tree_flatten

    cfg = published_config("llama-3.2-1b", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=96)
    q = load_model(make_config_model(cfg, tmp_path / "q4", bits=4, group_size=32))
    assert q.quantized
    # The same weights, dequantized into an unquantized model of the same config.
    f = load_model(make_config_model(cfg, tmp_path / "f32"))
    deq = {}
    for name, m in q.module.named_modules():
        if hasattr(m, "scales"):
            deq[name + ".weight"] = mx.dequantize(m.weight, m.scales, m.get("biases"),
                                                  group_size=m.group_size, bits=m.bits)
    params = dict(tree_flatten(q.module.parameters()))
    keep = {k: v for k, v in params.items() if not k.endswith((".scales", ".biases")) and k not in deq}
    from mlx.utils import tree_unflatten
    f.module.update(tree_unflatten(list({**keep, **deq}.items())))
    toks = random_prompt(96, 10, seed=3)
    dicts = sparse_transcoders(f, 64, 6, toks, seed=5)
    gq = build_graph(q, dicts, toks, config=GraphConfig(batch_size=16))
    gf = build_graph(f, dicts, toks, config=GraphConfig(batch_size=16))
    assert gq.keys == gf.keys and gq.n_edges > 100
    assert abs(gq.adjacency - gf.adjacency).max() <= 2e-3 * abs(gf.adjacency).max()


def test_smoke_budgeted_graph_at_scale_width(tmp_path):
    """`make test` smoke test: d=768, 2 layers, 16,384-wide transcoders at L0 ≈ 50."""
    cfg = published_config("gpt2-small", n_layer=2, vocab_size=512, n_ctx=64, n_positions=64)
    model = load_model(make_config_model(cfg, tmp_path / "m"))
    toks = random_prompt(512, 24, seed=1)
    dicts = sparse_transcoders(model, 16384, 50, random_prompt(512, 48, seed=2))
    g = build_graph(model, dicts, toks, config=GraphConfig.large_model(max_feature_nodes=256))
    md = g.metadata
    l0 = md["n_active_features"] / (24 * 2)
    assert 25 <= l0 <= 100
    assert int(g.type_mask("feature").sum()) == 256
    assert np.diff(g.adjacency.indptr).max() <= 1024 and g.n_edges > 1000
    calls = []
    with pytest.raises(GraphMemoryError) as info:
        build_graph(model, dicts, toks, config=GraphConfig.large_model(available_memory_bytes=2**26),
                    progress=lambda *a: calls.append(a))
    assert calls == [] and "\n" not in str(info.value)
    for knob in ("batch_size", "edges_per_target", "max_feature_nodes", "GiB"):
        assert knob in str(info.value)
    # The preflight itself (exact_rows runs it before any backward pass) names every knob.
    rm = ReplacementModel(model, dicts)
    state = rm.clean(toks)
    tg = resolve_targets(model, None, state.logits[-1], state.norm_out[-1], 23, 10, 0.95)
    nodes = make_node_set(state, rm.layers, 0.0, len(tg.keys))
    with pytest.raises(GraphMemoryError) as info:
        ex.exact_rows(rm, state, nodes, tg, GraphConfig.large_model(available_memory_bytes=2**26),
                      progress=lambda *a: calls.append(a))
    assert calls == [] and "\n" not in str(info.value)
    for knob in ("max_batch_tokens", "batch_size", "edges_per_target", "max_feature_nodes", "24 tokens"):
        assert knob in str(info.value)


def test_sparse_clt_hits_its_l0_and_builds_a_budgeted_graph(tiny_models):
    """The benchmark's random CLT: calibrated sparsity on another prompt, decoders to every
    layer at or above the source, and a budgeted graph that keeps exactly the budget."""
    from attribution.attribute.synthetic import sparse_clt

    model = tiny_models["llama"]
    clt = sparse_clt(model, 256, 8, random_prompt(model.vocab_size, 48, seed=4), seed=2)
    n = model.n_layers
    assert [w.shape[1] for w in clt.W_dec_layers] == [n - i for i in range(n)]
    from attribution.model.run import capture
    from attribution.sites import Site

    toks = random_prompt(model.vocab_size, 40, seed=11)
    acts = capture(model, mx.array([toks]), [Site(l, "mlp_in") for l in range(n)])
    l0 = [float((clt.activation(clt.pre_acts_at(l, acts[Site(l, "mlp_in")][0])) > 0).sum(-1).mean())
          for l in range(n)]
    assert all(3 <= x <= 20 for x in l0), l0
    g = build_graph(model, [clt], toks, config=GraphConfig.large_model(max_feature_nodes=64))
    assert int(g.type_mask("feature").sum()) == 64
