"""TopK, BatchTopK and Matryoshka BatchTopK dictionaries.

TopK (Gao et al. 2024):
  1. f = TopK_k(ReLU(pre)); y^ = f W_dec + b_dec (dense, or with ``decoder="sparse"``
     over the active (token, latent) pairs only, ``sae.ops.sparse_pairs``).
  2. AuxK: the k_aux largest pre-activations among dead latents reconstruct the
     residual e = y - y^ (detached): aux = aux_coef * ||e - e^||^2 / ||e||^2.
BatchTopK:
  3. Training keeps the k*B largest ReLU(pre) entries of the batch (dense, or as
     k*B active pairs with ``decoder="sparse"``); the smallest kept value updates an
     EMA threshold theta (rate ``threshold_ema``).
  4. Inference is the JumpReLU f = pre * 1[pre > theta] (exported as such).
Matryoshka BatchTopK:
  5. Latents are split into nested groups (``group_fractions``); the loss sums the
     reconstruction losses of every prefix of groups (plus AuxK).
"""

from __future__ import annotations

import mlx.core as mx

from sae.dictionary import Dictionary, LossContext
from sae.errors import ConfigError
from sae.ops import (
    batch_topk,
    batch_topk_pairs,
    kth_largest,
    sparse_pairs,
    topk_pairs,
    topk_relu,
)


