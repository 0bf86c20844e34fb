"""The ``Dictionary`` base class: parameters, encode/decode, loss, folding, init.

A dictionary maps x [..., d_in] read at ``in_site`` to a prediction of the
activation at ``out_site`` [..., d_out]:
  1. pre = (x - b_dec) @ W_enc + b_enc   (SAEs; transcoders skip the b_dec subtraction)
  2. f   = activation(pre)               (architecture-specific nonlinearity)
  3. y^  = f @ W_dec + b_dec (+ x @ W_skip for skip transcoders)
  4. loss = ||y - y^||^2 (mean over tokens, summed over dims)
            + sparsity_coef * sparsity(f) + auxiliary terms (per architecture).
Training runs on normalised activations (E||x|| = sqrt(d)); ``folded`` turns
the weights back into raw units so every public method works on raw activations.
Subclasses override ``activation`` / ``train_forward`` / ``sparsity`` / ``aux_loss`` /
``update_stats`` / ``post_update``; ``sae.parts.ComposedDictionary`` implements them by
delegating to interchangeable parts (a ``Recipe``).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import mlx.core as mx
import numpy as np
from mlx import nn

from attribution.sites import Site
from sae.errors import ConfigError, ShapeMismatchError


class LossContext(NamedTuple):
    """Per-step inputs of ``Dictionary.loss`` besides the activations."""

    sparsity_coef: Any
    """Sparsity coefficient already multiplied by the warm-up factor (scalar array or float)."""
    dead: Any
    """[width] bool array of latents counted dead (for AuxK / pre-act loss), or None."""
    use_aux: bool = False
    """Whether to compute the auxiliary dead-latent loss (decided on the host every N steps)."""
    progress: Any = 0.0
    """Training progress in [0, 1] (steps done / total; scalar array or float) for schedules
    such as p-annealing (``sae.parts.schedules``); 0 outside training."""


class Dictionary(nn.Module):
    """Base class of single-site dictionaries (SAE / transcoder / skip transcoder)."""

    arch: ClassVar[str] = "base"
    dec_init_norm: ClassVar[float] = 1.0
    default_sparsity_coef: ClassVar[float] = 0.0

    def __init__(self, d_in: int, width: int, *, d_out: int | None = None,
                 in_site: Site | None = None, out_site: Site | None = None,
                 skip: bool = False, apply_b_dec_to_input: bool | None = None,
                 **hparams: Any):
        super().__init__()
        d_out = d_in if d_out is None else d_out
        if min(d_in, d_out, width) < 1:
            raise ConfigError(f"d_in, d_out and width must be >= 1, got {d_in}, {d_out}, {width}")
        self.d_in, self.d_out, self.width = int(d_in), int(d_out), int(width)
        self.in_site, self.out_site = in_site, (in_site if out_site is None else out_site)
        self.is_transcoder = (in_site != self.out_site) or skip or d_in != d_out
        if apply_b_dec_to_input is None:
            apply_b_dec_to_input = not self.is_transcoder
        if apply_b_dec_to_input and d_in != d_out:
            raise ConfigError("apply_b_dec_to_input needs d_in == d_out")
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        object.__setattr__(self, "hparams", dict(hparams))  # plain attribute, not a param tree
        self._check_hparams()
        self.W_enc = mx.zeros((d_in, width))
        self.b_enc = mx.zeros((width,))
        self.W_dec = mx.zeros((width, d_out))
        self.b_dec = mx.zeros((d_out,))
        if skip:
            self.W_skip = mx.zeros((d_in, d_out))
        else:
            self.W_skip = None

    # ---- hooks for subclasses -------------------------------------------------
    def _check_hparams(self) -> None:
        """Validate ``self.hparams`` (raise ConfigError)."""

    def activation(self, pre: mx.array) -> mx.array:
        """The inference nonlinearity (ReLU here)."""
        return mx.maximum(pre, 0)

    def train_activation(self, pre: mx.array) -> tuple[mx.array, dict]:
        """Training-time nonlinearity on [B,width]; returns (f, extra stats)."""
        return self.activation(pre), {}

    def sparsity(self, f: mx.array, pre: mx.array) -> mx.array:
        """Per-token-mean sparsity penalty before the coefficient (0 for TopK family)."""
        return mx.array(0.0)

    def aux_loss(self, x, y, pre, f, y_hat, ctx: LossContext) -> mx.array:
        """Auxiliary loss (AuxK, Gated reconstruction, pre-act loss); default none."""
        return mx.array(0.0)

    def update_stats(self, stats: dict) -> None:
        """Fold per-step statistics (e.g. a threshold EMA) into frozen state, lazily."""

    def post_update(self) -> None:
        """Project the parameters after each optimiser step (e.g. unit-norm decoder rows)."""

    # ---- the protocol -----------------------------------------------------------
    def pre_acts(self, x: mx.array) -> mx.array:
        """Affine encoder [..., d_in] -> [..., width] (b_dec subtraction folded in)."""
        if x.shape[-1] != self.d_in:
            raise ShapeMismatchError(f"{self.arch} dictionary expects d_in={self.d_in}, "
                                     f"got activations of width {x.shape[-1]}")
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return mx.addmm(self.b_enc, x, self.W_enc)  # bias added inside the GEMM: one pass less

    def train_enc_bias(self) -> mx.array:
        """The encoder bias of ``train_pre_acts``: b_enc - b_dec W_enc (SAEs), else b_enc."""
        return self.b_enc - self.b_dec @ self.W_enc if self.apply_b_dec_to_input else self.b_enc

    def train_pre_acts(self, x: mx.array, bias: mx.array | None = None) -> mx.array:
        """``pre_acts`` for training: x W_enc + (b_enc - b_dec W_enc).

        The same affine map, but b_dec's gradient becomes a vector-matrix product
        instead of a [B,width] x [width,d_in] GEMM (a fifth of a dense step).
        ``bias``: ``train_enc_bias()`` when the caller already has it."""
        if not self.apply_b_dec_to_input or type(self).pre_acts is not Dictionary.pre_acts:
            return self.pre_acts(x)
        if x.shape[-1] != self.d_in:
            raise ShapeMismatchError(f"{self.arch} dictionary expects d_in={self.d_in}, "
                                     f"got activations of width {x.shape[-1]}")
        return mx.addmm(self.train_enc_bias() if bias is None else bias, x, self.W_enc)

    def encode(self, x: mx.array) -> mx.array:
        """Latent activations ``activation(pre_acts(x))``."""
        return self.activation(self.pre_acts(x))

    def decode(self, f: mx.array) -> mx.array:
        """``f @ W_dec + b_dec`` (no skip term)."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: mx.array) -> mx.array:
        """Full prediction at ``out_site`` including the skip term."""
        y = self.decode(self.encode(x))
        if self.W_skip is not None:
            y = y + x @ self.W_skip
        return y

    def __call__(self, x: mx.array) -> mx.array:
        return self.forward(x)

    # ---- training -----------------------------------------------------------------
    def decoder_norms(self) -> mx.array:
        """||W_dec,i|| per latent [width]."""
        return mx.sqrt((self.W_dec * self.W_dec).sum(axis=-1))

    def train_forward(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array, dict]:
        """(pre, f, y_hat, stats) on a [B,d_in] batch using the training nonlinearity."""
        pre = self.train_pre_acts(x)
        f, stats = self.train_activation(pre)
        y_hat = self.decode(f)
        if self.W_skip is not None:
            y_hat = y_hat + x @ self.W_skip
        return pre, f, y_hat, stats

    def recon_loss(self, y: mx.array, y_hat: mx.array) -> mx.array:
        """Reconstruction term of the loss (mean over tokens of ||y - y_hat||^2)."""
        d = y - y_hat
        return (d * d).sum(axis=-1).mean()

    def loss(self, x: mx.array, y: mx.array, ctx: LossContext) -> tuple[mx.array, dict]:
        """(total loss, stats) on a batch; stats hold mse, sparsity, aux, l0, fired[width]."""
        pre, f, y_hat, stats = self.train_forward(x)
        mse = self.recon_loss(y, y_hat)
        sp = self.sparsity(f, pre)
        aux = self.aux_loss(x, y, pre, f, y_hat, ctx)
        active = f > 0
        stats = dict(stats, mse=mse, sparsity=sp, aux=aux,
                     l0=active.sum(axis=-1).astype(mx.float32).mean(),
                     fired=active.any(axis=0))
        return mse + ctx.sparsity_coef * sp + aux, stats

    # ---- initialisation and units ----------------------------------------------
    def init_weights(self, key: mx.array, b_dec: mx.array | None = None) -> None:
        """W_dec rows of norm ``dec_init_norm``; W_enc = W_dec^T when shapes allow."""
        k1, k2 = mx.random.split(key)
        w = mx.random.normal((self.width, self.d_out), key=k1)
        w = w / mx.sqrt((w * w).sum(-1, keepdims=True)) * self.dec_init_norm
        self.W_dec = w
        if self.d_in == self.d_out:
            self.W_enc = mx.array(w.T)
        else:
            e = mx.random.normal((self.d_in, self.width), key=k2)
            self.W_enc = e / mx.sqrt((e * e).sum(0, keepdims=True)) * self.dec_init_norm
        self.b_enc = mx.zeros((self.width,))
        if b_dec is not None:
            self.b_dec = mx.array(b_dec).astype(mx.float32)

    def folded(self, s_in: float, s_out: float) -> Dictionary:
        """A copy in raw units, given x_norm = s_in * x and y_norm = s_out * y."""
        if self.apply_b_dec_to_input and abs(s_in - s_out) > 1e-6 * max(s_in, s_out):
            raise ConfigError("an SAE with b_dec applied to its input needs s_in == s_out")
        new = self.clone_empty()
        params = {k: v for k, v in _flat(self.parameters()).items()}
        params["W_enc"] = params["W_enc"] * s_in
        params["W_dec"] = params["W_dec"] / s_out
        params["b_dec"] = params["b_dec"] / s_out
        if self.W_skip is not None:
            params["W_skip"] = params["W_skip"] * (s_in / s_out)
        new.load_arrays(params)
        return new

    def clone_empty(self) -> Dictionary:
        """A fresh instance with the same shapes, sites and hyperparameters."""
        return type(self)(self.d_in, self.width, d_out=self.d_out, in_site=self.in_site,
                          out_site=self.out_site, skip=self.W_skip is not None,
                          apply_b_dec_to_input=self.apply_b_dec_to_input, **self.hparams)

    def arrays(self) -> dict[str, mx.array]:
        """All parameters and frozen state, flat by name."""
        return _flat(self.parameters())

    def load_arrays(self, arrays: dict[str, mx.array]) -> None:
        """Set parameters from a flat name -> array dict (shapes must match)."""
        own = self.arrays()
        missing = sorted(set(own) - set(arrays))
        if missing:
            raise ShapeMismatchError(f"missing arrays for {self.arch} dictionary: {missing}")
        for name, cur in own.items():
            a = mx.array(arrays[name])
            if tuple(a.shape) != tuple(cur.shape):
                raise ShapeMismatchError(f"array {name!r} has shape {tuple(a.shape)}, "
                                         f"expected {tuple(cur.shape)}")
            setattr(self, name, a.astype(cur.dtype))

    def describe(self) -> dict:
        """JSON-able description (used by the file formats)."""
        return {"arch": self.arch, "d_in": self.d_in, "d_out": self.d_out, "width": self.width,
                "in_site": None if self.in_site is None else str(self.in_site),
                "out_site": None if self.out_site is None else str(self.out_site),
                "skip": self.W_skip is not None,
                "apply_b_dec_to_input": self.apply_b_dec_to_input,
                "hparams": dict(self.hparams)}


def _flat(tree) -> dict[str, mx.array]:
    """Flatten a parameter tree (dicts and lists) to dotted names."""
    out: dict[str, mx.array] = {}
    items = enumerate(tree) if isinstance(tree, list) else tree.items()
    for k, v in items:
        if isinstance(v, list):
            v = dict(enumerate(v))
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in _flat(v).items()})
        elif isinstance(v, mx.array):
            out[k] = v
    return out


def geometric_median(x: np.ndarray, iters: int = 50, tol: float = 1e-6) -> np.ndarray:
    """Weiszfeld iterations on [N,d] rows (float64), started at the mean."""
    x = np.asarray(x, dtype=np.float64)
    z = x.mean(axis=0)
    for _ in range(iters):
        w = 1.0 / np.maximum(np.linalg.norm(x - z, axis=1), 1e-12)
        z_new = (w[:, None] * x).sum(0) / w.sum()
        if np.linalg.norm(z_new - z) <= tol * max(1.0, np.linalg.norm(z)):
            return z_new
        z = z_new
    return z
