"""Jump-aware node scores: IG with the top-|IG| nodes replaced by exact patching.

Every check compares with an independent computation: brute-force patching rebuilt
from public ``run`` calls and the dictionaries' own weights (not the replacement
model), plain ``node_scores`` IG / AtP / patching, and pass counts taken by wrapping
the spliced forward and ``mx.grad`` from outside."""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
import pytest
from spliced_setup import TOKENS

import attribution  # noqa: F401  (BLAS preload before mlx)
import attribution.attribute.patching as patching_mod
from attribution import Replace, Site, run
from attribution.attribute import GraphConfig, build_graph, node_scores
from attribution.attribute.jump_aware import jump_aware_scores, n_candidates
from attribution.attribute.targets import resolve_targets
from attribution.graph.keys import ErrorNode, FeatureNode
from attribution.replacement import AttributionMethodError, ReplacementModel
from attribution.testing_dicts import RandomDictionary, random_dictionary, random_transcoders


@dataclass(eq=False)
class TopKDictionary(RandomDictionary):
    """A random transcoder with a TopK activation (ReLU of the k largest pre-activations)."""

    k: int = 4

    def activation(self, pre):
        kth = mx.sort(pre, axis=-1)[..., -self.k][..., None]
        return mx.where(pre >= kth, mx.maximum(pre, 0), mx.zeros_like(pre))


def _topk(d: RandomDictionary, k: int) -> TopKDictionary:
    return TopKDictionary(d.in_site, d.out_site, d.W_enc, d.b_enc, d.W_dec_, d.b_dec, k=k,
                          name=d.name)


def _metric_of(t: int):
    return lambda logits: logits[:, -1, t]


def _patched_by_runs(model, dicts, toks, metric, edit=None):
    """Metric of the spliced model (clean errors frozen, latents re-encoded live) with one
    node ablated to zero, rebuilt layer by layer from public runs and the dictionaries'
    own encode/decode (independent of attribution.replacement). ``edit``: a FeatureNode
    (its latent set to 0) or an ErrorNode (its error term set to 0); None = clean."""
    L = model.n_layers
    sites = [Site(l, k) for l in range(L) for k in ("mlp_in", "mlp_out")]
    clean = run(model, toks, capture=sites).cache
    err = {l: clean[Site(l, "mlp_out")][0] - dicts[l].decode(dicts[l].encode(clean[Site(l, "mlp_in")][0]))
           for l in range(L)}
    ivs, live = [], {}
    for l in range(L):
        x = run(model, toks, interventions=ivs, capture=[Site(l, "mlp_in")]).cache[Site(l, "mlp_in")][0]
        f = dicts[l].encode(x)
        live[l] = f
        e = err[l]
        if isinstance(edit, FeatureNode) and edit.layer == l:
            mask = np.ones(f.shape, np.float32)
            mask[edit.pos, edit.feature] = 0.0
            f = f * mx.array(mask)
        if isinstance(edit, ErrorNode) and edit.layer == l:
            mask = np.ones((e.shape[0], 1), np.float32)
            mask[edit.pos] = 0.0
            e = e * mx.array(mask)
        ivs.append(Replace(Site(l, "mlp_out"), dicts[l].decode(f) + e))
    return float(metric(run(model, toks, interventions=ivs).logits)[0]), live


def _setup(tiny_models, k: int = 4, seed: int = 11):
    model = tiny_models["llama"]
    dicts = [_topk(d, k) for d in random_transcoders(model, 32, seed=seed)]
    rm = ReplacementModel(model, dicts)
    state = rm.clean(mx.array([TOKENS]))
    t = int(mx.argmax(state.logits[-1]))
    tg = resolve_targets(model, [t], state.logits[-1], state.norm_out[-1], len(TOKENS) - 1)
    return model, dicts, rm, state, tg, t


