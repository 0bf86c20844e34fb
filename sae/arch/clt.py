"""Cross-layer transcoder (CLT).

For L layers, source i encodes x_i (its ``in_sites[i]``, e.g. L{i}.mlp_in) and
writes to every target j >= i (``out_sites[j]``, e.g. L{j}.mlp_out):
  1. pre_i = x_i W_enc[i] + b_enc[i]                              [B, m]
  2. f = act([pre_0 .. pre_{L-1}])  jointly over layers:
       relu | jumprelu (theta per layer and latent, STE as in JumpReLUDictionary)
       | topk (k over all L*m latents of a token) | batchtopk (k*B over the batch,
       EMA threshold -> JumpReLU at inference).
  3. y^_j = b_dec[j] + sum_{i<=j} f_i W_dec_i[:, j-i, :]   with W_dec_i [m, L-i, d].
  4. L = sum_j ||y_j - y^_j||^2 + lambda * sparsity, sparsity weighted by
     ||W_dec_i,a|| over all targets (relu / tanh-free step L0 for jumprelu).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import mlx.core as mx
from mlx import nn

from attribution.sites import Site
from sae.dictionary import LossContext, _flat
from sae.errors import ConfigError, ShapeMismatchError
from sae.ops import batch_topk, heaviside, jumprelu, topk_relu

CLT_ARCHS = ("relu", "jumprelu", "topk", "batchtopk")


class CrossLayerTranscoder(nn.Module):
    """CLT over ``n_layers`` source/target layer pairs (satisfies CrossLayerDictionary)."""

    arch = "clt"

    def __init__(self, d_in: int, width: int, n_layers: int, *, d_out: int | None = None,
                 in_sites: Sequence[Site] | None = None,
                 out_sites: Sequence[Site] | None = None, activation: str = "batchtopk",
                 k: int = 32, bandwidth: float = 0.05, threshold_init: float = 0.01,
                 threshold_ema: float = 0.01, k_aux: int | None = None,
                 aux_coef: float = 1.0 / 32):
        super().__init__()
        if activation not in CLT_ARCHS:
            raise ConfigError(f"CLT activation must be one of {CLT_ARCHS}, got {activation!r}")
        if activation in ("topk", "batchtopk") and not 1 <= k <= width * n_layers:
            raise ConfigError(f"k must be in 1..{width * n_layers}, got {k}")
        d_out = d_in if d_out is None else d_out
        self.d_in, self.d_out, self.width, self.n_layers = d_in, d_out, width, n_layers
        self.in_sites = list(in_sites) if in_sites else [Site(i, "mlp_in") for i in range(n_layers)]
        self.out_sites = list(out_sites) if out_sites else [Site(i, "mlp_out") for i in range(n_layers)]
        if len(self.in_sites) != n_layers or len(self.out_sites) != n_layers:
            raise ConfigError("in_sites and out_sites need one site per layer")
        object.__setattr__(self, "hparams", dict(
            activation=activation, k=k, bandwidth=bandwidth, threshold_init=threshold_init,
            threshold_ema=threshold_ema, k_aux=k_aux, aux_coef=aux_coef))
        self.W_enc = mx.zeros((n_layers, d_in, width))
        self.b_enc = mx.zeros((n_layers, width))
        self.W_dec_layers = [mx.zeros((width, n_layers - i, d_out)) for i in range(n_layers)]
        self.b_dec = mx.zeros((n_layers, d_out))
        self.W_skip = None
        if activation == "jumprelu":
            self.log_threshold = mx.full((n_layers, width), math.log(threshold_init))
        if activation == "batchtopk":
            self.threshold = mx.array(-1.0)
            self.freeze(keys=["threshold"], recurse=False)

    # ---- protocol ----------------------------------------------------------------
    def pre_acts_at(self, i: int, x: mx.array) -> mx.array:
        if x.shape[-1] != self.d_in:
            raise ShapeMismatchError(f"CLT expects d_in={self.d_in}, got {x.shape[-1]}")
        return x @ self.W_enc[i] + self.b_enc[i]

    def pre_acts(self, xs: Sequence[mx.array]) -> mx.array:
        """[..., L, width] from one input per layer."""
        return mx.stack([self.pre_acts_at(i, x) for i, x in enumerate(xs)], axis=-2)

    def activation(self, pre: mx.array) -> mx.array:
        """Inference nonlinearity on [..., L, width] (topk is joint over layers)."""
        act = self.hparams["activation"]
        if act == "relu":
            return mx.maximum(pre, 0)
        if act == "jumprelu":
            return pre * (pre > mx.exp(self.log_threshold)).astype(pre.dtype)
        if act == "batchtopk":
            return pre * (pre > mx.maximum(self.threshold, 0)).astype(pre.dtype)
        shp = pre.shape
        return topk_relu(pre.reshape(*shp[:-2], -1), self.hparams["k"]).reshape(shp)

    def calibrate_threshold(self, xs):
        """batchtopk: the current weights' batch threshold (joint over layers) on one training
        batch ``xs`` (the trainer's end-of-run inference threshold: the EMA lags a falling
        threshold); else None."""
        if self.hparams["activation"] != "batchtopk":
            return None
        pre = self.pre_acts(xs)
        return mx.stop_gradient(batch_topk(pre.reshape(pre.shape[0], -1), self.hparams["k"])[1])

    def encode(self, xs: Sequence[mx.array]) -> mx.array:
        return self.activation(self.pre_acts(xs))

    def decoder(self, i: int) -> mx.array:
        return self.W_dec_layers[i]

    def decode_to(self, i: int, j: int, f: mx.array) -> mx.array:
        return f @ self.W_dec_layers[i][:, j - i, :]

    def decode(self, f: mx.array) -> list[mx.array]:
        """Predictions for every target layer from f [..., L, width]."""
        L, d = self.n_layers, self.d_out
        outs = [mx.broadcast_to(self.b_dec[j], (*f.shape[:-2], d)) for j in range(L)]
        for i in range(L):
            w = self.W_dec_layers[i].reshape(self.width, (L - i) * d)
            contrib = (f[..., i, :] @ w).reshape(*f.shape[:-2], L - i, d)
            for j in range(i, L):
                outs[j] = outs[j] + contrib[..., j - i, :]
        return outs

    def forward(self, xs: Sequence[mx.array]) -> list[mx.array]:
        return self.decode(self.encode(xs))

    def __call__(self, xs):
        return self.forward(xs)

    # ---- training ------------------------------------------------------------------
    def decoder_norms(self) -> mx.array:
        """[L, width]: norm of each latent's write vectors over all its targets."""
        return mx.stack([mx.sqrt((w * w).sum(axis=(1, 2))) for w in self.W_dec_layers])

    def train_activation(self, pre: mx.array):
        act, eps = self.hparams["activation"], self.hparams["bandwidth"]
        if act == "jumprelu":
            return jumprelu(pre, mx.exp(self.log_threshold), eps), {}
        if act == "batchtopk":
            B = pre.shape[0]
            f, thr = batch_topk(pre.reshape(B, -1), self.hparams["k"])
            return f.reshape(pre.shape), {"batch_threshold": thr}
        return self.activation(pre), {}

    def loss(self, xs, ys, ctx: LossContext):
        pre = self.pre_acts(xs)
        f, stats = self.train_activation(pre)
        outs = self.decode(f)
        mse = sum(((y - o) ** 2).sum(-1).mean() for y, o in zip(ys, outs))
        act = self.hparams["activation"]
        if act == "relu":
            sp = (f * self.decoder_norms()).sum(axis=(-1, -2)).mean()
        elif act == "jumprelu":
            sp = heaviside(pre, mx.exp(self.log_threshold), self.hparams["bandwidth"])
            sp = sp.sum(axis=(-1, -2)).mean()
        else:
            sp = mx.array(0.0)
        aux = self.aux_loss(pre, ys, outs, ctx)
        active = f > 0
        stats = dict(stats, mse=mse, sparsity=sp, aux=aux,
                     l0=active.sum(axis=(-1, -2)).astype(mx.float32).mean(),
                     fired=active.any(axis=0).reshape(-1))
        return mse + ctx.sparsity_coef * sp + aux, stats

    def aux_loss(self, pre, ys, outs, ctx: LossContext) -> mx.array:
        """AuxK over all layers (topk / batchtopk): the k_aux largest dead pre-activations
        [B, L*m] reconstruct the detached residuals of every target (no bias);
        aux_coef * sum_j ||e_j - e^_j||^2 / sum_j ||e_j||^2."""
        if not ctx.use_aux or ctx.dead is None or self.hparams["activation"] not in (
                "topk", "batchtopk"):
            return mx.array(0.0)
        B = pre.shape[0]
        dead_pre = mx.where(ctx.dead, mx.maximum(pre.reshape(B, -1), 0), 0)
        k_aux = min(dead_pre.shape[-1], self.hparams.get("k_aux") or max(1, self.d_out // 2))
        f_aux = topk_relu(dead_pre, k_aux).reshape(pre.shape)
        e = [mx.stop_gradient(y - o) for y, o in zip(ys, outs)]
        e_hat = self.decode(f_aux)
        num = sum(((a - (b_ - bias)) ** 2).sum(-1).mean()  # decode adds b_dec; AuxK has none
                  for a, b_, bias in zip(e, e_hat, self.b_dec))
        den = mx.maximum(sum((a * a).sum(-1).mean() for a in e), 1e-12)
        return self.hparams["aux_coef"] * ctx.dead.any().astype(num.dtype) * num / den

    def update_stats(self, stats: dict) -> None:
        if "batch_threshold" in stats:
            thr, rate = mx.stop_gradient(stats["batch_threshold"]), self.hparams["threshold_ema"]
            self.threshold = mx.where(self.threshold < 0, thr,
                                      (1 - rate) * self.threshold + rate * thr)

    def init_weights(self, key: mx.array, b_dec: mx.array | None = None) -> None:
        """Encoder columns and each latent's concatenated write vector at unit norm."""
        keys = mx.random.split(key, self.n_layers + 1)
        enc = mx.random.normal((self.n_layers, self.d_in, self.width), key=keys[0])
        self.W_enc = enc / mx.sqrt((enc * enc).sum(1, keepdims=True))
        decs = []
        for i in range(self.n_layers):
            w = mx.random.normal((self.width, self.n_layers - i, self.d_out), key=keys[i + 1])
            decs.append(w / mx.sqrt((w * w).sum(axis=(1, 2), keepdims=True)))
        self.W_dec_layers = decs
        if b_dec is not None:
            self.b_dec = mx.array(b_dec).astype(mx.float32).reshape(self.n_layers, self.d_out)

    # ---- units and persistence ---------------------------------------------------------
    def folded(self, s_in: Sequence[float], s_out: Sequence[float]) -> CrossLayerTranscoder:
        new = self.clone_empty()
        a = self.arrays()
        sin, sout = mx.array(list(s_in)), mx.array(list(s_out))
        a["W_enc"] = a["W_enc"] * sin[:, None, None]
        a["b_dec"] = a["b_dec"] / sout[:, None]
        for i in range(self.n_layers):
            a[f"W_dec_layers.{i}"] = a[f"W_dec_layers.{i}"] / sout[i:][None, :, None]
        new.load_arrays(a)
        return new

    def clone_empty(self) -> CrossLayerTranscoder:
        return CrossLayerTranscoder(self.d_in, self.width, self.n_layers, d_out=self.d_out,
                                    in_sites=self.in_sites, out_sites=self.out_sites,
                                    **self.hparams)

    def arrays(self) -> dict[str, mx.array]:
        return _flat(self.parameters()) | {
            f"W_dec_layers.{i}": w for i, w in enumerate(self.W_dec_layers)}

    def load_arrays(self, arrays: dict[str, mx.array]) -> None:
        own = self.arrays()
        for name, cur in own.items():
            if name not in arrays:
                raise ShapeMismatchError(f"missing array {name!r} for CLT")
            a = mx.array(arrays[name])
            if tuple(a.shape) != tuple(cur.shape):
                raise ShapeMismatchError(f"array {name!r} has shape {tuple(a.shape)}, "
                                         f"expected {tuple(cur.shape)}")
            if name.startswith("W_dec_layers."):
                self.W_dec_layers[int(name.split(".")[1])] = a.astype(cur.dtype)
            else:
                setattr(self, name, a.astype(cur.dtype))

    def describe(self) -> dict:
        return {"arch": "clt", "d_in": self.d_in, "d_out": self.d_out, "width": self.width,
                "n_layers": self.n_layers, "in_sites": [str(s) for s in self.in_sites],
                "out_sites": [str(s) for s in self.out_sites], "hparams": dict(self.hparams)}
