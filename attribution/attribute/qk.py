"""QK attribution: why a head attends, as exact query-node × key-node terms.

The exact graph freezes attention patterns, so edges through attention show what a
head moved (OV) but not why it attended. For one (layer L, head h, query position q,
key position k) this module splits the pre-softmax score

    s = scale · q_vec · k_vec,   q_vec = Q(x'_q),  k_vec = K(x'_k)

(x' the attention input, i.e. the normed residual; Q, K the head's projection, per-head
q/k norm and RoPE) into contributions of graph nodes on each side. In the linearised
replacement model (attention patterns, every norm scale and every MLP output frozen at
their clean values, ``attribution.replacement.linear``) the residual stream is affine in
the node writes, so q_vec = Σ_i q_i + b_q and k_vec = Σ_j k_j + b_k, and

    s = Σ_{i,j} scale · q_i · k_j   (bias nodes included on both sides), exactly.

Per-head q/k norms (Qwen3, Gemma-3) are not linear: their scales are frozen at the clean
values too (like every other norm), so the decomposition is exact for the frozen model and
its terms sum to the model's actual score. Gemma-2's logit softcap cap·tanh(s/cap) acts
after the bilinear score: the terms sum to s (``score``), and ``capped_score`` is what
enters the softmax.

Algorithm (``qk_attributions``):
  1. The clean state (``ReplacementModel.clean``) gives every node's write vector: token p
     writes resid_pre[0][p]; error (l, p) writes its error vector; feature (l, p, a) writes
     act · W_dec(l→j)[a] at each target layer j of its unit (a CLT writes to every j ≥ l).
     Only nodes whose write site comes before layer L's attention (layer < L, or an SAE at
     resid_pre L) and whose position is at most the side's position can reach the vector.
  2. The frozen query/key map, deltas → (q, k) at layer L: the linearised forward on the
     prompt prefix, with a pre-hook on layer L's attention module reading its input x'
     (the forward above L is never evaluated: MLX is lazy), then the attention's own
     q/k code run on x' (projection, q/k norm with its scale frozen, RoPE), read at its
     attention-kernel call (``scaled_dot_product_attention`` is swapped for a function
     that records queries, keys and scale and stops the call); Gemma-2's inline attention
     is re-implemented (projection and RoPE; its scale and softcap are read off the module).
  3. One VJP of that map, vmapped over one-hot cotangents (d_head per (head, position) of
     a side, in chunks of ``batch_size``), gives the gradient G at every write site that
     can reach layer L. A node's vector on a side is G(site, pos) · write vector (a
     feature: act · Σ_j G_j(pos) · W_dec(l→j)[a]); nodes at later positions are exact
     zeros (causal frozen patterns) and are left out, as is any node whose vector is an
     exact zero (no frozen path, e.g. an earlier token at layer 0).
  4. The constant part of each vector is split in two bias nodes: ``projection`` = v − A x'
     (A x' from one JVP of step 2's attention part at the clean x' with tangent x': the
     projection bias, rotated and normed as the model does) and ``residual`` = A x' − Σ
     node vectors (what the frozen residual holds besides nodes: decoder biases, norm
     biases, attention output biases, MLPs without a transcoder, through every frozen
     path). Both are exact by linearity, so Σ vectors = the clean vector.
  5. Terms (float64): matrix[i, j] = scale · q_i · k_j (kept when |Q|·|K| ≤ ``max_pairs``),
     query marginal_i = scale · q_i · k_vec, key marginal_j = scale · q_vec · k_j; each set
     of marginals sums to the score. GQA: head h reads kv head h // (H / H_kv).

Algorithm (``head_split``, "heads as nodes": an edge source → target feature by head):
  1. Exact by telescoping in the linear frozen model: with N the propagation in which every
     attention output is held constant and F the full one, F = N + Σ_l F(after A_l)·A_l·N(to l)
     (split by the first attention layer on each path), and A_l = Σ_h A_{l,h} because the
     output projection (and Gemma's frozen post-attention norm) is linear in the per-head
     outputs z_h.
  2. One JVP of the frozen forward with the source's write as tangent gives the edge; one
     with every attention output stop-gradient'ed gives the direct (no-attention) part and,
     read at every output projection's input, the tangents ż_l of all per-head outputs.
  3. One gradient of the target's pre-activation with respect to an added delta on every
     layer's z gives G_l; by_query[l, h, p] = G_l[p, h] · ż_l[p, h] (a first hop reads the
     source's position as its key and writes at query position p).
  4. edge = direct + Σ by_query up to float round-off; ``edge_qk`` runs ``qk_attribution``
     for the largest first hops (layer, head, query p, key = the source's position).

Ablation identity (tested): removing a set S of nodes from the frozen model changes the
score to s − Σ_{i∈S} qmarg_i − Σ_{j∈S} kmarg_j + Σ_{i∈S, j∈S} matrix[i, j], where a node
absent from a side has no marginal there (a node at a position in (k, q] is query-only).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import mlx.core as mx
import numpy as np

from attribution.errors import AttributionError, UnsupportedArchitectureError
from attribution.graph.keys import ErrorNode, FeatureNode, TokenNode, _typed_eq, _typed_hash, _typed_ne, sort_key
from attribution.model.attention import SDPA_NAME, uses_sdpa
from attribution.model.dequant import dequantized_attention
from attribution.model.hooks import Hooks, base_class
from attribution.model.norms import frozen_override
from attribution.model.plan import norm_forms
from attribution.replacement.linear import linear_forward, write_sites
from attribution.replacement.model import CleanState, ReplacementModel
from attribution.replacement.units import targets_of, write_vectors


class QKAttributionError(AttributionError):
    """A QK attribution request names a layer, head or position that does not exist."""


class BiasNode(NamedTuple):
    """A constant part of a query or key vector (no graph node corresponds to it)."""

    side: str
    """``query`` or ``key``."""
    part: str
    """``projection`` (the q/k projection bias, normed and rotated as the model does) or
    ``residual`` (constants of the frozen residual: decoder, norm and attention-output
    biases, MLPs without a transcoder)."""

    kind = "bias"
    __eq__, __ne__, __hash__ = _typed_eq, _typed_ne, _typed_hash

    def __str__(self) -> str:
        return f"bias:{self.side}:{self.part}"


QKNode = TokenNode | FeatureNode | ErrorNode | BiasNode
"""A row or column of a ``QKAttribution``: a graph node key, or a ``BiasNode``."""


@dataclass(frozen=True, eq=False)
class QKAttribution:
    """The score of one (layer, head, query position, key position) split into node terms."""

    layer: int
    """Layer of the attention head."""
    head: int
    """Query head index."""
    kv_head: int
    """Key/value head the query head reads (GQA: head // (n_heads / n_kv_heads))."""
    query_pos: int
    """Query position q."""
    key_pos: int
    """Key position k (k <= q)."""
    scale: float
    """The model's score scale (1/sqrt(d_head), or Gemma's query_pre_attn_scalar^-1/2)."""
    softcap: float | None
    """Gemma-2 attention logit softcap (None for other models)."""
    score: float
    """scale · q_vec · k_vec from the frozen model's vectors (float64): the sum of all terms,
    before any softcap."""
    capped_score: float
    """What enters the softmax (before the mask): cap·tanh(score/cap), or ``score``."""
    pattern: float
    """Clean attention weight of this key at this query (0 where the mask hides the key)."""
    query_nodes: tuple
    """Query-side nodes (``QKNode``): tokens, features, errors in graph order, then the two
    query bias nodes."""
    query_vectors: np.ndarray
    """[Nq, d_head] float64 contribution of each query-side node to q_vec (after RoPE)."""
    key_nodes: tuple
    """Key-side nodes, as ``query_nodes``."""
    key_vectors: np.ndarray
    """[Nk, d_head] float64 contribution of each key-side node to k_vec (after RoPE)."""
    query_marginals: np.ndarray
    """[Nq] float64 scale · q_i · k_vec: each query-side node's share of the score."""
    key_marginals: np.ndarray
    """[Nk] float64 scale · q_vec · k_j: each key-side node's share of the score."""
    matrix: np.ndarray | None
    """[Nq, Nk] float64 scale · q_i · k_j, or None when Nq·Nk exceeds ``max_pairs``."""

    @property
    def query_vector(self) -> np.ndarray:
        """[d_head] q_vec = Σ query_vectors."""
        return self.query_vectors.sum(0)

    @property
    def key_vector(self) -> np.ndarray:
        """[d_head] k_vec = Σ key_vectors."""
        return self.key_vectors.sum(0)

    def term(self, query_node, key_node) -> float:
        """scale · q_i · k_j of one pair (works when ``matrix`` is None)."""
        i, j = _index(self.query_nodes, query_node, "query"), _index(self.key_nodes, key_node, "key")
        return float(self.scale * self.query_vectors[i] @ self.key_vectors[j])

    def top_query(self, n: int = 10) -> list[tuple]:
        """The ``n`` query-side (node, marginal) pairs of largest |marginal|."""
        return _top(self.query_nodes, self.query_marginals, n)

    def top_key(self, n: int = 10) -> list[tuple]:
        """The ``n`` key-side (node, marginal) pairs of largest |marginal|."""
        return _top(self.key_nodes, self.key_marginals, n)

    def top_pairs(self, n: int = 10) -> list[tuple]:
        """The ``n`` (query node, key node, term) triples of largest |term| (needs ``matrix``)."""
        if self.matrix is None:
            raise QKAttributionError(
                "the pair matrix was not kept (Nq·Nk > max_pairs); pass a larger max_pairs or "
                "use term(query_node, key_node) for single pairs")
        flat = np.argsort(-np.abs(self.matrix), axis=None, kind="stable")[:n]
        nk = self.matrix.shape[1]
        return [(self.query_nodes[f // nk], self.key_nodes[f % nk], float(self.matrix.flat[f]))
                for f in flat]


def _index(nodes: tuple, node, side: str) -> int:
    try:
        return nodes.index(node)
    except ValueError:
        raise QKAttributionError(f"{node!s} is not a {side}-side node of this attribution; "
                                 f"pick one from its {side}_nodes") from None


def _top(nodes: tuple, values: np.ndarray, n: int) -> list[tuple]:
    order = np.argsort(-np.abs(values), kind="stable")[:n]
    return [(nodes[i], float(values[i])) for i in order]


# ----------------------------------------------------------------- q/k of one attention module
class _KernelCall(Exception):
    """Raised by the recording kernel to stop the attention call after q and k exist."""

    def __init__(self, queries, keys, scale) -> None:
        super().__init__("attention kernel reached")
        self.queries, self.keys, self.scale = queries, keys, scale


def _recording_kernel(queries, keys, values, cache=None, scale=1.0, mask=None, sinks=None):
    raise _KernelCall(queries, keys, scale)


def _qk_norm_hooks(model, attn) -> Hooks:
    """Overrides freezing the scales of the norms inside ``attn`` (q_norm / k_norm)."""
    inside = {id(m) for _, m in attn.named_modules()}
    hooks = Hooks()
    for module, form in norm_forms(model):
        if id(module) in inside:
            hooks.add_override(module, frozen_override(form))
    return hooks


def attention_qk(model, layer: int, x: mx.array) -> tuple[mx.array, mx.array, float, float | None]:
    """The model's own (queries [B,H,T,dh], keys [B,H_kv,T,dh], scale, softcap) of layer
    ``layer`` for attention input ``x`` [B,T,d], with per-head q/k norm scales frozen
    (stop-gradient) and RoPE at positions 0..T-1 (module docstring, step 2)."""
    attn = model.layers[layer].attn
    if attn is None:
        raise UnsupportedArchitectureError(f"layer {layer} has no attention module found by "
                                           "attribution/model/arch.py")
    with _qk_norm_hooks(model, attn):
        if uses_sdpa(attn):
            mod = sys.modules[base_class(attn).__module__]
            before = getattr(mod, SDPA_NAME)
            setattr(mod, SDPA_NAME, _recording_kernel)
            try:
                attn(x, mask=None, cache=None)
            except _KernelCall as call:
                return call.queries, call.keys, float(call.scale), None
            finally:
                setattr(mod, SDPA_NAME, before)
            raise UnsupportedArchitectureError(
                f"{base_class(attn).__name__} never called {SDPA_NAME}, so its queries and keys "
                "cannot be read; add a re-implementation to attribution/attribute/qk.py")
        if base_class(attn).__module__ == "mlx_lm.models.gemma2":
            b, t, _ = x.shape
            q = attn.q_proj(x).reshape(b, t, attn.n_heads, -1).transpose(0, 2, 1, 3)
            k = attn.k_proj(x).reshape(b, t, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
            return attn.rope(q), attn.rope(k), float(attn.scale), float(attn.attn_logit_softcapping)
    raise UnsupportedArchitectureError(
        f"attention in {base_class(attn).__module__} computes scores inline; add its q/k "
        "computation to attribution/attribute/qk.py (attention_qk)")


# ----------------------------------------------------------------------- the frozen q/k map
def _prefix(state: CleanState, n: int) -> CleanState:
    """The clean state on positions [0, n): later positions cannot reach earlier scores."""
    if n == int(state.tokens.shape[1]):
        return state

    def cut(d):
        return {k: v[:n] for k, v in d.items()}

    return dataclasses.replace(
        state, tokens=state.tokens[:, :n], logits=state.logits[:n], norm_out=state.norm_out[:n],
        embed=state.embed[:n], x_in=cut(state.x_in), pre=cut(state.pre), acts=cut(state.acts),
        out=cut(state.out), recon=cut(state.recon), error=cut(state.error),
        mlp_out=cut(state.mlp_out), patterns={l: p[..., :n, :n] for l, p in state.patterns.items()})


class _Frozen:
    """The frozen map deltas -> (q, k) of one layer on a prompt prefix (step 2)."""

    def __init__(self, rm: ReplacementModel, state: CleanState, layer: int) -> None:
        self.rm, self.state, self.layer = rm, state, layer
        self.sites = write_sites(rm)
        # A write reaches layer L's attention when its site precedes the attention input.
        self.live = [k for k, s in enumerate(self.sites) if s.order < (layer, 1)]
        self.n_pos = int(state.tokens.shape[1])

    def attn_input(self, live: Sequence[mx.array]) -> mx.array:
        model = self.rm.model
        zeros = mx.zeros((1, self.n_pos, model.d_model), dtype=self.state.embed.dtype)
        deltas = [zeros] * len(self.sites)
        for k, v in zip(self.live, live):
            deltas[k] = v
        cell: list = []
        hooks = Hooks()
        hooks.add_pre(model.layers[self.layer].attn, lambda x: (cell.append(x), x)[1])
        with hooks:
            linear_forward(self.rm, self.state, deltas, "frozen")
        if not cell:
            raise UnsupportedArchitectureError(
                f"layer {self.layer}'s attention module was never called with its input")
        return cell[0]

    def qk(self, live: Sequence[mx.array]):
        return attention_qk(self.rm.model, self.layer, self.attn_input(live))

    def zeros(self) -> list[mx.array]:
        d = self.rm.model.d_model
        return [mx.zeros((1, self.n_pos, d), dtype=self.state.embed.dtype) for _ in self.live]


# ------------------------------------------------------------------------------- node vectors
@dataclass(frozen=True, eq=False)
class _Nodes:
    """Nodes that can reach layer L at positions [0, P), with their write data."""

    keys: list
    """Node keys in graph order."""
    pos: np.ndarray
    """[N] position of each key."""


def _node_table(rm: ReplacementModel, fz: _Frozen) -> tuple[_Nodes, dict]:
    """Keys in graph order, and their writes grouped by (site index, position): per group
    (node indices [n], write vectors [n, d]), so one product per group reads every node
    of that position from the gradient at that site."""
    st, n_layers = fz.state, rm.model.n_layers
    toks = np.asarray(st.tokens[0]).tolist()
    embed = np.asarray(st.embed.astype(mx.float32))
    live = set(fz.live)
    site_of = {u.layer: 1 + k for k, u in enumerate(rm.units.values())}
    entries: list = []
    for p in range(fz.n_pos):
        entries.append((TokenNode(p, int(toks[p])), [(0, p, embed[p])]))
    for l, u in rm.units.items():
        if site_of[l] in live:
            err = np.asarray(st.error[l].astype(mx.float32))
            entries += [(ErrorNode(l, p), [(site_of[l], p, err[p])]) for p in range(fz.n_pos)]
        outs = [(site_of[j.layer], j) for j in targets_of(u, rm.units) if site_of[j.layer] in live]
        if not outs:
            continue
        acts = np.asarray(st.acts[l].astype(mx.float32))
        decs = {j.layer: np.asarray(write_vectors(u, j).astype(mx.float32)) for _, j in outs}
        for p, a in zip(*np.nonzero(acts)):
            writes = [(k, int(p), acts[p, a] * decs[j.layer][a]) for k, j in outs]
            entries.append((FeatureNode(l, int(p), int(a)), writes))
    entries.sort(key=lambda e: sort_key(e[0], n_layers))
    keys = [e[0] for e in entries]
    pos = np.array([k.pos for k in keys], dtype=np.int64)
    groups: dict = {}
    for n, (_, writes) in enumerate(entries):
        for site, p, vec in writes:
            groups.setdefault((site, p), ([], []))
            groups[(site, p)][0].append(n)
            groups[(site, p)][1].append(vec)
    grouped = {g: (np.array(idx), np.stack(vecs)) for g, (idx, vecs) in groups.items()}
    return _Nodes(keys, pos), grouped


def _side_vectors(fz: _Frozen, groups: dict, n_nodes: int, which: int,
                  rows: list[tuple[int, int]], batch_size: int) -> np.ndarray:
    """[N, len(rows), d_head] node vectors of the q (which=0) or k (1) entries at
    (head, position) ``rows`` (step 3)."""
    heads = mx.array([h for h, _ in rows])
    poss = mx.array([p for _, p in rows])

    def outputs(*live):  # [R, dh]: the (head, position) rows of the [H, T, dh] output
        return fz.qk(list(live))[which][0][heads, poss]

    primals = fz.zeros()
    dh = fz.rm.model.d_head
    n_out = len(rows) * dh
    out = np.zeros((n_nodes, n_out), dtype=np.float64)

    def vjp(c):
        return mx.vjp(outputs, primals, [c])[1]

    for s in range(0, n_out, batch_size):
        c = min(batch_size, n_out - s)
        cts = np.zeros((c, n_out), dtype=np.float32)
        cts[np.arange(c), s + np.arange(c)] = 1.0  # one-hot: output entry s + r for copy r
        cts = mx.array(cts.reshape(c, len(rows), dh))
        grads = mx.vmap(vjp)(cts)  # per live site: [c, 1, P, d]
        mx.eval(grads)
        g = {k: np.asarray(v[:, 0].astype(mx.float32)) for k, v in zip(fz.live, grads)}
        for (site, p), (idx, vecs) in groups.items():
            # a CLT feature has one group per target site: accumulate (indices repeat across groups)
            out[idx, s: s + batch_size] += vecs @ g[site][:, p, :].T
    return out.reshape(n_nodes, len(rows), dh)


# -------------------------------------------------------------------------------- public API
def _state_of(rm: ReplacementModel, prompt) -> CleanState:
    return prompt if isinstance(prompt, CleanState) else rm.clean(prompt)


def _check(rm: ReplacementModel, state: CleanState, layer: int, heads, query_pos: int, keys) -> None:
    model, t = rm.model, int(state.tokens.shape[1])
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < model.n_layers:
        raise QKAttributionError(f"layer {layer!r} does not exist; the model has layers "
                                 f"0..{model.n_layers - 1}")
    for h in heads:
        if not isinstance(h, (int, np.integer)) or not 0 <= h < model.n_heads:
            raise QKAttributionError(f"head {h!r} does not exist; layer {layer} has heads "
                                     f"0..{model.n_heads - 1}")
    if not isinstance(query_pos, (int, np.integer)) or not 0 <= query_pos < t:
        raise QKAttributionError(f"query position {query_pos!r} is outside the prompt "
                                 f"(positions 0..{t - 1})")
    for k in keys:
        if not isinstance(k, (int, np.integer)) or not 0 <= k <= query_pos:
            raise QKAttributionError(
                f"key position {k!r} is not attended from query position {query_pos}: causal "
                f"attention reads keys 0..{query_pos}")


def qk_attributions(rm: ReplacementModel, prompt, layer: int, query_pos: int,
                    heads: Sequence[int] | None = None, key_pos: Sequence[int] | None = None, *,
                    max_pairs: int = 1_000_000, batch_size: int = 256) -> list[QKAttribution]:
    """``QKAttribution`` of every (head, key) in ``heads`` × ``key_pos`` at one query.

    ``prompt``: tokens or text (as ``ReplacementModel.clean`` takes) or a ``CleanState``
    from ``rm.clean`` (reused). ``heads`` defaults to every head, ``key_pos`` to every key
    0..query_pos. One vmapped VJP chunk serves all heads of a side, so asking for many
    (head, key) pairs at once is much cheaper than one call each. Results are ordered
    head-major. Module docstring: the algorithm and what is frozen."""
    state = _state_of(rm, prompt)
    model = rm.model
    heads = list(range(model.n_heads)) if heads is None else list(heads)
    _check(rm, state, layer, heads, query_pos, [] if key_pos is None else list(key_pos))
    keys = list(range(int(query_pos) + 1)) if key_pos is None else list(key_pos)
    for name, value, low in (("batch_size", batch_size, 1), ("max_pairs", max_pairs, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise QKAttributionError(f"{name} must be an int >= {low}, got {value!r}")
    heads, keys, query_pos = [int(h) for h in heads], [int(k) for k in keys], int(query_pos)
    if not heads or not keys:
        return []
    layer, rep = int(layer), model.n_heads // model.n_kv_heads
    st = _prefix(state, query_pos + 1)
    with dequantized_attention(model):
        fz = _Frozen(rm, st, layer)
        nodes, groups = _node_table(rm, fz)
        x0 = fz.attn_input(fz.zeros())
        (q0, k0, scale, cap), (aq, ak) = _clean_and_linear(model, layer, x0)
        q_rows = [(h, query_pos) for h in heads]
        kv_rows = sorted({(h // rep, k) for h in heads for k in keys})
        kv_index = {row: i for i, row in enumerate(kv_rows)}
        qv = _side_vectors(fz, groups, len(nodes.keys), 0, q_rows, batch_size)
        kv = _side_vectors(fz, groups, len(nodes.keys), 1, kv_rows, batch_size)
    pattern = np.asarray(state.patterns[layer][0, :, query_pos].astype(mx.float32))
    out = []
    for hi, h in enumerate(heads):
        q_full = q0[h, query_pos].astype(np.float64)
        qsel = nodes.pos <= query_pos
        q_nodes, q_vecs = _with_bias(nodes, qsel, qv[:, hi], q_full, aq[h, query_pos], "query")
        for k in keys:
            ri = kv_index[(h // rep, k)]
            ksel = nodes.pos <= k
            k_nodes, k_vecs = _with_bias(nodes, ksel, kv[:, ri], k0[h // rep, k].astype(np.float64),
                                         ak[h // rep, k], "key")
            q_vec, k_vec = q_vecs.sum(0), k_vecs.sum(0)
            score = float(scale * q_vec @ k_vec)
            keep = len(q_nodes) * len(k_nodes) <= max_pairs
            out.append(QKAttribution(
                layer=layer, head=h, kv_head=h // rep, query_pos=query_pos, key_pos=k, scale=scale,
                softcap=cap, score=score,
                capped_score=score if cap is None else float(cap * np.tanh(score / cap)),
                pattern=float(pattern[h, k]), query_nodes=q_nodes, query_vectors=q_vecs,
                key_nodes=k_nodes, key_vectors=k_vecs,
                query_marginals=scale * (q_vecs @ k_vec), key_marginals=scale * (k_vecs @ q_vec),
                matrix=scale * (q_vecs @ k_vecs.T) if keep else None))
    return out


def _clean_and_linear(model, layer: int, x0: mx.array):
    """Clean (q [H,T,dh], k [H_kv,T,dh], scale, softcap) and the linear parts A x' (JVP at x'
    with tangent x': the frozen projection is affine in x', so this is all but its bias)."""
    holder: list = []

    def f(x):
        q, k, scale, cap = attention_qk(model, layer, x)
        holder[:] = [scale, cap]
        return [q, k]

    (q0, k0), (aq, ak) = mx.jvp(f, [x0], [x0])
    mx.eval(q0, k0, aq, ak)
    as_np = [np.asarray(a[0].astype(mx.float32)).astype(np.float64) for a in (q0, k0, aq, ak)]
    return (as_np[0], as_np[1], holder[0], holder[1]), (as_np[2], as_np[3])


def _with_bias(nodes: _Nodes, sel: np.ndarray, vecs: np.ndarray, full: np.ndarray,
               linear: np.ndarray, side: str) -> tuple[tuple, np.ndarray]:
    """Selected node vectors plus the two bias nodes of step 4 (projection, residual)."""
    sel = sel & np.any(vecs != 0.0, axis=1)  # exact zeros: no frozen path reaches the vector
    v = vecs[sel]
    proj = full - linear
    resid = linear - v.sum(0)
    keys = tuple(k for k, s in zip(nodes.keys, sel) if s)
    return keys + (BiasNode(side, "projection"), BiasNode(side, "residual")), np.vstack([v, proj, resid])


def qk_attribution(rm: ReplacementModel, prompt, layer: int, head: int, query_pos: int,
                   key_pos: int, *, max_pairs: int = 1_000_000,
                   batch_size: int = 256) -> QKAttribution:
    """The score of (layer, head, query_pos, key_pos) split into query-node × key-node terms
    (see ``qk_attributions`` and the module docstring)."""
    return qk_attributions(rm, prompt, layer, query_pos, [head], [key_pos], max_pairs=max_pairs,
                           batch_size=batch_size)[0]


def top_key_attributions(rm: ReplacementModel, prompt, layer: int, head: int, query_pos: int,
                         k: int = 3, *, max_pairs: int = 1_000_000,
                         batch_size: int = 256) -> list[QKAttribution]:
    """QK attributions of the ``k`` keys that ``head`` attends to most at ``query_pos`` (by
    the clean pattern), most attended first."""
    state = _state_of(rm, prompt)
    _check(rm, state, layer, [head], query_pos, [])
    row = np.asarray(state.patterns[layer][0, head, query_pos, : query_pos + 1].astype(mx.float32))
    order = [int(i) for i in np.argsort(-row, kind="stable")[: max(0, int(k))]]
    res = qk_attributions(rm, state, layer, query_pos, [head], sorted(order), max_pairs=max_pairs,
                          batch_size=batch_size)
    by_key = {r.key_pos: r for r in res}
    return [by_key[i] for i in order]


# ------------------------------------------------------------------ heads as nodes (OV)
@dataclass(frozen=True, eq=False)
class HeadSplit:
    """A graph edge source → target feature split by the first attention head on each path."""

    source: object
    """Source node key (``TokenNode``, ``FeatureNode`` or ``ErrorNode``)."""
    target: FeatureNode
    """Target feature (its pre-activation is the edge's target value)."""
    edge: float
    """The source's whole effect on the target in the frozen model (the graph edge weight)."""
    direct: float
    """The part through no attention head (residual, skip transcoders, frozen norms)."""
    by_query: np.ndarray
    """[n_layers, n_heads, P] float64: paths whose first attention hop is head (l, h) writing
    at query position p (it reads the source's position as key); P = target position + 1."""

    @property
    def by_head(self) -> np.ndarray:
        """[n_layers, n_heads] first-hop contribution per head (summed over query positions)."""
        return self.by_query.sum(-1)

    @property
    def residual(self) -> float:
        """edge − direct − Σ by_head: zero up to float round-off (the split is exact)."""
        return float(self.edge - self.direct - self.by_query.sum())

    def top(self, n: int = 5) -> list[tuple[tuple[int, int, int], float]]:
        """The ``n`` largest |contributions| as ((layer, head, query position), value)."""
        flat = np.argsort(-np.abs(self.by_query), axis=None, kind="stable")[:n]
        return [(tuple(int(i) for i in np.unravel_index(f, self.by_query.shape)),
                 float(self.by_query.flat[f])) for f in flat]


def _source_writes(rm: ReplacementModel, state: CleanState, source) -> list[tuple[int, mx.array]]:
    """(write-site index, [d] vector) pairs of one source node."""
    site_of = {u.layer: 1 + k for k, u in enumerate(rm.units.values())}
    if isinstance(source, TokenNode):
        return [(0, state.embed[source.pos])]
    if isinstance(source, ErrorNode):
        return [(site_of[source.layer], state.error[source.layer][source.pos])]
    u = rm.units[source.layer]
    act = state.acts[source.layer][source.pos, source.feature]
    return [(site_of[j.layer], act * write_vectors(u, j)[source.feature])
            for j in targets_of(u, rm.units)]


def _check_edge(rm: ReplacementModel, state: CleanState, source, target) -> None:
    t = int(state.tokens.shape[1])
    if not isinstance(target, FeatureNode) or target.layer not in rm.units:
        raise QKAttributionError(f"target {target!r} must be a FeatureNode on a layer with a "
                                 f"dictionary ({rm.layers})")
    if not isinstance(source, (TokenNode, FeatureNode, ErrorNode)):
        raise QKAttributionError(f"source {source!r} must be a TokenNode, FeatureNode or ErrorNode")
    if not 0 <= source.pos <= target.pos < t:
        raise QKAttributionError(
            f"source position {source.pos} cannot reach target position {target.pos} in a "
            f"{t}-token prompt: the source must not come after the target")
    if isinstance(source, (FeatureNode, ErrorNode)):
        if source.layer not in rm.units or source.layer >= target.layer:
            raise QKAttributionError(
                f"source layer {source.layer} cannot reach target layer {target.layer}: pick a "
                "source on a dictionary layer below the target's")
        if isinstance(source, FeatureNode) and float(state.acts[source.layer][source.pos,
                                                                             source.feature]) == 0:
            raise QKAttributionError(f"{source} is not active on this prompt (activation 0), so "
                                     "it has no edges; pick an active feature")


def head_split(rm: ReplacementModel, prompt, source, target) -> HeadSplit:
    """Split the edge source → target feature by attention head (first hop on each path).

    Exact by telescoping in the linear frozen model: with N the propagation with every
    attention output held constant and F the full one, F = N + Σ_l F(after A_l) A_l N(to l),
    and A_l = Σ_h A_{l,h} since the output projection (and Gemma's post-attention norm, frozen)
    is linear in the per-head outputs z_h. Computed with (1) one JVP of the frozen forward
    with the source's write as tangent (``edge``), (2) one with every attention output
    stop-gradient'ed (``direct``, and the tangents ż_l of every layer's per-head outputs),
    (3) one VJP of the target's pre-activation with respect to every layer's z (G_l); then
    by_query[l, h, p] = G_l[p, h] · ż_l[p, h]. Does not change the graph or its format."""
    state = _state_of(rm, prompt)
    _check_edge(rm, state, source, target)
    model = rm.model
    st = _prefix(state, target.pos + 1)
    n_pos, d, H, dh = target.pos + 1, model.d_model, model.n_heads, model.d_head
    sites = write_sites(rm)
    enc = rm.encoder(target.layer)[0][:, target.feature]
    writes = _source_writes(rm, st, source)

    def forward(deltas, dz=None, block=False):
        zs: dict = {}
        hooks = Hooks()
        for l, h in enumerate(model.layers):
            def on_z(x, l=l):
                x = x if dz is None else x + dz[l]
                zs[l] = x
                return x
            hooks.add_pre(h.out_proj, on_z)
            if block:  # the tangent cannot pass any attention output: N of the docstring
                hooks.add_post(h.attn_out_point, mx.stop_gradient)
        with hooks:
            lo = linear_forward(rm, st, deltas, "frozen")
        value = lo.x_in[target.layer][0, target.pos] @ enc
        return value, [zs[l] for l in range(model.n_layers)]

    zeros = [mx.zeros((1, n_pos, d), dtype=st.embed.dtype) for _ in sites]
    tangent = [mx.zeros_like(z) for z in zeros]
    for k, vec in writes:
        tangent[k] = tangent[k] + mx.zeros((1, n_pos, d)).at[0, source.pos].add(vec.astype(mx.float32))

    with dequantized_attention(model):
        _, (edge,) = mx.jvp(lambda *dl: [forward(list(dl))[0]], zeros, tangent)
        _, blocked = mx.jvp(lambda *dl: (lambda v, z: [v, *z])(*forward(list(dl), block=True)),
                            zeros, tangent)
        dz0 = [mx.zeros((1, n_pos, H * dh), dtype=st.embed.dtype) for _ in range(model.n_layers)]
        grads = mx.grad(lambda dz: forward(zeros, dz=dz)[0])(dz0)
        mx.eval(edge, blocked, grads)
    zdot = np.stack([np.asarray(z[0].astype(mx.float32)).reshape(n_pos, H, dh)
                     for z in blocked[1:]]).astype(np.float64)
    g = np.stack([np.asarray(a[0].astype(mx.float32)).reshape(n_pos, H, dh)
                  for a in grads]).astype(np.float64)
    by_query = np.einsum("lphd,lphd->lhp", g, zdot)
    return HeadSplit(source, target, float(edge.item()), float(blocked[0].item()), by_query)


def edge_qk(rm: ReplacementModel, prompt, source, target, top: int = 3, *,
            max_pairs: int = 1_000_000, batch_size: int = 256) -> list[tuple[float, QKAttribution]]:
    """Why the heads carrying an edge attend: the ``top`` (layer, head, query position)
    first hops of ``head_split`` by |contribution|, each with the QK attribution of that
    head at (query position, the source's position as key); largest first."""
    state = _state_of(rm, prompt)
    split = head_split(rm, state, source, target)
    out = []
    for (layer, head, q), value in split.top(top):
        if value == 0.0:
            break
        out.append((value, qk_attribution(rm, state, layer, head, q, source.pos,
                                          max_pairs=max_pairs, batch_size=batch_size)))
    return out


__all__ = ["BiasNode", "HeadSplit", "QKAttribution", "QKAttributionError", "QKNode", "attention_qk",
           "edge_qk", "head_split", "qk_attribution", "qk_attributions", "top_key_attributions"]