def test_corrected_nodes_are_brute_force_patching_and_the_rest_keep_ig(tiny_models):
    model, dicts, rm, state, tg, t = _setup(tiny_models)
    metric = _metric_of(t)
    top = 12
    ja = jump_aware_scores(rm, state, tg, top=top, steps=8, batch_size=8, metric=metric)
    ig = node_scores(rm, state, tg, "ig", steps=8, batch_size=8, metric=metric)
    assert ja.nodes.keys == ig.keys and ja.nodes.method == "jump-aware"
    assert np.array_equal(ja.base_scores, ig.scores)
    # The candidates are the 12 largest |IG| (recomputed here from the plain IG scores).
    want = set(np.argsort(-np.abs(ig.scores))[:top].tolist())
    assert set(np.flatnonzero(ja.corrected).tolist()) == want and ja.corrected.sum() == top
    # Unpatched nodes keep their IG scores exactly.
    assert np.array_equal(ja.nodes.scores[~ja.corrected], ig.scores[~ja.corrected])
    # Patched nodes equal brute-force patching, computed independently.
    toks = mx.array([TOKENS])
    clean, _ = _patched_by_runs(model, dicts, toks, metric)
    assert abs(clean - ja.nodes.clean_metric) < 1e-4
    moved = 0
    for i in np.flatnonzero(ja.corrected):
        key = ja.nodes.keys[i]
        new, _ = _patched_by_runs(model, dicts, toks, metric, key)
        assert abs(ja.nodes.scores[i] - (new - clean)) < 1e-4, key
        moved += abs(ja.nodes.scores[i] - ig.scores[i]) > 1e-3
    assert moved >= 3  # the correction changes something: TopK makes IG inexact here


def test_extremes_are_ig_and_patching(tiny_models):
    _, _, rm, state, tg, _ = _setup(tiny_models)
    ig = node_scores(rm, state, tg, "ig", steps=4)
    pt = node_scores(rm, state, tg, "patching")
    none = jump_aware_scores(rm, state, tg, fraction=0.0, steps=4)
    assert not none.corrected.any() and np.array_equal(none.nodes.scores, ig.scores)
    every = jump_aware_scores(rm, state, tg, top=10 ** 6, steps=4)
    assert every.corrected.all()
    assert np.allclose(every.nodes.scores, pt.scores, atol=1e-6)
    atp = node_scores(rm, state, tg, "atp")
    on_atp = jump_aware_scores(rm, state, tg, base="atp", fraction=0.0)
    assert np.array_equal(on_atp.nodes.scores, atp.scores)


@pytest.mark.parametrize("tolerance", [0.002, 0.05])
def test_adaptive_stop_follows_the_documented_rule(tiny_models, tolerance):
    # The stopping rule re-implemented from plain IG and patching scores: batches of 8 in
    # |IG| order; stop once mean (patch - IG)^2 of the batch x unpatched nodes <= tol x sum s^2.
    _, _, rm, state, tg, _ = _setup(tiny_models)
    ig = node_scores(rm, state, tg, "ig", steps=4, batch_size=8).scores
    pt = node_scores(rm, state, tg, "patching", batch_size=8).scores
    order = np.argsort(-np.abs(ig), kind="stable")  # zero ablation: every node moves
    s, done = ig.copy(), 0
    while done < len(order):
        b = order[done: done + 8]
        s[b] = pt[b]
        done += len(b)
        if np.mean((pt[b] - ig[b]) ** 2) * (len(order) - done) <= tolerance * np.sum(s ** 2):
            break
    assert 8 <= done < len(order)  # the rule stops early, after at least one batch
    ja = jump_aware_scores(rm, state, tg, tolerance=tolerance, steps=4, batch_size=8)
    assert ja.corrected.sum() == done and set(np.flatnonzero(ja.corrected)) == set(order[:done])
    assert np.allclose(ja.nodes.scores, s, atol=1e-6)
    # Measuring the top nodes brings the scores closer to patching than IG alone.
    assert np.corrcoef(ja.nodes.scores, pt)[0, 1] > np.corrcoef(ig, pt)[0, 1]


