"""Sparse-pair training loss for composed dictionaries (``decoder="sparse"``).

The dense loss touches every (token, latent) entry three times after the encoder GEMM
(decoder GEMM forward, two GEMMs backward). When f is zero exactly where a latent is
inactive and nothing in the loss or its gradient depends on inactive entries, the same
loss and gradients come from the active pairs only:
  1. pre = encoder(x) (dense GEMM; no gradient for an affine encoder, whose weight
     gradients come from the pairs, step 3); f = activation(pre) elementwise.
  2. Pairs: relu / prolu: nnz = #(f > 0) is read on the host (one sync per step);
     capacity = the smallest ceil(1.25^j) >= nnz (few shapes), and the pairs are
     the ``capacity`` largest entries of f over the batch (``batch_topk_pairs``): every
     non-zero is among them and the extra zeros contribute nothing to the value or to
     any gradient, so the result is exact. topk: the k per token (no sync).
     With nnz above ``MAX_DENSITY`` of the batch (early training: half the ReLU latents
     fire) the pair path would be slower; the dense loss (same value) runs instead.
  3. pre_p = ``pair_encode`` (its VJP yields W_enc / b_enc gradients from the pairs);
     the deep encoder adds a second ``pair_encode`` of its last hidden layer through
     W_out, whose x-gradient ([batch, hidden]) flows densely into the small MLP, so no
     [batch, width] GEMM runs backward there either; vals = the activation on the pairs
     (MLX differentiates it on [P] arrays); y^ = ``pair_decode`` + b_dec (+ x W_skip).
  4. Penalty rho(|vals| ||W_dec,lat||) summed over the pairs / tokens (rho(0) = 0 for
     every supported penalty, and its gradient at an inactive entry is 0 because the
     activation's derivative there is 0); l0 and ``fired`` from the pairs.
The host sync of step 2 cannot run inside ``mx.compile``: a dictionary on this path
reports ``needs_eager_step`` and the trainer runs its step uncompiled.
"""

from __future__ import annotations

import math

import mlx.core as mx

from sae.errors import ConfigError
from sae.ops import batch_topk_pairs, pair_decode, pair_encode, topk_pairs
from sae.parts.base import zero

MAX_DENSITY = 1 / 160
"""Above this fraction of active (token, latent) entries a step uses the dense loss: at
d=512, m=8192, batch 2048 the pair step beat the dense one ~2x at L0=32 (1/256) and lost
~2x at L0=128 (1/64); linear in the pairs, the crossover is near 1/128 (parts_speed)."""

# Supported parts (by registered name). Why these: the activation must be 0 with zero
# derivative wherever it is inactive (relu; topk; prolu with the "relu" bias gradient,
# 1[gate]); JumpReLU's and prolu-"ste"'s rectangle kernels and l0_ste give gradients to
# inactive entries near the threshold, gated's aux loss and penalty read ReLU(pi_gate)
# everywhere, matryoshka needs prefix sums of a dense f, ghost_grads gives every dead
# latent a gradient, batchtopk's class (sae.arch) has its own pair path.
_ENCODERS = ("linear", "deep")
_ACTIVATIONS = ("relu", "prolu", "topk")
_PENALTIES = ("none", "l1", "sqrt_l1", "lp", "tanh", "cauchy")
_DECODERS = ("linear",)
_DEAD = ("none", "resample", "auxk")


def unsupported(recipe) -> str | None:
    """Why ``recipe`` (a ``Recipe``) cannot use the sparse pair loss, or None if it can."""
    for kind, ok in (("encoder", _ENCODERS), ("activation", _ACTIVATIONS),
                     ("penalty", _PENALTIES), ("decoder", _DECODERS), ("dead", _DEAD)):
        name = getattr(recipe, kind)
        if name not in ok:
            return f"{kind} {name!r} (the sparse path supports {kind}s {', '.join(ok)})"
    if recipe.activation == "prolu" and recipe.params_for("activation").get("grad", "relu") != "relu":
        return "prolu with grad='ste' (its kernel gives inactive entries a bias gradient)"
    return None


def capacity(nnz: int, total: int) -> int:
    """Smallest value of the grid ceil(1.25^j) that is >= nnz (at least 1, at most total)."""
    if nnz <= 1:
        return 1
    j = max(0, math.floor(math.log(nnz, 1.25)) - 1)  # a step below, against rounding
    while math.ceil(1.25 ** j - 1e-9) < nnz:
        j += 1
    return min(total, math.ceil(1.25 ** j - 1e-9))


