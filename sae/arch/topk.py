"""TopK, BatchTopK and Matryoshka BatchTopK dictionaries.

TopK (Gao et al. 2024):
  1. f = TopK_k(ReLU(pre)); y^ = f W_dec + b_dec (dense, or with ``decoder="sparse"``
     over the active (token, latent) pairs only, ``sae.ops.sparse_pairs``).
  2. AuxK: the k_aux largest pre-activations among dead latents reconstruct the
     residual e = y - y^ (detached): aux = aux_coef * ||e - e^||^2 / ||e||^2.
BatchTopK:
  3. Training keeps the k*B largest ReLU(pre) entries of the batch (dense, or as
     k*B active pairs with ``decoder="sparse"``); the smallest kept value updates an
     EMA threshold theta (rate ``threshold_ema``); after the last step the trainer sets
     theta to the final weights' batch threshold on the last batch (the EMA lags a
     threshold that falls while the encoder trains; ``sae.parts.activations``, 3).
  4. Inference is the JumpReLU f = pre * 1[pre > theta] (exported as such).
Matryoshka BatchTopK:
  5. Latents are split into nested groups (``group_fractions``); the loss sums the
     reconstruction losses of every prefix of groups (plus AuxK).
Each class is a thin composition of parts (``sae.parts.RECIPES``: topk / batchtopk
activation, auxk dead part, matryoshka decoder) built from its hyperparameters; the
sparse decoder path (``decoder="sparse"``) stays here as the classes' fast ``loss``.
"""

from __future__ import annotations

import mlx.core as mx

from sae.dictionary import LossContext
from sae.errors import ConfigError
from sae.ops import batch_topk_pairs, sparse_pairs, topk_pairs
from sae.parts import RECIPES, ComposedDictionary


class TopKDictionary(ComposedDictionary):
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

    def _aux_params(self) -> dict:
        h = self.hparams
        return {"k_aux": h["k_aux"], "coef": h["aux_coef"]}

    def make_recipe(self):
        return RECIPES["topk"].with_params(activation={"k": self.k}, dead=self._aux_params())

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


class BatchTopKDictionary(TopKDictionary):
    """BatchTopK: top k*B over the batch in training, global-threshold JumpReLU at inference."""

    arch = "batchtopk"

    def __init__(self, d_in: int, width: int, **kw):
        kw.setdefault("threshold_ema", 0.1)  # sae.parts.activations.BatchTopK
        super().__init__(d_in, width, **kw)  # the batchtopk part adds the frozen ``threshold``

    def make_recipe(self):
        return RECIPES["batchtopk"].with_params(
            activation={"k": self.k, "threshold_ema": self.hparams["threshold_ema"]},
            dead=self._aux_params())

    def active_pairs(self, pre: mx.array):
        return batch_topk_pairs(pre, self.k * pre.shape[0])

    def pair_stats(self, pre_p: mx.array) -> dict:
        return {"batch_threshold": mx.maximum(pre_p.min(), 0)}


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

    def make_recipe(self):
        return RECIPES["matryoshka"].with_params(
            activation={"k": self.k, "threshold_ema": self.hparams["threshold_ema"]},
            dead=self._aux_params(),
            decoder={"group_fractions": list(self.hparams["group_fractions"])})

    @property
    def group_bounds(self) -> list[int]:
        """End index of each nested prefix (last == width)."""
        return self.parts.decoder.bounds(self.width)
