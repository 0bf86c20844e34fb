"""Independent float64 numpy forwards of the tiny architectures, from the weights.

Written from the mlx-lm model sources, without our hooks or mlx ops, so the
tests can check captured activations, interventions and gradients against it.

Options of ``Reference.forward``:
  inject  {(layer, kind): delta} added to the activation at that site
          (kinds as ``attribution.sites``; attn_z as [B,T,H,dh], attn_pattern
          as [B,H,T,T]); resid_mid is injected into the residual directly.
  frozen  a dict recorded by an earlier call (``record=``): every norm's
          1/scale and every attention pattern are taken from it instead of
          being recomputed -- the hand-built linearised forward.
"""

from __future__ import annotations

import math

import numpy as np
from mlx.utils import tree_flatten

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "phi3")


def gelu_approx(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def silu(x):
    return x / (1 + np.exp(-x))


def softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def rope(x, base):
    """Non-traditional (rotate-half) RoPE on [B,H,T,dh], positions 0..T-1."""
    dh = x.shape[-1]
    half = dh // 2
    inv = base ** (-np.arange(0, dh, 2, dtype=np.float64) / dh)
    ang = np.arange(x.shape[2], dtype=np.float64)[:, None] * inv[None]
    cos, sin = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def make_tokens(model, batch: int = 2, seq: int = 8, seed: int = 0):
    """Random in-vocabulary ids [batch, seq] (mx int32) starting with BOS."""
    import mlx.core as mx

    rng = np.random.default_rng(seed)
    ids = rng.integers(4, model.vocab_size, size=(batch, seq))
    ids[:, 0] = model.tokenizer.bos_token_id
    return mx.array(ids.astype(np.int32))


class Reference:
    """Reference forward of one tiny model (weights copied to float64)."""

    def __init__(self, model) -> None:
        self.arch = model.arch if model.arch != "gemma3_text" else "gemma3"
        self.cfg = model.config
        self.W = {k: np.array(v, dtype=np.float64) for k, v in tree_flatten(model.module.parameters())}
        self.n_layers, self.H, self.Hkv = model.n_layers, model.n_heads, model.n_kv_heads
        self.dh, self.d = model.d_head, model.d_model

    # ------------------------------------------------------------ primitives
    def _norm(self, key, x, w, b, form, eps):
        if form == "layer":
            x = x - x.mean(-1, keepdims=True)
            inv = 1 / np.sqrt((x**2).mean(-1, keepdims=True) + eps)
        else:
            inv = 1 / np.sqrt((x**2).mean(-1, keepdims=True) + eps)
        if self._frozen is not None:
            inv = self._frozen[key]
        if self._record is not None:
            self._record[key] = inv
        y = x * inv * ((1 + w) if form == "rms_1p" else w)
        return y + b if b is not None else y

    def _site(self, layer, kind, x):
        if (layer, kind) in self._inject:
            x = x + self._inject[(layer, kind)]
        self.acts[(layer, kind)] = x
        return x

    def _lin(self, name, x):
        y = x @ self.W[name + ".weight"].T
        return y + self.W[name + ".bias"] if name + ".bias" in self.W else y

    def _attend(self, layer, q, k, v, scale, softcap=None, window=None):
        """q [B,H,T,dh], k/v [B,Hkv,T,dh] -> z [B,T,H,dh] (pattern via site hook)."""
        rep = self.H // k.shape[1]
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = (q * scale) @ k.swapaxes(-1, -2)
        if softcap:
            s = np.tanh(s / softcap) * softcap
        t = s.shape[-1]
        qi, ki = np.arange(t)[:, None], np.arange(t)[None]
        allowed = qi >= ki
        if window is not None and t > window:
            allowed &= qi < ki + window
        p = softmax(np.where(allowed, s, -np.inf))
        if self._frozen is not None:
            p = self._frozen[("pattern", layer)]
        if self._record is not None:
            self._record[("pattern", layer)] = p
        p = self._site(layer, "attn_pattern", p)
        return (p @ v).transpose(0, 2, 1, 3)

    # --------------------------------------------------------------- forward
    def forward(self, tokens, inject=None, frozen=None, record=None):
        """Logits [B,T,V] (float64); activations in ``self.acts``."""
        self._inject, self._frozen, self._record, self.acts = inject or {}, frozen, record, {}
        tokens = np.asarray(tokens)
        if self.arch == "gpt2":
            return self._gpt2(tokens)
        if self.arch in LLAMA_LIKE:
            return self._llama(tokens)
        return self._gemma(tokens)

    def _llama(self, tokens):
        W, eps = self.W, self.cfg.get("rms_norm_eps", 1e-5)
        h = W["model.embed_tokens.weight"][tokens]
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            h = self._site(i, "resid_pre", h)
            x = self._norm((i, "in"), h, W[p + "input_layernorm.weight"], None, "rms", eps)
            q, k, v = self._qkv_llama(p, x)
            b, t = tokens.shape
            q = q.reshape(b, t, self.H, self.dh)
            k = k.reshape(b, t, self.Hkv, self.dh)
            if self.arch == "qwen3":
                q = self._norm((i, "q"), q, W[p + "self_attn.q_norm.weight"], None, "rms", eps)
                k = self._norm((i, "k"), k, W[p + "self_attn.k_norm.weight"], None, "rms", eps)
            q = rope(q.transpose(0, 2, 1, 3), self.cfg.get("rope_theta", 10000.0))
            k = rope(k.transpose(0, 2, 1, 3), self.cfg.get("rope_theta", 10000.0))
            v = v.reshape(b, t, self.Hkv, self.dh).transpose(0, 2, 1, 3)
            z = self._site(i, "attn_z", self._attend(i, q, k, v, self.dh**-0.5))
            a = self._site(i, "attn_out", self._lin(p + "self_attn.o_proj", z.reshape(b, t, -1)))
            h = self._site(i, "resid_mid", h + a)
            x = self._norm((i, "post"), h, W[p + "post_attention_layernorm.weight"], None, "rms", eps)
            x = self._site(i, "mlp_in", x)
            if self.arch == "phi3":
                gate, up = np.split(self._lin(p + "mlp.gate_up_proj", x), 2, axis=-1)
            else:
                gate, up = self._lin(p + "mlp.gate_proj", x), self._lin(p + "mlp.up_proj", x)
            m = self._site(i, "mlp_out", self._lin(p + "mlp.down_proj", silu(gate) * up))
            h = self._site(i, "resid_post", h + m)
        x = self._norm("final", h, W["model.norm.weight"], None, "rms", eps)
        wu = W.get("lm_head.weight", W["model.embed_tokens.weight"])
        return x @ wu.T

    def _qkv_llama(self, p, x):
        if self.arch == "phi3":
            qkv = self._lin(p + "self_attn.qkv_proj", x)
            nq, nk = self.H * self.dh, self.Hkv * self.dh
            return qkv[..., :nq], qkv[..., nq:nq + nk], qkv[..., nq + nk:]
        return (self._lin(p + "self_attn.q_proj", x), self._lin(p + "self_attn.k_proj", x),
                self._lin(p + "self_attn.v_proj", x))

    def _gemma(self, tokens):
        W, cfg, eps = self.W, self.cfg, self.cfg.get("rms_norm_eps", 1e-6)
        h = W["model.embed_tokens.weight"][tokens] * math.sqrt(self.d)
        b, t = tokens.shape
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            h = self._site(i, "resid_pre", h)
            x = self._norm((i, "in"), h, W[p + "input_layernorm.weight"], None, "rms_1p", eps)
            q = self._lin(p + "self_attn.q_proj", x).reshape(b, t, self.H, self.dh)
            k = self._lin(p + "self_attn.k_proj", x).reshape(b, t, self.Hkv, self.dh)
            v = self._lin(p + "self_attn.v_proj", x).reshape(b, t, self.Hkv, self.dh).transpose(0, 2, 1, 3)
            window, base, softcap = None, cfg.get("rope_theta", 10000.0), None
            if self.arch == "gemma3":
                q = self._norm((i, "q"), q, W[p + "self_attn.q_norm.weight"], None, "rms_1p", eps)
                k = self._norm((i, "k"), k, W[p + "self_attn.k_norm.weight"], None, "rms_1p", eps)
                pattern = cfg["sliding_window_pattern"]
                if i % pattern != pattern - 1:
                    window, base = cfg["sliding_window"], cfg["rope_local_base_freq"]
            else:
                softcap = cfg["attn_logit_softcapping"]
            q, k = rope(q.transpose(0, 2, 1, 3), base), rope(k.transpose(0, 2, 1, 3), base)
            scale = cfg["query_pre_attn_scalar"] ** -0.5
            z = self._site(i, "attn_z", self._attend(i, q, k, v, scale, softcap, window))
            a = self._lin(p + "self_attn.o_proj", z.reshape(b, t, -1))
            a = self._norm((i, "pa"), a, W[p + "post_attention_layernorm.weight"], None, "rms_1p", eps)
            a = self._site(i, "attn_out", a)
            h = self._site(i, "resid_mid", h + a)
            x = self._norm((i, "pf"), h, W[p + "pre_feedforward_layernorm.weight"], None, "rms_1p", eps)
            x = self._site(i, "mlp_in", x)
            m = self._lin(p + "mlp.down_proj",
                          gelu_approx(self._lin(p + "mlp.gate_proj", x)) * self._lin(p + "mlp.up_proj", x))
            m = self._norm((i, "pff"), m, W[p + "post_feedforward_layernorm.weight"], None, "rms_1p", eps)
            m = self._site(i, "mlp_out", m)
            h = self._site(i, "resid_post", h + m)
        x = self._norm("final", h, W["model.norm.weight"], None, "rms_1p", eps)
        logits = x @ W.get("lm_head.weight", W["model.embed_tokens.weight"]).T
        cap = cfg.get("final_logit_softcapping") if self.arch == "gemma2" else None
        return np.tanh(logits / cap) * cap if cap else logits

    def _gpt2(self, tokens):
        W, eps = self.W, self.cfg["layer_norm_epsilon"]
        b, t = tokens.shape
        h = W["model.wte.weight"][tokens] + W["model.wpe.weight"][np.arange(t)][None]
        for i in range(self.n_layers):
            p = f"model.h.{i}."
            h = self._site(i, "resid_pre", h)
            x = self._norm((i, "ln1"), h, W[p + "ln_1.weight"], W[p + "ln_1.bias"], "layer", eps)
            q, k, v = np.split(self._lin(p + "attn.c_attn", x), 3, axis=-1)
            q, k, v = (a.reshape(b, t, self.H, self.dh).transpose(0, 2, 1, 3) for a in (q, k, v))
            z = self._site(i, "attn_z", self._attend(i, q, k, v, self.dh**-0.5))
            a = self._site(i, "attn_out", self._lin(p + "attn.c_proj", z.reshape(b, t, -1)))
            h = self._site(i, "resid_mid", h + a)
            x = self._norm((i, "ln2"), h, W[p + "ln_2.weight"], W[p + "ln_2.bias"], "layer", eps)
            x = self._site(i, "mlp_in", x)
            m = self._lin(p + "mlp.c_proj", gelu_approx(self._lin(p + "mlp.c_fc", x)))
            m = self._site(i, "mlp_out", m)
            h = self._site(i, "resid_post", h + m)
        x = self._norm("final", h, W["model.ln_f.weight"], W["model.ln_f.bias"], "layer", eps)
        return x @ W["model.wte.weight"].T