class _PassCounter:
    """Counts prompt copies through the spliced forward, and those run under mx.grad."""

    def __init__(self, monkeypatch):
        self.forwards = self.backwards = 0
        self._in_grad = False
        real_fwd, real_grad = patching_mod.spliced_forward, mx.grad

        def fwd(rm, tokens, *a, **kw):
            self.forwards += tokens.shape[0]
            self.backwards += tokens.shape[0] if self._in_grad else 0
            return real_fwd(rm, tokens, *a, **kw)

        def grad(fn, *ga, **gkw):
            g = real_grad(fn, *ga, **gkw)

            def wrapped(*a, **kw):
                self._in_grad = True
                try:
                    return g(*a, **kw)
                finally:
                    self._in_grad = False
            return wrapped

        monkeypatch.setattr(patching_mod, "spliced_forward", fwd)
        monkeypatch.setattr(mx, "grad", grad)


@pytest.mark.parametrize("base,top,batch", [("ig", 10, 4), ("ig", 0, 8), ("atp", 7, 3)])
def test_pass_counts_are_as_documented(tiny_models, monkeypatch, base, top, batch):
    _, _, rm, state, tg, _ = _setup(tiny_models)
    steps = 6
    count = _PassCounter(monkeypatch)
    ja = jump_aware_scores(rm, state, tg, base=base, top=top, steps=steps, batch_size=batch)
    b = steps * len(rm.layers) if base == "ig" else 1
    assert (count.forwards, count.backwards) == (ja.forwards, ja.backwards)
    assert ja.backwards == b
    assert ja.forwards == 1 + b + top + math.ceil(top / batch)


def test_only_moved_nodes_are_candidates(tiny_models):
    # A counterfactual that differs from the prompt only at position 5: nodes before it keep
    # their clean values (no effect), so only nodes at positions >= 5 can be patched and
    # the fraction counts those alone.
    _, _, rm, state, tg, _ = _setup(tiny_models)
    cf = list(TOKENS)
    cf[5] = 3
    ja = jump_aware_scores(rm, state, tg, fraction=0.5, tolerance=0.0, steps=4,
                           ablation="counterfactual", counterfactual=cf)
    pos = np.array([k.pos for k in ja.nodes.keys])
    alt = rm.clean(mx.array([cf]))
    moved = 0
    for l in rm.layers:
        a, b = np.asarray(state.acts[l]), np.asarray(alt.acts[l])
        moved += int((a != b).sum())
        moved += int((np.asarray(state.error[l]) != np.asarray(alt.error[l])).any(-1).sum())
    assert (pos < 5).any() and moved < len(pos)
    assert ja.corrected.sum() == math.ceil(0.5 * moved) and (pos[ja.corrected] >= 5).all()


def test_graph_records_method_cost_and_corrected_nodes(tiny_models):
    model = tiny_models["llama"]
    dicts = [_topk(d, 4) for d in random_transcoders(model, 32, seed=11)]
    cfg = GraphConfig(correct_fraction=0.1, correct_tolerance=0.0, ig_steps=4, batch_size=8)
    g = build_graph(model, dicts, TOKENS, method="jump-aware", config=cfg)
    n = int((~g.type_mask("logit")).sum())
    n_c = math.ceil(0.1 * n)
    md = g.metadata
    assert md["method"] == "jump-aware" and md["correct_base"] == "ig" and len(md["corrected"]) == n_c
    assert md["backwards"] == 4 * model.n_layers
    assert md["forwards"] == 1 + 4 * model.n_layers + n_c + math.ceil(n_c / 8)
    assert md["config"]["correct_fraction"] == 0.1
    # The corrected nodes' edge weights are patching's; the rest are IG's.
    pt = build_graph(model, dicts, TOKENS, method="patching", config=cfg).edges().set_index("source")["weight"]
    ig = build_graph(model, dicts, TOKENS, method="ig", config=cfg).edges().set_index("source")["weight"]
    ja = g.edges().set_index("source")["weight"]
    corr = ja.index.isin(md["corrected"])
    assert np.allclose(ja[corr], pt[ja.index[corr]], atol=1e-6)
    assert np.array_equal(ja[~corr].to_numpy(), ig[ja.index[~corr]].to_numpy())