class TopKDictionary(Dictionary):
    """TopK SAE / transcoder with AuxK."""

    arch = "topk"
    dec_init_norm = 1.0

    def __init__(self, d_in: int, width: int, **kw):
        kw.setdefault("k", 32)
        kw.setdefault("k_aux", None)
        kw.setdefault("aux_coef", 1.0 / 32)
        kw.setdefault("decoder", "dense")
        super().__init__(d_in, width, **kw)

    def _check_hparams(self) -> None:
        h = self.hparams
        if not (isinstance(h["k"], int) and 1 <= h["k"] <= self.width):
            raise ConfigError(f"k must be an int in 1..width={self.width}, got {h['k']!r}")
        if h["decoder"] not in ("dense", "sparse"):
            raise ConfigError(f"decoder must be 'dense' or 'sparse', got {h['decoder']!r}")

    @property
    def k(self) -> int:
        return self.hparams["k"]

    @property
    def k_aux(self) -> int:
        ka = self.hparams["k_aux"]
        return min(self.width, max(1, self.d_out // 2) if ka is None else int(ka))

    def activation(self, pre: mx.array) -> mx.array:
        return topk_relu(pre, self.k)

    def active_pairs(self, pre: mx.array):
        """(tok, lat, pre_p): the active pairs of the sparse path, sorted by token."""
        return topk_pairs(pre, self.k)

    def loss(self, x: mx.array, y: mx.array, ctx: LossContext):
        if self.hparams["decoder"] != "sparse":
            return super().loss(x, y, ctx)
        # Sparse path: only the active (token, latent) pairs are touched, forward and
        # backward; statistics come from the pairs instead of a dense [B, width] array.
        b_enc = self.train_enc_bias()  # one bias for the selection GEMM and the sparse VJP
        pre = self.train_pre_acts(x, b_enc)
        tok, lat, pre_p = self.active_pairs(pre)
        vals, dec = sparse_pairs(x, self.W_enc, b_enc, self.W_dec, tok, lat, pre_p)
        y_hat = dec + self.b_dec
        if self.W_skip is not None:
            y_hat = y_hat + x @ self.W_skip
        mse = self.recon_loss(y, y_hat)
        aux = self.aux_loss(x, y, pre, None, y_hat, ctx)
        on = mx.stop_gradient(vals > 0).astype(mx.float32)
        hits = mx.zeros((self.width,), mx.float32).at[lat.reshape(-1)].add(on.reshape(-1))
        stats = dict(self.pair_stats(pre_p), mse=mse, sparsity=mx.array(0.0), aux=aux,
                     l0=on.sum() / x.shape[0], fired=hits > 0)
        return mse + aux, stats

    def pair_stats(self, pre_p: mx.array) -> dict:
        """Extra statistics of the sparse path (BatchTopK: its batch threshold)."""
        return {}

    def aux_loss(self, x, y, pre, f, y_hat, ctx: LossContext) -> mx.array:
        if not ctx.use_aux or ctx.dead is None:
            return mx.array(0.0)
        e = mx.stop_gradient(y - y_hat)
        dead_pre = mx.where(ctx.dead, mx.maximum(pre, 0), mx.zeros_like(pre))
        thr = mx.stop_gradient(kth_largest(dead_pre, self.k_aux))
        f_aux = mx.where((dead_pre >= thr) & (dead_pre > 0), dead_pre, mx.zeros_like(pre))
        e_hat = f_aux @ self.W_dec
        num = ((e - e_hat) ** 2).sum(-1).mean()
        den = mx.maximum((e * e).sum(-1).mean(), 1e-12)
        any_dead = ctx.dead.any().astype(num.dtype)
        return self.hparams["aux_coef"] * any_dead * num / den


class BatchTopKDictionary(TopKDictionary):
    """BatchTopK: top k*B over the batch in training, global-threshold JumpReLU at inference."""

    arch = "batchtopk"

    def __init__(self, d_in: int, width: int, **kw):
        kw.setdefault("threshold_ema", 0.01)
        super().__init__(d_in, width, **kw)
        self.threshold = mx.array(-1.0)  # < 0 means "not yet estimated"
        self.freeze(keys=["threshold"], recurse=False)

    def active_pairs(self, pre: mx.array):
        return batch_topk_pairs(pre, self.k * pre.shape[0])

    def pair_stats(self, pre_p: mx.array) -> dict:
        return {"batch_threshold": mx.maximum(pre_p.min(), 0)}

    def activation(self, pre: mx.array) -> mx.array:
        return pre * (pre > mx.maximum(self.threshold, 0)).astype(pre.dtype)

    def train_activation(self, pre: mx.array):
        f, thr = batch_topk(pre, self.k)
        return f, {"batch_threshold": thr}

    def train_forward(self, x: mx.array):
        return Dictionary.train_forward(self, x)

    def update_stats(self, stats: dict) -> None:
        if "batch_threshold" not in stats:
            return
        thr, rate = mx.stop_gradient(stats["batch_threshold"]), self.hparams["threshold_ema"]
        old = self.threshold
        self.threshold = mx.where(old < 0, thr, (1 - rate) * old + rate * thr)


class MatryoshkaDictionary(BatchTopKDictionary):
    """Matryoshka BatchTopK: sum of nested-prefix reconstruction losses."""

    arch = "matryoshka"

    def __init__(self, d_in: int, width: int, **kw):
        kw.setdefault("group_fractions", [1 / 32, 1 / 16, 1 / 8, 1 / 4, 17 / 32])
        super().__init__(d_in, width, **kw)

    def _check_hparams(self) -> None:
        super()._check_hparams()
        if self.hparams["decoder"] != "dense":
            raise ConfigError("Matryoshka sums nested-prefix losses over a dense [batch, width] "
                              "activation; use decoder='dense'")
        fr = list(self.hparams["group_fractions"])
        if not fr or min(fr) <= 0 or abs(sum(fr) - 1) > 1e-6:
            raise ConfigError(f"group_fractions must be positive and sum to 1, got {fr}")
        self.hparams["group_fractions"] = fr

    @property
    def group_bounds(self) -> list[int]:
        """End index of each nested prefix (last == width)."""
        ends, acc = [], 0.0
        for fr in self.hparams["group_fractions"]:
            acc += fr
            ends.append(min(self.width, max(1, round(acc * self.width))))
        ends[-1] = self.width
        return sorted(set(ends))

    def loss(self, x: mx.array, y: mx.array, ctx: LossContext):
        pre = self.train_pre_acts(x)
        f, stats = self.train_activation(pre)
        recon = self.b_dec + (x @ self.W_skip if self.W_skip is not None else 0)
        total, start, mse = mx.array(0.0), 0, None
        for end in self.group_bounds:  # prefix reconstructions share one pass over W_dec
            recon = recon + f[:, start:end] @ self.W_dec[start:end]
            mse = self.recon_loss(y, recon)  # the last prefix is the full reconstruction
            total = total + mse
            start = end
        aux = self.aux_loss(x, y, pre, f, recon, ctx)
        active = f > 0
        stats = dict(stats, mse=mse, sparsity=mx.array(0.0), aux=aux,
                     l0=active.sum(axis=-1).astype(mx.float32).mean(), fired=active.any(axis=0))
        return total + aux, stats
