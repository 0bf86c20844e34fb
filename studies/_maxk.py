"""Helpers of the splitting and penalty studies: the max-of-K toy, exact statistics, NMF.

1. Toy. ``ToyConfig`` / ``MaxKModel``: a small pre-LayerNorm transformer (causal attention
   + MLP blocks, learned positions) reading K tokens from a vocabulary of d_vocab and
   predicting the maximum at the last position. ``train_toy`` trains it with Adam on a
   50/50 mixture of i.i.d. uniform sequences and "balanced" sequences (maximum drawn
   uniformly, see 2), so that small maxima, rare under i.i.d. sampling, are learned too.
2. Inputs. ``sample_tokens``: "uniform" draws every token i.i.d. uniform; "balanced"
   draws the maximum m uniform on [0, d_vocab), the other tokens uniform on [0, m] and
   puts one copy of m at a uniform position. ``task_variables`` gives, per sequence, the
   true max, the query (last) token, the largest token strictly below the max
   (d_vocab when every token equals the max) and the number of copies of the max.
3. Statistics, exact over the sampled rows. ``eta2``: the correlation ratio
   Var(E[a | v]) / Var(a) of an activation a against a discrete variable v (the fraction
   of a's variance that v explains; group means are exact), with the adjusted form
   1 - (1 - eta2)(N - 1)/(N - G) that removes the small-sample bias of G groups.
   ``mutual_information``: plug-in I(a; b) in bits between discrete labels, and the
   conditional form I(a; b | c) = sum_c p(c) I(a; b | c).
4. Matching. ``match_parents``: each row of a wider decoder to its nearest row (cosine)
   of a narrower one.
5. NMF. ``nmf``: Lee & Seung multiplicative updates for min ||X - W H||_F^2 with W, H >= 0
   (W, H initialised from a seeded uniform draw scaled to X's mean; a floor of 1e-12 keeps
   the updates defined).
6. SAE training with a custom penalty. ``train_penalised``: a ReLU dictionary whose
   ``sparsity`` is a given function, trained with the house recipe (data normalised to
   E||x|| = sqrt(d) once, Adam, linear LR warm-up and final decay, sparsity-coefficient
   warm-up, W_enc = W_dec^T init at decoder norm 0.1, b_dec = the mean), written as a
   small loop because ``sae.train`` builds its dictionaries from the registry only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import sae  # noqa: F401  (our BLAS preload must precede mlx)
import mlx.core as mx  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
from mlx import nn  # noqa: E402

from sae.arch import ReLUDictionary  # noqa: E402
from studies._common import SITE, StudyError  # noqa: E402

VARIABLES = ("max", "query", "nonmax", "copies")
"""The task variables, in plotting order."""


# ---- 1. the toy --------------------------------------------------------------------------
@dataclass(frozen=True)
class ToyConfig:
    """The max-of-K transformer and its training."""

    d_vocab: int = 32
    """Vocabulary size (tokens 0..d_vocab-1)."""
    n_ctx: int = 6
    """K: tokens per sequence."""
    d_model: int = 64
    """Residual width."""
    n_layers: int = 2
    """Transformer blocks (attention + MLP)."""
    n_heads: int = 4
    """Attention heads per block."""
    steps: int = 1000
    """Adam steps."""
    batch: int = 256
    """Sequences per step."""
    lr: float = 1e-3
    """Peak learning rate (linear warm-up over 5% of the steps, then linear decay)."""
    seed: int = 0
    """Seed of the initialisation and of the training sequences."""

    def __post_init__(self) -> None:
        for name in ("d_vocab", "n_ctx", "d_model", "n_layers", "n_heads", "steps", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise StudyError(f"ToyConfig.{name} must be a positive integer, got {v!r}")
        if self.d_vocab < 2 or self.n_ctx < 2:
            raise StudyError("ToyConfig needs d_vocab >= 2 and n_ctx >= 2 (else no task)")
        if self.d_model % self.n_heads:
            raise StudyError(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")


class _Block(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiHeadAttention(d, h)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def __call__(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, mask)
        return x + self.mlp(self.ln2(x))


class MaxKModel(nn.Module):
    """Embedding + positions, pre-LN blocks, final LayerNorm, unembedding (no bias)."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos = mx.random.normal((cfg.n_ctx, cfg.d_model)) * 0.02
        self.blocks = [_Block(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers)]
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)

    def __call__(self, tokens: mx.array) -> tuple[mx.array, mx.array]:
        """(logits at the last position [B, d_vocab], final residual there [B, d_model])."""
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        mask = nn.MultiHeadAttention.create_additive_causal_mask(tokens.shape[1])
        for b in self.blocks:
            x = b(x, mask)
        r = x[:, -1]
        return self.unembed(self.ln_f(r)), r


