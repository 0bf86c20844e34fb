"""QK attribution: node terms of an attention score, checked against independent forwards.

The "measured" side never touches attribution.replacement / attribution.attribute: it is
the float64 numpy forward of ``model_reference.Reference`` (norm scales and attention
patterns frozen from a recorded clean pass), extended to record each layer's queries and
keys. The replacement model's frozen MLPs are reproduced by injecting, layer by layer, the
clean MLP output plus the removed writes (and the skip term of a skip transcoder).
  1. The terms sum to the model's score (reference q·k·scale, softcap applied for Gemma-2),
     and softmax over the key row reproduces the clean attention pattern.
  2. Brute force: removing a node's write from the frozen reference changes q by exactly
     −(its query vector) and k by −(its key vector); removing a set S changes the score by
     −Σ_S qmarg − Σ_S kmarg + Σ_{S×S} matrix (the bilinear identity); removing every node
     leaves exactly the bias×bias block.
  3. A hand-worked case: GPT-2 layer 0 from the weights (one token per side plus biases).
"""

from __future__ import annotations

import numpy as np
import pytest
from mlx.utils import tree_flatten
from model_reference import Reference

import attribution  # noqa: F401  (BLAS preload before mlx)
from attribution.attribute import build_graph
from attribution.attribute.qk import (
    BiasNode,
    QKAttributionError,
    edge_qk,
    head_split,
    qk_attribution,
    qk_attributions,
    top_key_attributions,
)
from attribution.graph.keys import ErrorNode, FeatureNode, TokenNode
from attribution.replacement import ReplacementModel
from attribution.testing_dicts import random_clt, random_transcoders

TOKENS = [2, 5, 9, 14, 7, 22, 31, 11]
QPOS = 6
REL = 1e-4


class QKReference(Reference):
    """The numpy reference, also recording (q, k, scale, softcap) of every layer."""

    def _attend(self, layer, q, k, v, scale, softcap=None, window=None):
        self.qk[layer] = (q, k, scale, softcap)
        return super()._attend(layer, q, k, v, scale, softcap, window)

    def forward(self, tokens, inject=None, frozen=None, record=None):
        self.qk = {}
        return super().forward(tokens, inject=inject, frozen=frozen, record=record)