def _layer1_input(model, toks, d0, u: FeatureNode | None) -> np.ndarray:
    """Layer 1's transcoder input at u's position with layer 0 spliced (clean error) and,
    when given, feature u ablated; layer 1's own dictionary is not reached yet, so exact."""
    cache = run(model, toks, capture=[Site(0, "mlp_in"), Site(0, "mlp_out")]).cache
    f = d0.encode(cache[Site(0, "mlp_in")][0])
    err = cache[Site(0, "mlp_out")][0] - d0.decode(f)
    if u is not None:
        mask = np.ones(f.shape, np.float32)
        mask[u.pos, u.feature] = 0.0
        f = f * mx.array(mask)
    out = run(model, toks, interventions=[Replace(Site(0, "mlp_out"), d0.decode(f) + err)],
              capture=[Site(1, "mlp_in")])
    return np.asarray(out.cache[Site(1, "mlp_in")][0][u.pos if u else -1], np.float64)


def test_hand_worked_topk_jump_fools_ig_not_jump_aware(tiny_models):
    """A TopK switch that IG cannot see, and jump-aware measures.

    Layer 1 is a TopK (k=1) transcoder with two features. A reads the unit direction e
    along which ablating layer-0 feature u (last position) moves layer 1's input, so
    ablating u alone lowers pre_A by exactly D = |Δx|; b_enc puts the clean pre_A at 2 D.
    B has the constant pre-activation 1.5 D and a zero decoder; A writes c · the target's
    unit unembedding row (c = 0.5 / D, small enough that the logit stays near-linear).
      clean: pre_A = 2 D > 1.5 D        -> A holds the slot at 2 D
      u ablated: pre_A = D < 1.5 D      -> B takes the slot, A drops from 2 D to 0
    The control replaces B's pre-activation by -100 (never selected): with u ablated A
    only slides from 2 D to D, a continuous change. Along IG's path (all of layer 0
    moving together) A stays selected in both models and B's decoder is zero, so IG
    gives u the same score in both; patching differs by the switch (A's last D of
    write). Measured: control IG -1.383 vs patching -1.379; TopK IG -1.383 vs patching
    -2.023. Jump-aware, with u among its candidates, returns -2.023."""
    model = tiny_models["llama"]
    toks = mx.array([TOKENS])
    last = len(TOKENS) - 1
    d0 = random_dictionary(model.d_model, 0, 32, seed=3)
    f0 = np.asarray(d0.encode(run(model, toks, capture=[Site(0, "mlp_in")]).cache[Site(0, "mlp_in")][0]))
    u = FeatureNode(0, last, int(np.argmax(f0[last])))
    assert f0[last, u.feature] > 0
    x_clean = _layer1_input(model, toks, d0, None)
    dx = x_clean - _layer1_input(model, toks, d0, u)
    D = float(np.linalg.norm(dx))
    assert D > 1e-3
    w_enc = np.zeros((model.d_model, 2), np.float32)
    w_enc[:, 0] = dx / D
    t = int(mx.argmax(run(model, toks).logits[0, -1]))
    w_u = np.asarray(model.W_U)[:, t]
    w_dec = np.zeros((2, model.d_model), np.float32)
    w_dec[0] = (0.5 / D) * w_u / np.linalg.norm(w_u)
    metric = _metric_of(t)

    def layer1(b_pre: float) -> TopKDictionary:
        b_enc = np.array([2 * D - float(x_clean @ (dx / D)), b_pre], np.float32)
        return TopKDictionary(Site(1, "mlp_in"), Site(1, "mlp_out"), mx.array(w_enc), mx.array(b_enc),
                              mx.array(w_dec), mx.zeros((model.d_model,)), k=1, name="topk1")

    def measure(dicts):
        clean, live_c = _patched_by_runs(model, dicts, toks, metric)
        abl, live_a = _patched_by_runs(model, dicts, toks, metric, u)
        rm = ReplacementModel(model, dicts)
        state = rm.clean(toks)
        tg = resolve_targets(model, [t], state.logits[-1], state.norm_out[-1], last)
        ig = node_scores(rm, state, tg, "ig", steps=32, metric=metric)
        return (np.asarray(live_c[1][last]), np.asarray(live_a[1][last]), abl - clean,
                ig, rm, state, tg)

    # Control: B never selected; A slides continuously from 2 D to D, and IG gets it right.
    live_c, live_a, patch_ctl, ig_ctl, *_ = measure([d0, layer1(-100.0)])
    assert np.allclose(live_c, [2 * D, 0], rtol=1e-3, atol=1e-5)
    assert np.allclose(live_a, [D, 0], rtol=1e-3, atol=1e-5)
    i = ig_ctl.keys.index(u)
    assert abs(ig_ctl.scores[i] - patch_ctl) < 0.05 * abs(patch_ctl), (ig_ctl.scores[i], patch_ctl)
    # TopK switch: the hand-worked activations, then IG blind to the switch.
    live_c, live_a, patch, ig, rm, state, tg = measure([d0, layer1(1.5 * D)])
    assert np.allclose(live_c, [2 * D, 0], rtol=1e-3, atol=1e-5)
    assert np.allclose(live_a, [0, 1.5 * D], rtol=1e-3, atol=1e-5)
    assert abs(ig.scores[i] - ig_ctl.scores[i]) < 1e-5  # the same IG score with or without B
    assert abs(patch - patch_ctl) > 0.25 * abs(patch)   # but the switch changes the effect
    assert abs(ig.scores[i] - patch) > 0.25 * abs(patch), (ig.scores[i], patch)
    rank = int((np.abs(ig.scores) >= abs(ig.scores[i])).sum())  # u's place in the |IG| order
    ja = jump_aware_scores(rm, state, tg, top=rank, steps=32, metric=metric)
    assert ja.corrected[i] and abs(ja.nodes.scores[i] - patch) < 1e-4 * max(1.0, abs(patch))
    assert np.array_equal(ja.nodes.scores[~ja.corrected], ig.scores[~ja.corrected])


def test_n_candidates_and_bad_settings(tiny_models):
    assert n_candidates(100, None, 0.15) == 15 and n_candidates(101, None, 0.15) == 16
    assert n_candidates(100, 7, 0.9) == 7 and n_candidates(5, 50, 0.0) == 5
    with pytest.raises(AttributionMethodError, match=r"correct_fraction must be a number in \[0, 1\]"):
        GraphConfig(correct_fraction=1.5)
    with pytest.raises(AttributionMethodError, match="correct_tolerance must be a number"):
        GraphConfig(correct_tolerance="0.1")
    with pytest.raises(AttributionMethodError, match="correct_top must be an int >= 0"):
        GraphConfig(correct_top=-1)
    with pytest.raises(AttributionMethodError, match="correct_base"):
        GraphConfig(correct_base="exact")
    _, _, rm, state, tg, _ = _setup(tiny_models)
    with pytest.raises(AttributionMethodError, match="base method 'patching'"):
        jump_aware_scores(rm, state, tg, base="patching")
    model = tiny_models["llama"]
    with pytest.raises(AttributionMethodError, match="feature_edges=False"):
        build_graph(model, random_transcoders(model, 32, seed=1), TOKENS, method="jump-aware",
                    config=GraphConfig(feature_edges=True))
