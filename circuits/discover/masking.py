"""The masking core: one forward of a model whose every edge carries a mask value.

For downstream component d with upstream set U(d), the masked input is

    input_d = sum_u [a_ud * out_u + (1 - a_ud) * abl_u] + biases
            = resid - sum_u (1 - a_ud) * (out_u - abl_u)

where out_u is u's write into the residual stream in this (masked) run and
abl_u its ablated write (``ablation.py``). a = 1 everywhere is the clean model,
a = 0 everywhere the fully ablated one.

Algorithm (``MaskedModel.logits``):
  1. resid = embed(tokens); the write stack holds [embed] and the diff stack
     [embed - abl_embed].
  2. Per layer l: head inputs x = resid - (1 - mask[head_index[l]])^T @ diffs,
     one [B,T,d] input per (port, head); RMSNorm; per-head q/k/v projections
     (k and v weights are those of the head's KV group, so a GQA head reads its
     own input and never its siblings'); rope; causal softmax; z [B,T,H,dh];
     head writes z_h @ W_O[h]. resid += sum of head writes (+ o_proj bias).
  3. MLP input = resid - (1 - mask[mlp_index[l]])^T @ diffs (earlier writes
     and this layer's heads); write = mlp(post_attention_layernorm(input)).
  4. Logits = final_norm(resid - (1 - mask[logit_index])^T @ diffs) @ W_U.
Everything is plain mx ops on the mask, so ``mx.grad`` gives edge gradients.
Supported: sequential pre-norm llama-family blocks (llama, mistral, qwen2,
qwen3): attention writes are additive per head there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

import attribution  # noqa: F401  (optimised BLAS before mlx)
from circuits.discover.ablation import ABLATIONS, ablated_writes
from circuits.discover.graph import ComponentGraph
from circuits.errors import DiscoveryError, UnsupportedModelError
from circuits.tasks.base import TaskBatch, TaskData

SUPPORTED_ARCHS = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class BatchState:
    """Constant inputs of one length group."""

    batch: TaskBatch
    """The task examples."""
    embed: mx.array
    """[B,T,d] clean token embedding (resid_pre[0])."""
    ablated: mx.array
    """[U,B,T,d] (or broadcastable) ablated write of every upstream node, stack order."""
    clean_last: mx.array
    """[B,V] clean last-position logits (for KL metrics)."""


def check_model(model: Any) -> None:
    """Raise ``UnsupportedModelError`` (one line naming the fix) unless the masking core
    covers ``model``: a llama-family architecture with unquantized attention weights."""
    arch = getattr(model, "arch", None)
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedModelError(
            f"component-level discovery and validation (the masking core) need a llama-family "
            f"model ({', '.join(SUPPORTED_ARCHS)}: sequential pre-norm blocks with per-head "
            f"additive writes), but this model is {arch!r}; use such a model, or validate a "
            "feature circuit (circuits validate --circuit DIR), which works on any architecture")
    for h in model.layers:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if "scales" in h.attn[name]:
                raise UnsupportedModelError(
                    "the masking core needs unquantized attention weights but this model is "
                    "quantized; dequantize it first (mlx_lm.convert --dequantize)")


def _proj(x: mx.array, lin: Any, rows: mx.array | None, n: int, dh: int) -> mx.array:
    """Per-head projection of per-head inputs x [B,T,H,d] with a [n*dh, d] linear -> [B,T,H,dh]."""
    w = lin.weight.reshape(n, dh, -1)
    b = lin.bias.reshape(n, dh) if "bias" in lin else None
    if rows is not None:  # GQA: head h uses the weights of its KV group
        w = w[rows]
        b = None if b is None else b[rows]
    out = mx.einsum("bthd,hed->bthe", x, w)
    return out if b is None else out + b


class MaskedModel:
    """A model + task dataset + ablation, evaluated under any edge mask (module docstring)."""

    def __init__(self, model: Any, data: TaskData, ablation: str = "counterfactual",
                 qkv: str = "joint", batch_size: int | None = None, seed: int = 0,
                 metric: str | None = None) -> None:
        check_model(model)
        if ablation not in ABLATIONS:
            raise DiscoveryError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
        self.model, self.ablation, self.seed = model, ablation, seed
        self.data = data if metric is None else data.with_metric(metric)
        self.graph = ComponentGraph(model.n_layers, model.n_heads, qkv)
        self.n = len(data)
        self.kv_rows = mx.array(np.arange(model.n_heads) // (model.n_heads // model.n_kv_heads))
        self.states: list[BatchState] = []
        for b in self.data.batches(batch_size):
            emb = model.embed(b.clean)
            writes = self.writes(b.clean, emb)
            last = self._logits_from(writes[-1])[:, -1]
            abl = ablated_writes(self, b, ablation, seed)
            mx.eval(emb, last, abl)
            self.states.append(BatchState(b, emb, abl, last))

    # ------------------------------------------------------------ forward
    def _attention(self, layer: int, xq: mx.array, xk: mx.array, xv: mx.array) -> mx.array:
        """z [B,T,H,dh] of layer ``layer`` from per-head inputs [B,T,H,d] (pre-norm)."""
        h = self.model.layers[layer]
        a, ln = h.attn, h.block.input_layernorm
        m = self.model
        nq, dh = m.n_heads, m.d_head
        nq_ = ln(xq)
        nk_ = nq_ if xk is xq else ln(xk)  # joint ports share one norm
        nv_ = nq_ if xv is xq else ln(xv)
        rows = self.kv_rows if m.n_kv_heads != m.n_heads else None
        q = _proj(nq_, a.q_proj, None, nq, dh)
        k = _proj(nk_, a.k_proj, rows, m.n_kv_heads, dh)
        v = _proj(nv_, a.v_proj, rows, m.n_kv_heads, dh)
        if "q_norm" in a:
            q, k = a.q_norm(q), a.k_norm(k)
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # [B,H,T,dh]
        q, k = a.rope(q), a.rope(k)
        scores = (q * a.scale) @ k.swapaxes(-1, -2)
        t = scores.shape[-1]
        causal = mx.arange(t)[:, None] >= mx.arange(t)[None]
        scores = mx.where(causal, scores, mx.array(-1e30, scores.dtype))
        z = mx.softmax(scores, axis=-1, precise=True) @ v
        return z.transpose(0, 2, 1, 3)

    def writes(self, tokens: mx.array, embed: mx.array | None = None, mask: mx.array | None = None,
               ablated: mx.array | None = None) -> list[mx.array]:
        """Every node's residual write [B,T,d] in stack order, plus the final logit input last.

        With ``mask`` None (the clean model) no ablated writes are needed.
        """
        g, m = self.graph, self.model
        resid = self.model.embed(tokens) if embed is None else embed
        outs = [resid]
        diffs: list[mx.array] = []

        def masked_input(idx: np.ndarray) -> mx.array:
            if mask is None:
                return resid[None] if idx.ndim == 2 else resid
            u = idx.shape[0]
            while len(diffs) < u:
                i = len(diffs)
                diffs.append(outs[i] - ablated[i])
            keep = 1.0 - mask[mx.array(idx.reshape(u, -1))]  # [U, n]
            d = mx.stack(diffs[:u])
            flat = keep.T @ d.reshape(u, -1)  # [n, B*T*d]
            x = resid[None] - flat.reshape(keep.shape[1], *resid.shape)
            return x if idx.ndim == 2 else x[0]

        for layer in range(m.n_layers):
            h = m.layers[layer]
            x = masked_input(g.head_index[layer])  # [P*H or 1, B,T,d]
            if x.shape[0] == 1:
                xs = [mx.broadcast_to(x[0][:, :, None], (*resid.shape[:2], m.n_heads, m.d_model))] * 3
            else:
                per = x.reshape(len(g.ports), m.n_heads, *resid.shape).transpose(0, 2, 3, 1, 4)
                xs = [per[0]] * 3 if len(g.ports) == 1 else [per[0], per[1], per[2]]
            z = self._attention(layer, xs[0], xs[1], xs[2])
            head_out = mx.einsum("bthe,hed->bthd", z, m.W_O(layer))
            outs += [head_out[:, :, i] for i in range(m.n_heads)]
            resid = resid + head_out.sum(axis=2)
            if "bias" in h.attn.o_proj:
                resid = resid + h.attn.o_proj.bias
            xm = masked_input(g.mlp_index[layer][:, None])[0]
            mo = h.mlp(h.block.post_attention_layernorm(xm))
            outs.append(mo)
            resid = resid + mo
        outs.append(masked_input(g.logit_index[:, None])[0])
        return outs

    def _logits_from(self, final_input: mx.array) -> mx.array:
        return self.model.final_norm(final_input) @ self.model.W_U

    def logits(self, mask, state: int | BatchState = 0) -> mx.array:
        """[B,T,V] logits of one length group under an [n_edges] edge mask."""
        st = self.states[state] if isinstance(state, int) else state
        mask = self._as_mask(mask)
        w = self.writes(st.batch.clean, st.embed, mask, st.ablated)
        return self._logits_from(w[-1])

    def _as_mask(self, mask) -> mx.array:
        mask = mx.array(np.asarray(mask, dtype=np.float32)) if not isinstance(mask, mx.array) else mask
        if mask.shape != (self.graph.n_edges,):
            raise DiscoveryError(f"mask must have shape ({self.graph.n_edges},) (one value per "
                                 f"edge), got {tuple(mask.shape)}")
        return mask

    # ------------------------------------------------------------- metric
    @property
    def sign(self) -> float:
        """-1 for the KL metric (lower is better), so every score reads "higher = more clean"."""
        return -1.0 if self.data.metric_kind == "kl" else 1.0

    def _objective(self, mask: mx.array, st: BatchState) -> mx.array:
        last = self.logits(mask, st)[:, -1]
        return self.sign * mx.sum(self.data.metric(last, st.batch, clean_logits=st.clean_last))

    def metric(self, mask) -> float:
        """Mean task metric over all examples under an edge mask (-KL for the KL metric)."""
        mask = self._as_mask(mask)
        total = 0.0
        for st in self.states:
            total += float(self._objective(mask, st))
        return total / self.n

    def per_example(self, mask) -> np.ndarray:
        """[N] task metric per example (dataset order) under an edge mask."""
        mask = self._as_mask(mask)
        out = np.zeros(self.n)
        for st in self.states:
            last = self.logits(mask, st)[:, -1]
            out[st.batch.index] = self.sign * np.array(
                self.data.metric(last, st.batch, clean_logits=st.clean_last))
        return out

    def metric_and_grad(self, mask) -> tuple[float, np.ndarray]:
        """(mean metric, d mean metric / d mask [n_edges]) by one backward per length group."""
        mask = self._as_mask(mask)
        value, grad = 0.0, np.zeros(self.graph.n_edges)
        for st in self.states:
            v, gr = mx.value_and_grad(lambda mk, st=st: self._objective(mk, st))(mask)
            mx.eval(v, gr)
            value += float(v)
            grad += np.array(gr, dtype=np.float64)
        return value / self.n, grad / self.n

    def ones(self) -> np.ndarray:
        """The clean mask."""
        return np.ones(self.graph.n_edges, dtype=np.float32)

    def zeros(self) -> np.ndarray:
        """The fully ablated mask."""
        return np.zeros(self.graph.n_edges, dtype=np.float32)


Progress = Callable[[str, int, int], None]
"""Progress callback: (stage, done, total)."""