def _ref_score(ref, layer, head, qp, kp):
    q, k, scale, cap = ref.qk[layer]
    rep = q.shape[1] // k.shape[1]
    s = scale * q[0, head, qp] @ k[0, head // rep, kp]
    return s, (cap * np.tanh(s / cap) if cap else s)


class Frozen:
    """Finite node removals in the frozen reference (see the module docstring)."""

    def __init__(self, model, dicts, kind="transcoder") -> None:
        self.model, self.dicts, self.kind = model, dicts, kind
        self.ref = QKReference(model)
        self.rec: dict = {}
        self.ref.forward(np.array([TOKENS]), record=self.rec)
        self.clean = dict(self.ref.acts)
        self.clean_qk = dict(self.ref.qk)
        self.T, self.d, self.L = len(TOKENS), model.d_model, model.n_layers
        rm = ReplacementModel(model, dicts)
        self.state = rm.clean(TOKENS)
        self.rm = rm

    def _dec(self, i, j):
        """float64 decoder rows of layer i's features written at layer j (None if none)."""
        if self.kind == "clt":
            return None if j < i else np.array(self.dicts.W_dec_layers[i][:, j - i], np.float64)
        return np.array(self.dicts[i].W_dec_, np.float64) if i == j else None

    def remove(self, nodes):
        """Reference forward with ``nodes``' writes removed; returns ref.qk."""
        tok = np.zeros((1, self.T, self.d))
        mlp = {l: np.zeros((1, self.T, self.d)) for l in range(self.L)}
        for n in nodes:
            if isinstance(n, TokenNode):
                tok[0, n.pos] -= np.array(self.state.embed[n.pos], np.float64)
            elif isinstance(n, ErrorNode):
                mlp[n.layer][0, n.pos] -= np.array(self.state.error[n.layer][n.pos], np.float64)
            else:
                act = float(self.state.acts[n.layer][n.pos, n.feature])
                for j in range(self.L):
                    w = self._dec(n.layer, j)
                    if w is not None:
                        mlp[j][0, n.pos] -= act * w[n.feature]
        inject = {(0, "resid_pre"): tok}
        for _ in range(self.L + 1):  # layer l's MLP input settles after the passes below it
            self.ref.forward(np.array([TOKENS]), inject=inject, frozen=self.rec)
            new = {(0, "resid_pre"): tok}
            for l in range(self.L):
                live = self.ref.acts[(l, "mlp_out")] - inject.get((l, "mlp_out"), 0.0)
                target = self.clean[(l, "mlp_out")] + mlp[l]
                skip = getattr(self.dicts[l], "W_skip_", None) if self.kind != "clt" else None
                if skip is not None:  # the linearised skip path stays live
                    target = target + (self.ref.acts[(l, "mlp_in")] - self.clean[(l, "mlp_in")]) \
                        @ np.array(skip, np.float64)
                new[(l, "mlp_out")] = target - live
            inject = new
        return self.ref.qk


@pytest.fixture
def rm(model):
    return ReplacementModel(model, random_transcoders(model, 64, seed=1))


def _tol(*values):
    return REL * max(1.0, *[abs(v) for v in values])


# ----------------------------------------------------------------------------- 1. the score
def test_terms_sum_to_model_score(model, rm, arch):
    ref = QKReference(model)
    ref.forward(np.array([TOKENS]))
    for layer in sorted({0, model.n_layers - 1}):
        res = qk_attributions(rm, TOKENS, layer, QPOS)
        assert len(res) == model.n_heads * (QPOS + 1)
        scale = max(abs(r.score) for r in res)
        for r in res:
            s, capped = _ref_score(ref, layer, r.head, QPOS, r.key_pos)
            assert abs(r.score - s) <= REL * max(1.0, scale), (arch, layer, r.head, r.key_pos)
            assert abs(r.capped_score - capped) <= REL * max(1.0, scale)
            assert r.query_marginals.sum() == pytest.approx(r.score, rel=1e-9, abs=1e-9)
            assert r.key_marginals.sum() == pytest.approx(r.score, rel=1e-9, abs=1e-9)
            assert r.matrix.sum() == pytest.approx(r.score, rel=1e-9, abs=1e-9)
            assert r.kv_head == r.head // (model.n_heads // model.n_kv_heads)
        # softmax of the decomposed scores over the visible keys is the model's own pattern
        for h in range(model.n_heads):
            row = [r for r in res if r.head == h]
            seen = np.array([r.pattern > 0 for r in row])
            logits = np.array([r.capped_score for r in row])[seen]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            np.testing.assert_allclose(p, np.array([r.pattern for r in row])[seen], atol=1e-4)


# --------------------------------------------------------------------------- 2. brute force
def _check_removals(fz: Frozen, res, picks):
    s = res.score
    for n in picks:
        qk = fz.remove([n])
        q, k, _, _ = qk[res.layer]
        q0, k0, _, _ = fz.clean_qk[res.layer]
        dq = q[0, res.head, res.query_pos] - q0[0, res.head, res.query_pos]
        dk = k[0, res.kv_head, res.key_pos] - k0[0, res.kv_head, res.key_pos]
        qv = res.query_vectors[res.query_nodes.index(n)] if n in res.query_nodes else 0.0
        kv = res.key_vectors[res.key_nodes.index(n)] if n in res.key_nodes else 0.0
        np.testing.assert_allclose(dq, -qv, atol=_tol(*q0[0, res.head, res.query_pos]))
        np.testing.assert_allclose(dk, -kv, atol=_tol(*k0[0, res.kv_head, res.key_pos]))
    # the bilinear identity: a node on both sides alone, then a query feature with a key feature
    for group in ([picks[0]], picks[1:3], picks):
        qk = fz.remove(group)
        measured, _ = _ref_score(fz.ref, res.layer, res.head, res.query_pos, res.key_pos)
        qi = [res.query_nodes.index(n) for n in group if n in res.query_nodes]
        kj = [res.key_nodes.index(n) for n in group if n in res.key_nodes]
        predicted = (s - res.query_marginals[qi].sum() - res.key_marginals[kj].sum()
                     + res.matrix[np.ix_(qi, kj)].sum())
        assert abs(measured - predicted) <= _tol(s, measured), (group, measured, predicted)


def _picks(res):
    """[a node on both sides, a query-side feature, a key-side feature, a key-side error,
    a query-only token]: each the largest of its kind by |marginal|, when one exists."""
    def best(nodes, marg, keep):
        cands = [i for i, n in enumerate(nodes) if keep(n)]
        return nodes[max(cands, key=lambda i: abs(marg[i]))] if cands else None

    qn, kn, qm, km = res.query_nodes, res.key_nodes, res.query_marginals, res.key_marginals
    picks = [best(kn, km, lambda n: not isinstance(n, BiasNode) and n in qn),
             best(qn, qm, lambda n: isinstance(n, FeatureNode)),
             best(kn, km, lambda n: isinstance(n, FeatureNode)),
             best(kn, km, lambda n: isinstance(n, ErrorNode)),
             best(qn, qm, lambda n: isinstance(n, TokenNode) and n.pos > res.key_pos)]
    return list(dict.fromkeys(p for p in picks if p is not None))


def test_brute_force_removals(model, arch):
    dicts = random_transcoders(model, 64, seed=1)
    fz = Frozen(model, dicts)
    layer = model.n_layers - 1
    res = qk_attribution(fz.rm, fz.state, layer, head=model.n_heads - 1, query_pos=QPOS, key_pos=3)
    picks = _picks(res)
    assert len(picks) >= 4 and picks[0] in res.query_nodes and picks[0] in res.key_nodes
    _check_removals(fz, res, picks)


def test_removing_every_node_leaves_the_bias_block(model, arch):
    dicts = random_transcoders(model, 64, seed=1)
    fz = Frozen(model, dicts)
    layer = model.n_layers - 1
    res = qk_attribution(fz.rm, fz.state, layer, head=1, query_pos=QPOS, key_pos=2)
    nodes = [n for n in set(res.query_nodes) | set(res.key_nodes) if not isinstance(n, BiasNode)]
    fz.remove(nodes)
    measured, _ = _ref_score(fz.ref, layer, 1, QPOS, 2)
    qb = [i for i, n in enumerate(res.query_nodes) if isinstance(n, BiasNode)]
    kb = [j for j, n in enumerate(res.key_nodes) if isinstance(n, BiasNode)]
    assert abs(res.matrix[np.ix_(qb, kb)].sum() - measured) <= _tol(res.score, measured)


@pytest.mark.parametrize("kind", ["skip", "clt"])
def test_brute_force_skip_and_clt(tiny_models, kind):
    model = tiny_models["gpt2" if kind == "skip" else "llama"]
    dicts = (random_clt(model, 32, seed=3) if kind == "clt"
             else random_transcoders(model, 64, seed=2, kind="skip"))
    fz = Frozen(model, dicts, kind="clt" if kind == "clt" else "transcoder")
    res = qk_attribution(fz.rm, fz.state, model.n_layers - 1, head=0, query_pos=QPOS, key_pos=4)
    _check_removals(fz, res, _picks(res))


# ----------------------------------------------------------------------- 3. hand-worked case
def test_hand_worked_gpt2_layer0(tiny_models):
    """Layer 0 of GPT-2: q = W_Q((e_q − mean)·σ_q·w + b_ln) + b_Q, with σ_q the clean scale.
    The only nodes are the token at each side's position; the rest is bias."""
    model = tiny_models["gpt2"]
    rm = ReplacementModel(model, random_transcoders(model, 64, seed=1))
    qp, kp, h = 5, 2, 1
    res = qk_attribution(rm, TOKENS, 0, h, qp, kp)
    assert res.query_nodes == (TokenNode(qp, TOKENS[qp]), BiasNode("query", "projection"),
                               BiasNode("query", "residual"))
    assert res.key_nodes == (TokenNode(kp, TOKENS[kp]), BiasNode("key", "projection"),
                             BiasNode("key", "residual"))
    p = {k: np.array(v, np.float64) for k, v in tree_flatten(model.module.parameters())}
    e = p["model.wte.weight"][TOKENS] + p["model.wpe.weight"][: len(TOKENS)]
    w, b, eps = p["model.h.0.ln_1.weight"], p["model.h.0.ln_1.bias"], model.config["layer_norm_epsilon"]
    centred = e - e.mean(-1, keepdims=True)
    sigma = 1 / np.sqrt((centred**2).mean(-1, keepdims=True) + eps)
    W, B = p["model.h.0.attn.c_attn.weight"], p["model.h.0.attn.c_attn.bias"]
    d, dh = model.d_model, model.d_head
    Wq, Wk = W[h * dh:(h + 1) * dh], W[d + h * dh: d + (h + 1) * dh]
    bq, bk = B[h * dh:(h + 1) * dh], B[d + h * dh: d + (h + 1) * dh]
    q_parts = [Wq @ (centred[qp] * sigma[qp] * w), bq, Wq @ b]
    k_parts = [Wk @ (centred[kp] * sigma[kp] * w), bk, Wk @ b]
    np.testing.assert_allclose(res.query_vectors, np.array(q_parts), atol=1e-5)
    np.testing.assert_allclose(res.key_vectors, np.array(k_parts), atol=1e-5)
    hand = np.array([[qi @ kj / np.sqrt(dh) for kj in k_parts] for qi in q_parts])
    np.testing.assert_allclose(res.matrix, hand, atol=1e-5)
    pair = res.term(TokenNode(qp, TOKENS[qp]), BiasNode("key", "projection"))
    assert pair == pytest.approx(hand[0, 1], abs=1e-5)
    assert res.softcap is None and res.scale == pytest.approx(dh**-0.5)


# ----------------------------------------------------------------------------- conveniences
def test_top_keys_and_errors(tiny_models):
    model = tiny_models["qwen3"]
    rm = ReplacementModel(model, random_transcoders(model, 64, seed=1))
    state = rm.clean(TOKENS)
    top = top_key_attributions(rm, state, 1, 2, QPOS, k=3)
    row = np.array(state.patterns[1][0, 2, QPOS, : QPOS + 1])
    assert [r.key_pos for r in top] == list(np.argsort(-row, kind="stable")[:3])
    assert top[0].pattern == pytest.approx(float(row.max()))
    assert [n for n, _ in top[0].top_query(3)] == [top[0].query_nodes[i] for i in
                                                   np.argsort(-np.abs(top[0].query_marginals))[:3]]
    assert len(top[0].top_pairs(4)) == 4
    small = qk_attribution(rm, state, 1, 2, QPOS, 1, max_pairs=1)
    assert small.matrix is None
    with pytest.raises(QKAttributionError, match="max_pairs"):
        small.top_pairs()
    for kw, match in (({"layer": 5}, "layer 5"), ({"head": 9}, "head 9"),
                      ({"key_pos": QPOS + 1}, "causal"), ({"query_pos": 40}, "outside")):
        args = {"layer": 1, "head": 0, "query_pos": QPOS, "key_pos": 0, **kw}
        with pytest.raises(QKAttributionError, match=match):
            qk_attribution(rm, state, **args)
    with pytest.raises(QKAttributionError, match="not a query-side node"):
        small.term(FeatureNode(1, 0, 0), BiasNode("key", "residual"))


# ------------------------------------------------------------------ heads as nodes (OV split)
@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma2", "qwen3", "mistral"])
def test_head_split_sums_to_graph_edge(tiny_models, name):
    model = tiny_models[name]
    dicts = random_transcoders(model, 64, seed=1)
    rm = ReplacementModel(model, dicts)
    state = rm.clean(TOKENS)
    graph = build_graph(model, dicts, TOKENS)
    top = model.n_layers - 1
    target = next(k for k in graph.nodes_of("feature") if k.layer == top and k.pos == QPOS)
    sources = [TokenNode(2, TOKENS[2]), ErrorNode(0, 3), ErrorNode(0, QPOS),
               next(k for k in graph.nodes_of("feature") if k.layer == 0 and k.pos == 1),
               next(k for k in graph.nodes_of("feature") if k.layer == 0 and k.pos == QPOS)]
    for src in sources:
        split = head_split(rm, state, src, target)
        assert split.edge == pytest.approx(graph.weight(src, target), rel=1e-4, abs=1e-6)
        assert abs(split.residual) <= 1e-5 * max(1.0, np.abs(split.by_query).sum())
        assert (split.direct != 0.0) == (src.pos == QPOS)  # a residual path needs the same position
        # a first hop reads the source's position, so it writes at or after it
        assert not split.by_query[..., : src.pos].any()


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma2"])
def test_head_split_against_reference(tiny_models, name):
    """2 layers, layer-0 source, layer-1 target: the only first hops are layer-1 heads. In the
    frozen numpy reference, a head's part is the target change when only that head's change
    of z (caused by the source) is injected; the direct part is the change with z unchanged."""
    model = tiny_models[name]
    dicts = random_transcoders(model, 64, seed=1)
    fz = Frozen(model, dicts)
    st = fz.state
    acts = np.array(st.acts[0])
    enc = np.array(dicts[1].W_enc, np.float64)
    tgt_f = int(np.argmax(np.array(st.acts[1])[QPOS]))
    target = FeatureNode(1, QPOS, tgt_f)
    H = model.n_heads
    for pos in (3, QPOS):
        a = int(np.argmax(acts[pos]))
        source = FeatureNode(0, pos, a)
        split = head_split(fz.rm, st, source, target)
        write = np.zeros((1, len(TOKENS), model.d_model))
        write[0, pos] = acts[pos, a] * np.array(dicts[0].W_dec_, np.float64)[a]
        base_in = fz.clean[(1, "mlp_in")][0, QPOS]
        fz.ref.forward(np.array([TOKENS]), inject={(0, "mlp_out"): write}, frozen=fz.rec)
        dz = fz.ref.acts[(1, "attn_z")] - fz.clean[(1, "attn_z")]
        edge = (fz.ref.acts[(1, "mlp_in")][0, QPOS] - base_in) @ enc[:, tgt_f]
        assert split.edge == pytest.approx(edge, rel=1e-4, abs=1e-6)
        tol = 1e-4 * max(1.0, abs(split.by_query).max())
        for h in range(H):
            only = np.zeros_like(dz)
            only[:, :, h] = dz[:, :, h]
            fz.ref.forward(np.array([TOKENS]), inject={(1, "attn_z"): only}, frozen=fz.rec)
            part = (fz.ref.acts[(1, "mlp_in")][0, QPOS] - base_in) @ enc[:, tgt_f]
            assert abs(split.by_head[1, h] - part) <= tol, (name, pos, h)
        assert not split.by_head[0].any()
        fz.ref.forward(np.array([TOKENS]), inject={(0, "mlp_out"): write, (1, "attn_z"): -dz},
                       frozen=fz.rec)
        direct = (fz.ref.acts[(1, "mlp_in")][0, QPOS] - base_in) @ enc[:, tgt_f]
        assert split.direct == pytest.approx(direct, abs=tol)


def test_edge_qk_and_errors(tiny_models):
    model = tiny_models["llama"]
    rm = ReplacementModel(model, random_transcoders(model, 64, seed=1))
    state = rm.clean(TOKENS)
    target = FeatureNode(1, QPOS, int(np.argmax(np.array(state.acts[1])[QPOS])))
    source = ErrorNode(0, 3)
    split = head_split(rm, state, source, target)
    res = edge_qk(rm, state, source, target, top=2)
    assert [(r.layer, r.head, r.query_pos, r.key_pos) for _, r in res] == \
        [(l, h, q, 3) for (l, h, q), _ in split.top(2)]
    assert [v for v, _ in res] == [v for _, v in split.top(2)]
    with pytest.raises(QKAttributionError, match="cannot reach target layer"):
        head_split(rm, state, ErrorNode(1, 2), target)
    with pytest.raises(QKAttributionError, match="must not come after"):
        head_split(rm, state, ErrorNode(0, 7), target)
    with pytest.raises(QKAttributionError, match="FeatureNode"):
        head_split(rm, state, source, ErrorNode(1, 6))


def test_quantized_and_clt(tiny_dirs, tiny_models, tmp_path):
    """A 4-bit model (attention projections run dequantized) stays exact against its own
    pattern; a CLT source's writes to several layers are all split."""
    from attribution import load_model
    from attribution.tiny import convert_tiny_model

    model = load_model(convert_tiny_model(tiny_dirs["llama"], tmp_path / "q4", bits=4, group_size=32))
    assert model.quantized
    rm = ReplacementModel(model, random_transcoders(model, 64, seed=1))
    res = qk_attributions(rm, TOKENS, 1, QPOS, [1])
    c = np.array([r.score for r in res])
    lp = np.log(np.array([r.pattern for r in res]))
    np.testing.assert_allclose(c - c.mean(), lp - lp.mean(), atol=1e-4 * max(1.0, np.abs(c).max()))

    model = tiny_models["mistral"]  # 3 layers: a layer-0 CLT feature writes to layers 0, 1, 2
    clt = random_clt(model, 32, seed=3)
    rm = ReplacementModel(model, clt)
    graph = build_graph(model, clt, TOKENS)
    target = next(k for k in graph.nodes_of("feature") if k.layer == 2 and k.pos == QPOS)
    source = next(k for k in graph.nodes_of("feature") if k.layer == 0 and k.pos == 2)
    split = head_split(rm, TOKENS, source, target)
    assert split.edge == pytest.approx(graph.weight(source, target), rel=1e-4, abs=1e-6)
    assert abs(split.residual) <= 1e-5 * max(1.0, np.abs(split.by_query).sum())