def train_toy(cfg: ToyConfig, progress: Callable | None = None) -> tuple[MaxKModel, list]:
    """(trained model, loss history [(step, loss)]) -- see the module docstring, step 1."""
    mx.random.seed(cfg.seed)
    model = MaxKModel(cfg)
    warm = max(1, cfg.steps // 20)

    def sched(step):
        s = step.astype(mx.float32)
        return cfg.lr * mx.minimum((s + 1) / warm, mx.maximum((cfg.steps - s) / (cfg.steps - warm), 0.0))

    opt = optim.Adam(sched)
    rng = np.random.default_rng([cfg.seed, 1])

    def loss_fn(m, t, y):
        return nn.losses.cross_entropy(m(t)[0], y).mean()

    vg = nn.value_and_grad(model, loss_fn)
    hist = []
    half = cfg.batch // 2
    for i in range(cfg.steps):
        t = np.concatenate([sample_tokens(cfg, half, rng, "uniform"),
                            sample_tokens(cfg, cfg.batch - half, rng, "balanced")])
        loss, g = vg(model, mx.array(t), mx.array(t.max(1)))
        opt.update(model, g)
        mx.eval(model.parameters(), opt.state, loss)
        if i % max(1, cfg.steps // 10) == 0 or i == cfg.steps - 1:
            hist.append((i, float(loss.item())))
            if progress is not None:
                progress(f"  toy step {i}/{cfg.steps} loss {hist[-1][1]:.5f}")
    return model, hist


# ---- 2. inputs and variables -----------------------------------------------------------------
def sample_tokens(cfg: ToyConfig, n: int, rng: np.random.Generator, kind: str) -> np.ndarray:
    """[n, n_ctx] int32 sequences, "uniform" or "balanced" (module docstring, step 2)."""
    V, K = cfg.d_vocab, cfg.n_ctx
    if kind == "uniform":
        return rng.integers(0, V, (n, K)).astype(np.int32)
    if kind != "balanced":
        raise StudyError(f"unknown sampling {kind!r}; use 'uniform' or 'balanced'")
    m = rng.integers(0, V, n)
    t = np.floor(rng.random((n, K)) * (m[:, None] + 1)).astype(np.int32)
    t[np.arange(n), rng.integers(0, K, n)] = m
    return t


def task_variables(tokens: np.ndarray, d_vocab: int) -> dict:
    """{"max", "query", "nonmax", "copies"} int arrays [n] (module docstring, step 2)."""
    t = np.asarray(tokens)
    mx_ = t.max(1)
    below = np.where(t < mx_[:, None], t, -1).max(1)
    return {"max": mx_, "query": t[:, -1], "nonmax": np.where(below < 0, d_vocab, below),
            "copies": (t == mx_[:, None]).sum(1)}


def run_toy(model: MaxKModel, tokens: np.ndarray, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(logits [n, d_vocab], final residual [n, d_model]) as float32 numpy."""
    lo, re = [], []
    for s in range(0, len(tokens), batch):
        a, b = model(mx.array(tokens[s:s + batch]))
        mx.eval(a, b)
        lo.append(np.array(a, np.float32))
        re.append(np.array(b, np.float32))
    return np.concatenate(lo), np.concatenate(re)


# ---- 3. exact statistics ----------------------------------------------------------------------
def eta2(a: np.ndarray, labels: np.ndarray, adjusted: bool = True) -> np.ndarray:
    """Correlation ratio of each column of a [N, m] (or [N]) against labels [N]; see step 3.

    Columns with zero variance give 0. ``adjusted`` subtracts the small-sample bias."""
    a = np.asarray(a, np.float64)
    one = a.ndim == 1
    a = a[:, None] if one else a
    lab = np.unique(np.asarray(labels), return_inverse=True)[1].reshape(-1)
    n, g = a.shape[0], int(lab.max()) + 1
    counts = np.bincount(lab, minlength=g).astype(np.float64)
    sums = np.zeros((g, a.shape[1]))
    np.add.at(sums, lab, a)
    mean = a.mean(0)
    between = (counts[:, None] * (sums / counts[:, None] - mean) ** 2).sum(0)
    total = ((a - mean) ** 2).sum(0)
    e = np.where(total > 0, between / np.where(total > 0, total, 1), 0.0)
    if adjusted and n > g:
        e = np.clip(1 - (1 - e) * (n - 1) / (n - g), 0.0, 1.0)
    return e[0] if one else e


def joint_labels(*labels: np.ndarray) -> np.ndarray:
    """One integer label per distinct tuple of the given label arrays."""
    return np.unique(np.stack([np.asarray(x) for x in labels], 1), axis=0, return_inverse=True)[1].reshape(-1)


def _entropy(labels: np.ndarray) -> float:
    p = np.bincount(np.unique(labels, return_inverse=True)[1].reshape(-1)) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray, given: np.ndarray | None = None) -> float:
    """Plug-in I(a; b) in bits, or I(a; b | given) (step 3)."""
    a, b = np.asarray(a), np.asarray(b)
    if len(a) != len(b) or len(a) == 0:
        raise StudyError("mutual_information needs two non-empty label arrays of one length")
    if given is None:
        return max(0.0, _entropy(a) + _entropy(b) - _entropy(joint_labels(a, b)))
    c = np.asarray(given)
    return max(0.0, _entropy(joint_labels(a, c)) + _entropy(joint_labels(b, c))
               - _entropy(joint_labels(a, b, c)) - _entropy(c))


def entropy(labels: np.ndarray) -> float:
    """Plug-in entropy in bits of discrete labels."""
    return _entropy(np.asarray(labels))


# ---- 4. matching --------------------------------------------------------------------------------
def unit_rows(w: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (zero rows stay zero)."""
    w = np.asarray(w, np.float64)
    n = np.linalg.norm(w, axis=1, keepdims=True)
    return w / np.where(n > 0, n, 1)


def match_parents(child: np.ndarray, parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(parent index [n_child], cosine [n_child]): each child row's nearest parent row."""
    c = unit_rows(child) @ unit_rows(parent).T
    idx = c.argmax(1)
    return idx, c[np.arange(len(idx)), idx]


# ---- 5. NMF -------------------------------------------------------------------------------------
def nmf(x: np.ndarray, rank: int, iters: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(W [n, rank], H [rank, d]) >= 0 minimising ||X - W H||_F (step 5); X must be >= 0."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.size == 0 or (x < 0).any() or not np.isfinite(x).all():
        raise StudyError("nmf needs a finite non-empty non-negative 2-D matrix")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise StudyError(f"nmf rank must be a positive integer, got {rank!r}")
    rng = np.random.default_rng(seed)
    scale = math.sqrt(max(x.mean(), 1e-12) / rank)
    w = rng.uniform(0.5, 1.5, (x.shape[0], rank)) * scale
    h = rng.uniform(0.5, 1.5, (rank, x.shape[1])) * scale
    eps = 1e-12
    for _ in range(iters):
        h *= (w.T @ x) / (w.T @ w @ h + eps)
        w *= (x @ h.T) / (w @ (h @ h.T) + eps)
    return w, h


def split_signs(d: np.ndarray) -> np.ndarray:
    """[n, 2 d]: (max(d, 0), max(-d, 0)), the usual non-negative encoding of signed rows."""
    d = np.asarray(d, np.float64)
    return np.concatenate([np.maximum(d, 0), np.maximum(-d, 0)], axis=1)


def random_rotations(d: np.ndarray, seed: int) -> np.ndarray:
    """Each row rotated by its own Haar-random orthogonal map (norms kept, shared structure lost)."""
    rng = np.random.default_rng(seed)
    d = np.asarray(d, np.float64)
    g = rng.standard_normal(d.shape)
    return unit_rows(g) * np.linalg.norm(d, axis=1, keepdims=True)


# ---- 6. penalised ReLU dictionaries ------------------------------------------------------------
class PenalisedReLU(ReLUDictionary):
    """A ReLU dictionary whose sparsity term is ``penalty(f * ||W_dec||)`` summed over latents."""

    arch = "relu"

    def __init__(self, d_in: int, width: int, penalty: str = "l1", scale: float = 1.0, **kw):
        super().__init__(d_in, width, penalty=penalty, scale=scale, **kw)

    def _check_hparams(self) -> None:
        if self.hparams["penalty"] not in ("l1", "cauchy"):
            raise StudyError(f"penalty must be 'l1' or 'cauchy', got {self.hparams['penalty']!r}")
        if not self.hparams["scale"] > 0:
            raise StudyError("the Cauchy scale must be > 0")

    def sparsity(self, f: mx.array, pre: mx.array) -> mx.array:
        u = f * self.decoder_norms()
        if self.hparams["penalty"] == "l1":
            return u.sum(-1).mean()
        s = self.hparams["scale"]
        return mx.log1p((u / s) ** 2).sum(-1).mean()


def train_penalised(x: np.ndarray, width: int, penalty: str, coef: float, *, steps: int,
                    batch: int = 1024, lr: float = 1e-3, scale: float = 1.0, seed: int = 0,
                    warmup_frac: float = 0.05, decay_frac: float = 0.2) -> tuple[PenalisedReLU, float]:
    """(dictionary in raw units, normalisation scale s) -- see the module docstring, step 6."""
    x = np.asarray(x, np.float32)
    s_norm = math.sqrt(x.shape[1]) / float(np.linalg.norm(x, axis=1).mean())
    xn = x * s_norm
    d = PenalisedReLU(x.shape[1], width, penalty=penalty, scale=scale, in_site=SITE)
    mx.random.seed(seed)
    d.init_weights(mx.random.key(seed), mx.array(xn.mean(0)))
    warm, n_decay = max(1, int(steps * warmup_frac)), max(1, int(steps * decay_frac))
    opt = optim.Adam(lr)
    rng = np.random.default_rng([seed, 2])

    def loss_fn(m, xb, c):
        pre = m.train_pre_acts(xb)
        f = mx.maximum(pre, 0)
        y = m.decode(f)
        return ((xb - y) ** 2).sum(-1).mean() + c * m.sparsity(f, pre)

    vg = nn.value_and_grad(d, loss_fn)
    for i in range(steps):
        xb = mx.array(xn[rng.integers(0, len(xn), batch)])
        opt.learning_rate = lr * min(1.0, (i + 1) / warm) * min(1.0, (steps - i) / n_decay)
        c = coef * min(1.0, (i + 1) / warm)
        _, g = vg(d, xb, mx.array(c, mx.float32))
        opt.update(d, g)
        mx.eval(d.parameters(), opt.state)
    return d.folded(s_norm, s_norm), s_norm