def _pair_vals(d, pre_p, lat):
    act = d.parts.activation
    if act.name == "prolu":
        from sae.parts.activations import prolu

        b = d.b_enc[lat]
        return prolu(pre_p, b, act.grad, act.bandwidth)
    return mx.maximum(pre_p, 0)


def _pair_penalty(d, vals, lat, n_tok: int, ctx):
    pen = d.parts.penalty
    if pen.name == "none":
        return zero()
    u = mx.abs(vals)
    if pen.weighted:
        u = u * d.decoder_norms()[lat]
    if pen.name == "l1":
        return u.sum() / n_tok
    return pen.per_entry(d, u, ctx).sum() / n_tok


def _deep_parts(d, x):
    """(h = encoder input, last hidden layer, dense pre) of the deep encoder, differentiable:
    pre = h W_enc + b_enc + hid W_out (``sae.parts.encoders.DeepEncoder``)."""
    h = x - d.b_dec if d.apply_b_dec_to_input else x
    hid = d.parts.encoder.hidden_out(d, h)
    return h, hid, mx.addmm(mx.addmm(d.b_enc, h, d.enc_weight()), hid, d.W_out)


def sparse_loss(d, x: mx.array, y: mx.array, ctx, max_density: float | None = None):
    """(loss, stats) of composed dictionary ``d`` on the active pairs (module docstring);
    equal to ``d.dense_loss`` (which it calls above ``max_density``)."""
    act = d.parts.activation
    affine = d.parts.encoder.linear_form(d) is not None
    if affine:
        b = d.train_enc_bias()
        pre = d.train_pre_acts(x, b)  # differentiable only for auxk; the pairs read a copy
    else:
        h, hid, pre = _deep_parts(d, x)
    pre_sg = mx.stop_gradient(pre)
    n, m = pre.shape
    if act.name == "topk":
        tok, lat, pre_p = topk_pairs(pre_sg, act.k)
        lat, pre_p = lat.reshape(-1), pre_p.reshape(-1)
        stats = {}
    else:
        f, stats = act.train(d, pre_sg)
        f = mx.stop_gradient(f)
        nnz = int((f > 0).sum().item())  # the one host sync (module docstring, 2)
        if nnz > (MAX_DENSITY if max_density is None else max_density) * n * m:
            return d.dense_loss(x, y, ctx)
        tok, lat, _ = batch_topk_pairs(f, capacity(nnz, n * m))
        pre_p = pre_sg.reshape(-1)[tok * m + lat]
    if affine:
        pre_p = pair_encode(x, d.enc_weight(), b, tok, lat, pre_p)
    else:  # linear part + MLP output layer, both from the pairs (value: pre_p + 0)
        W = d.enc_weight()  # linear part with b_dec folded into the bias, as affine ones:
        b = d.b_enc - d.b_dec @ W if d.apply_b_dec_to_input else d.b_enc  # x stays data
        pre_p = (pair_encode(x, W, b, tok, lat, pre_p)
                 + pair_encode(hid, d.W_out, mx.zeros((m,), pre.dtype), tok, lat,
                               mx.zeros_like(pre_p)))
    vals = _pair_vals(d, pre_p, lat)
    y_hat = pair_decode(x, d.W_dec, tok, lat, vals) + d.b_dec
    if d.W_skip is not None:
        y_hat = y_hat + x @ d.W_skip
    mse = d.recon_loss(y, y_hat)
    sp = _pair_penalty(d, vals, lat, n, ctx)
    aux = d.aux_loss(x, y, pre, None, y_hat, ctx)  # supported parts: 0, or auxk on pre
    on = mx.stop_gradient(vals > 0).astype(mx.float32)
    hits = mx.zeros((m,), mx.float32).at[lat].add(on)
    stats = dict(stats, mse=mse, sparsity=sp, aux=aux, l0=on.sum() / n, fired=hits > 0)
    return mse + ctx.sparsity_coef * sp + aux, stats


def check_sparse(recipe) -> None:
    """Raise ``ConfigError`` (one line) when ``recipe`` cannot use the sparse pair loss."""
    why = unsupported(recipe)
    if why is not None:
        raise ConfigError(f"decoder='sparse' is not available for recipe {recipe.name!r}: {why}; "
                          "use decoder='dense' or 'auto'")


__all__ = ["MAX_DENSITY", "capacity", "check_sparse", "sparse_loss", "unsupported"]
