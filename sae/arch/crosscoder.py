"""Acausal crosscoder: one dictionary reading and writing the activations of several sites.

For L sites (e.g. L0.resid_post .. L3.resid_post, all of width d) and m latents
(Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model Diffing"):
  1. pre = sum_l x_l W_enc[l] + b_enc                          [B, m]
     (computed as one GEMM: [x_0 .. x_{L-1}] [B, L*d] @ W_enc.reshape(L*d, m)).
  2. f = act(pre): relu | topk (k per token) | batchtopk (k*B over the batch in
     training; an EMA of the smallest kept value is the inference threshold).
  3. y^_l = f W_dec[:, l, :] + b_dec[l]                         for every site l
     (one GEMM: f @ W_dec.reshape(m, L*d)).
  4. loss = sum_l ||x_l - y^_l||^2 (mean over tokens) + lambda * sparsity (+ AuxK):
       relu: sparsity = sum_i f_i sum_l ||W_dec[i, l]||  (the per-layer decoder norms
             are summed, not the norm of the concatenated write vector, so a latent pays
             for every site it writes to and prefers writing to few);
       topk / batchtopk: no penalty; AuxK: the k_aux largest pre-activations of dead
       latents reconstruct the detached residual of all sites at once (no bias),
       aux_coef * ||e - e^||^2 / ||e||^2.
  5. Per-layer analysis: ``decoder_norms()`` [m, L]; ``relative_decoder_norms`` gives
     each latent's share of its total decoder norm per site (rows sum to 1), i.e.
     which sites a feature writes to.
Training runs on normalised activations (one scale per site); ``folded`` returns the
raw-unit crosscoder (W_enc[l] * s_l, W_dec[:, l] / s_l, b_dec[l] / s_l).
Evaluation (``evaluate_crosscoder``): FVU per site and over all sites, L0, dead fraction.
Why the summed norms matter in practice: at a large lambda a feature shared by every site
sheds its weakest site (in ``tests/sae/test_crosscoder.py``'s synthetic data, lambda = 1
turned a true share of 0.20 into 0.06; lambda = 0.3 kept every share within 0.06).
  6. TopK / BatchTopK at width >= max(4096, 96 k) (where the single-site TopK's "auto"
     decoder picks it) train on the active (token, latent) pairs only: the same loss and
     gradients as the dense [B, m] path (``sae.ops.sparse_pairs`` on the [L*d, m] /
     [m, L*d] views of the weights; tested against the dense loss).
Not supported here: jumprelu / gated / matryoshka activations, dead-latent resampling;
``sae.evaluate`` and the attribution replacement model take SAEs,
transcoders and CLTs only (use ``evaluate_crosscoder``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx import nn

from attribution.sites import Site
from sae.dictionary import LossContext, _flat
from sae.errors import ConfigError, EmptyDatasetError, ShapeMismatchError
from sae.ops import batch_topk, batch_topk_pairs, sparse_pairs, topk_pairs, topk_relu

CROSSCODER_ARCHS = ("relu", "topk", "batchtopk")


class Crosscoder(nn.Module):
    """Acausal crosscoder over ``n_sites`` sites of one width ``d_in`` (module docstring)."""

    arch = "crosscoder"
    default_sparsity_coef = 5.0
    """The relu penalty's default (TopK variants have no penalty; the coefficient is unused)."""

    def __init__(self, d_in: int, width: int, n_sites: int, *, sites: Sequence[Site] | None = None,
                 activation: str = "relu", k: int = 32, k_aux: int | None = None,
                 aux_coef: float = 1.0 / 32, threshold_ema: float = 0.01):
        super().__init__()
        if activation not in CROSSCODER_ARCHS:
            raise ConfigError("crosscoder activation must be one of "
                              f"{', '.join(CROSSCODER_ARCHS)}, got {activation!r}")
        for name, v in (("d_in", d_in), ("width", width), ("n_sites", n_sites)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"crosscoder {name} must be an integer >= 1, got {v!r}")
        if n_sites < 2:
            raise ConfigError(f"a crosscoder reads at least 2 sites, got {n_sites}; "
                              "train an SAE (kind 'sae') for a single site")
        if activation in ("topk", "batchtopk") and not (
                isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= width):
            raise ConfigError(f"k must be an integer in 1..width={width}, got {k!r}")
        sites = [Site.parse(s) for s in sites] if sites else [
            Site(i, "resid_post") for i in range(n_sites)]
        if len(sites) != n_sites:
            raise ConfigError(f"a crosscoder over {n_sites} sites needs {n_sites} site names, "
                              f"got {len(sites)}")
        if len(set(sites)) != len(sites):
            raise ConfigError(f"crosscoder sites repeat: {', '.join(map(str, sites))}")
        self.d_in = self.d_out = int(d_in)
        self.width, self.n_sites = int(width), int(n_sites)
        self.sites = sites
        object.__setattr__(self, "hparams", dict(activation=activation, k=k, k_aux=k_aux,
                                                 aux_coef=aux_coef, threshold_ema=threshold_ema))
        self.W_enc = mx.zeros((n_sites, d_in, width))
        self.b_enc = mx.zeros((width,))
        self.W_dec = mx.zeros((width, n_sites, d_in))
        self.b_dec = mx.zeros((n_sites, d_in))
        if activation == "batchtopk":
            self.threshold = mx.array(-1.0)  # < 0: not yet estimated
            self.freeze(keys=["threshold"], recurse=False)

    # The trainer and the file formats address sites through these names.
    @property
    def in_sites(self) -> list:
        return list(self.sites)

    @property
    def out_sites(self) -> list:
        return list(self.sites)

    # ---- protocol ----------------------------------------------------------------------
    def _concat(self, xs) -> mx.array:
        """[..., L*d] from L arrays [..., d] (or one [..., L, d] array), checking widths."""
        if isinstance(xs, mx.array):
            if xs.ndim < 2 or tuple(xs.shape[-2:]) != (self.n_sites, self.d_in):
                raise ShapeMismatchError(f"crosscoder expects [..., {self.n_sites}, {self.d_in}] "
                                         f"activations, got shape {tuple(xs.shape)}")
            return xs.reshape(*xs.shape[:-2], self.n_sites * self.d_in)
        xs = list(xs)
        if len(xs) != self.n_sites:
            raise ShapeMismatchError(f"crosscoder reads {self.n_sites} sites "
                                     f"({', '.join(map(str, self.sites))}), got {len(xs)} arrays")
        for s, x in zip(self.sites, xs):
            if x.shape[-1] != self.d_in:
                raise ShapeMismatchError(f"crosscoder expects d_in={self.d_in} at {s}, "
                                         f"got activations of width {x.shape[-1]}")
        return mx.concatenate(xs, axis=-1)

    def _pre(self, xcat: mx.array) -> mx.array:
        return xcat @ self.W_enc.reshape(self.n_sites * self.d_in, self.width) + self.b_enc

    def _dec(self, f: mx.array) -> mx.array:
        """[..., L*d]: f W_dec + b_dec for all sites at once."""
        L, d = self.n_sites, self.d_in
        return f @ self.W_dec.reshape(self.width, L * d) + self.b_dec.reshape(L * d)

    def pre_acts(self, xs) -> mx.array:
        """sum_l x_l W_enc[l] + b_enc  [..., width] (step 1)."""
        return self._pre(self._concat(xs))

    def activation(self, pre: mx.array) -> mx.array:
        """The inference nonlinearity (batchtopk: JumpReLU at the learnt global threshold)."""
        act = self.hparams["activation"]
        if act == "relu":
            return mx.maximum(pre, 0)
        if act == "topk":
            return topk_relu(pre, self.hparams["k"])
        return pre * (pre > mx.maximum(self.threshold, 0)).astype(pre.dtype)

    def train_activation(self, pre: mx.array) -> tuple[mx.array, dict]:
        if self.hparams["activation"] == "batchtopk":
            f, thr = batch_topk(pre, self.hparams["k"])
            return f, {"batch_threshold": thr}
        return self.activation(pre), {}

    def calibrate_threshold(self, xs):
        """batchtopk: the current weights' batch threshold on one training batch ``xs`` (the
        trainer's end-of-run inference threshold: the EMA lags a falling threshold); else
        None."""
        if self.hparams["activation"] != "batchtopk":
            return None
        return mx.stop_gradient(batch_topk(self.pre_acts(xs), self.hparams["k"])[1])

    def encode(self, xs) -> mx.array:
        return self.activation(self.pre_acts(xs))

    def decode(self, f: mx.array) -> list[mx.array]:
        """[y^_0 .. y^_{L-1}], each [..., d] (step 3)."""
        y = self._dec(f).reshape(*f.shape[:-1], self.n_sites, self.d_in)
        return [y[..., i, :] for i in range(self.n_sites)]

    def forward(self, xs) -> list[mx.array]:
        return self.decode(self.encode(xs))

    def __call__(self, xs):
        return self.forward(xs)

    # ---- training ----------------------------------------------------------------------
    def decoder_norms(self) -> mx.array:
        """[width, n_sites]: ||W_dec[i, l]|| per latent and site."""
        return mx.sqrt((self.W_dec * self.W_dec).sum(axis=-1))

    def sparsity(self, f: mx.array) -> mx.array:
        """relu: mean over tokens of sum_i f_i sum_l ||W_dec[i, l]||; else 0."""
        if self.hparams["activation"] != "relu":
            return mx.array(0.0)
        return (f @ self.decoder_norms().sum(axis=-1)).mean()

    def loss(self, xs, ys, ctx: LossContext) -> tuple[mx.array, dict]:
        """(total, stats) on a batch; ``ys`` are the same sites' activations (== ``xs``)."""
        x = self._concat(xs)
        same = ys is xs or (not isinstance(ys, mx.array) and len(ys) == len(xs)
                            and all(a is b for a, b in zip(xs, ys)))
        y = x if same else self._concat(ys)  # the trainer passes the same arrays twice
        if self.uses_pairs:
            return self._pair_loss(x, y, ctx)
        return self._dense_loss(x, y, ctx)

    @property
    def uses_pairs(self) -> bool:
        """TopK / BatchTopK train on the active (token, latent) pairs (module docstring, 6)
        at the widths where the single-site TopK's ``decoder="auto"`` picks them."""
        act, k = self.hparams["activation"], self.hparams.get("k")
        return act in ("topk", "batchtopk") and self.width >= 4096 and self.width >= 96 * k

    def _pair_loss(self, x, y, ctx: LossContext) -> tuple[mx.array, dict]:
        """The dense loss's value and gradients from the active pairs (``sae.ops``)."""
        L, d, m = self.n_sites, self.d_in, self.width
        W_enc = self.W_enc.reshape(L * d, m)
        pre = x @ W_enc + self.b_enc  # differentiable only for AuxK; the pairs read a copy
        sg = mx.stop_gradient(pre)
        if self.hparams["activation"] == "topk":
            tok, lat, pre_p = topk_pairs(sg, self.hparams["k"])
            stats = {}
        else:
            tok, lat, pre_p = batch_topk_pairs(sg, self.hparams["k"] * x.shape[0])
            stats = {"batch_threshold": mx.maximum(pre_p.min(), 0)}
        vals, dec = sparse_pairs(x, W_enc, self.b_enc, self.W_dec.reshape(m, L * d), tok, lat,
                                 pre_p)
        y_hat = dec + self.b_dec.reshape(L * d)
        r = y - y_hat
        mse = (r * r).sum(-1).mean()
        aux = self.aux_loss(pre, y, y_hat, ctx)
        on = mx.stop_gradient(vals > 0).astype(mx.float32)
        hits = mx.zeros((m,), mx.float32).at[lat.reshape(-1)].add(on.reshape(-1))
        stats = dict(stats, mse=mse, sparsity=mx.array(0.0), aux=aux, l0=on.sum() / x.shape[0],
                     fired=hits > 0)
        return mse + aux, stats

    def _dense_loss(self, x, y, ctx: LossContext) -> tuple[mx.array, dict]:
        pre = self._pre(x)
        f, stats = self.train_activation(pre)
        y_hat = self._dec(f)
        d = y - y_hat
        mse = (d * d).sum(-1).mean()  # == sum over sites of the per-site token means
        sp = self.sparsity(f)
        aux = self.aux_loss(pre, y, y_hat, ctx)
        active = f > 0
        stats = dict(stats, mse=mse, sparsity=sp, aux=aux,
                     l0=active.sum(axis=-1).astype(mx.float32).mean(), fired=active.any(axis=0))
        return mse + ctx.sparsity_coef * sp + aux, stats

    def aux_loss(self, pre: mx.array, y: mx.array, y_hat: mx.array, ctx: LossContext) -> mx.array:
        """AuxK over all sites (step 4); 0 for relu, before AuxK is switched on, or no dead.

        k_aux defaults to d // 2 with d one site's width (the SAE default), not L*d // 2."""
        if not ctx.use_aux or ctx.dead is None or self.hparams["activation"] == "relu":
            return mx.array(0.0)
        ka = self.hparams["k_aux"]
        k_aux = min(self.width, max(1, self.d_out // 2) if ka is None else int(ka))
        dead_pre = mx.where(ctx.dead, mx.maximum(pre, 0), mx.zeros_like(pre))
        f_aux = topk_relu(dead_pre, k_aux)
        e = mx.stop_gradient(y - y_hat)
        e_hat = f_aux @ self.W_dec.reshape(self.width, -1)
        num = ((e - e_hat) ** 2).sum(-1).mean()
        den = mx.maximum((e * e).sum(-1).mean(), 1e-12)
        return self.hparams["aux_coef"] * ctx.dead.any().astype(num.dtype) * num / den

    def update_stats(self, stats: dict) -> None:
        if "batch_threshold" in stats:
            thr, rate = mx.stop_gradient(stats["batch_threshold"]), self.hparams["threshold_ema"]
            self.threshold = mx.where(self.threshold < 0, thr,
                                      (1 - rate) * self.threshold + rate * thr)

    def init_weights(self, key: mx.array, b_dec: mx.array | None = None) -> None:
        """Each latent's write vector [L, d] at total norm 0.1 (relu) or 1; W_enc = W_dec^T.

        relu starts small as in Anthropic's April-2024 SAE recipe (the penalty is
        norm-weighted, so the norm is learnt); b_dec: [L, d] or None (zeros)."""
        norm = 0.1 if self.hparams["activation"] == "relu" else 1.0
        w = mx.random.normal((self.width, self.n_sites, self.d_in), key=key)
        w = w / mx.sqrt((w * w).sum(axis=(1, 2), keepdims=True)) * norm
        self.W_dec = w
        self.W_enc = mx.array(w.transpose(1, 2, 0))
        self.b_enc = mx.zeros((self.width,))
        self.b_dec = (mx.zeros((self.n_sites, self.d_in)) if b_dec is None else
                      mx.array(b_dec).astype(mx.float32).reshape(self.n_sites, self.d_in))

    # ---- units and persistence -------------------------------------------------------
    def folded(self, s_in: Sequence[float], s_out: Sequence[float] | None = None) -> Crosscoder:
        """A copy in raw units given x_l,normalised = s_l x_l (one scale per site)."""
        s = [float(v) for v in s_in]
        if s_out is not None and any(abs(a - float(b)) > 1e-6 * max(abs(a), abs(float(b)))
                                     for a, b in zip(s, s_out)):
            raise ConfigError("a crosscoder reads and writes the same sites: s_in must equal s_out")
        if len(s) != self.n_sites:
            raise ConfigError(f"folded needs {self.n_sites} scales, got {len(s)}")
        sv = mx.array(s)
        a = self.arrays()
        a["W_enc"] = a["W_enc"] * sv[:, None, None]
        a["W_dec"] = a["W_dec"] / sv[None, :, None]
        a["b_dec"] = a["b_dec"] / sv[:, None]
        new = self.clone_empty()
        new.load_arrays(a)
        return new

    def clone_empty(self) -> Crosscoder:
        return Crosscoder(self.d_in, self.width, self.n_sites, sites=self.sites, **self.hparams)

    def arrays(self) -> dict[str, mx.array]:
        return _flat(self.parameters())

    def load_arrays(self, arrays: Mapping) -> None:
        own = self.arrays()
        missing = sorted(set(own) - set(arrays))
        if missing:
            raise ShapeMismatchError(f"missing arrays for crosscoder: {missing}")
        for name, cur in own.items():
            a = mx.array(arrays[name])
            if tuple(a.shape) != tuple(cur.shape):
                raise ShapeMismatchError(f"array {name!r} has shape {tuple(a.shape)}, "
                                         f"expected {tuple(cur.shape)}")
            setattr(self, name, a.astype(cur.dtype))

    def describe(self) -> dict:
        return {"arch": self.arch, "d_in": self.d_in, "d_out": self.d_out, "width": self.width,
                "n_sites": self.n_sites, "sites": [str(s) for s in self.sites],
                "hparams": dict(self.hparams)}


def relative_decoder_norms(cc: Crosscoder) -> np.ndarray:
    """[width, n_sites]: ||W_dec[i, l]|| / sum_l ||W_dec[i, l]|| (rows sum to 1).

    Which sites each latent writes to: a latent specific to site l has its row
    concentrated at l, a shared one spreads it. A latent with an all-zero decoder
    gets a zero row."""
    n = np.linalg.norm(np.asarray(cc.W_dec, np.float64), axis=-1)
    tot = n.sum(axis=1, keepdims=True)
    return np.divide(n, tot, out=np.zeros_like(n), where=tot > 0)


@dataclass(frozen=True)
class CrosscoderEval:
    """Held-out metrics of a crosscoder (``evaluate_crosscoder``)."""

    fvu: float
    """sum over sites of ||x_l - x^_l||^2 / sum over sites of ||x_l - mean x_l||^2."""
    fvu_per_site: dict
    """{Site: that site's own FVU}."""
    l0: float
    """Mean active latents per token."""
    dead_frac: float
    """Fraction of latents that fired on no evaluated token."""
    tokens: int
    """Tokens evaluated."""


def evaluate_crosscoder(cc: Crosscoder, source, n_tokens: int = 2 ** 14,
                        batch_tokens: int = 4096, seed: int = 1) -> CrosscoderEval:
    """FVU per site and overall, L0 and dead fraction on ``n_tokens`` of ``source``
    (an ActivationSource or a {Site: [N, d]} mapping), accumulated in float64.

    FVU_l = sum_t ||x_l,t - x^_l,t||^2 / sum_t ||x_l,t - mean_t x_l||^2 (the mean over all
    evaluated tokens); dead = fired on none of them (``sae.evaluate.dead_fraction``)."""
    from sae.evaluate import _batches, dead_fraction  # the batching ``sae.evaluate`` uses

    L = cc.n_sites
    err, sq, sums = np.zeros(L), np.zeros(L), [None] * L
    fires, n, l0 = np.zeros(cc.width, np.int64), 0, 0.0
    for batch in _batches(source, n_tokens, batch_tokens, seed):
        missing = [s for s in cc.sites if s not in batch]
        if missing:
            raise ShapeMismatchError(f"the source lacks crosscoder site(s) "
                                     f"{', '.join(map(str, missing))}")
        xs = [mx.array(np.asarray(batch[s], np.float32)) for s in cc.sites]
        f = cc.encode(xs)
        ys = cc.decode(f)
        mx.eval(f, ys)
        for i, s in enumerate(cc.sites):
            x64 = np.asarray(batch[s], np.float64)
            err[i] += float(((x64 - np.array(ys[i], np.float64)) ** 2).sum())
            sq[i] += float((x64 ** 2).sum())
            col = x64.sum(0)
            sums[i] = col if sums[i] is None else sums[i] + col
        fa = np.array(f) > 0
        fires += fa.sum(0)
        l0 += float(fa.sum())
        n += fa.shape[0]
    if n == 0:
        raise EmptyDatasetError("no evaluation tokens")
    var = np.array([sq[i] - float((sums[i] ** 2).sum()) / n for i in range(L)])
    per = {s: float(err[i] / var[i]) if var[i] > 0 else float("nan")
           for i, s in enumerate(cc.sites)}
    fvu = float(err.sum() / var.sum()) if var.sum() > 0 else float("nan")
    tsf = np.where(fires > 0, 0, n)  # tokens since last fired, coarsely: dead == never fired
    return CrosscoderEval(fvu, per, l0 / n, dead_fraction(tsf, n), n)
