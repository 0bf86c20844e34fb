"""One dictionary under training: construction, the step function, resampling.

Step (all lazy; no host sync):
  1. (loss, stats), grads = value_and_grad(dictionary.loss)(x, y, ctx)
  2. clip grads to global norm ``grad_clip``; Adam update with the scheduled LR
  3. dictionary.update_stats(stats) (BatchTopK threshold EMA)
  4. tokens_since_fired <- 0 where a latent fired, else + batch tokens
  5. metric sums accumulate on device; the host reads them every ``log_every`` steps.
With a process group (data parallel, see ``sae.train.distributed``) step 1's gradients
are averaged over ranks before step 2, and the statistics of steps 3-5 are synced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np
from mlx import nn

from sae.arch import CrossLayerTranscoder, architecture
from sae.dictionary import LossContext, _flat, geometric_median
from sae.errors import ShapeMismatchError
from sae.train import adam
from sae.train.config import TrainConfig
from sae.train.distributed import mean_grads, sync_stats

METRICS = ("loss", "mse", "fvu", "l0", "sparsity", "aux", "grad_norm")
_TSF_CAP = 2 ** 30


@dataclass
class Trainee:
    """Mutable training state of one dictionary (normalised units)."""

    cfg: TrainConfig
    name: str
    dictionary: Any
    in_sites: tuple
    out_sites: tuple
    opt: dict
    """Adam moments {"m": {...}, "v": {...}} and "tsf": tokens since each latent
    last fired [n_latents] (int32, capped); one dict so compile/checkpoint see it all."""
    sums: dict = field(default_factory=dict)
    _step_fn: Any = None

    @property
    def tsf(self) -> mx.array:
        return self.opt["tsf"]

    @tsf.setter
    def tsf(self, value: mx.array) -> None:
        self.opt["tsf"] = value

    @property
    def is_clt(self) -> bool:
        return isinstance(self.dictionary, CrossLayerTranscoder)

    def xy(self, batch: dict):
        """(inputs, targets) for this dictionary from a normalised batch."""
        if self.is_clt:
            return [batch[s] for s in self.in_sites], [batch[s] for s in self.out_sites]
        return batch[self.in_sites[0]], batch[self.out_sites[0]]


def build_trainees(cfg: TrainConfig, dims: dict, init_batch: dict, key: mx.array) -> list:
    """Dictionaries of one config, initialised from the (normalised) first batch."""
    ins, outs = cfg.sites, cfg.target_sites()
    for s in ins + outs:
        if s not in dims:
            raise ShapeMismatchError(f"site {s} is not in the activation source "
                                     f"(has {', '.join(map(str, dims))})")
    out = []
    if cfg.kind == "clt":
        d_in, d_out = dims[ins[0]], dims[outs[0]]
        if any(dims[s] != d_in for s in ins) or any(dims[s] != d_out for s in outs):
            raise ShapeMismatchError("all CLT input (output) sites must share one width")
        m = cfg.width_for(d_in)
        d = CrossLayerTranscoder(d_in, m, len(ins), d_out=d_out, in_sites=ins, out_sites=outs,
                                 activation=cfg.arch, k=cfg.k, bandwidth=cfg.bandwidth,
                                 threshold_init=cfg.threshold_init, threshold_ema=cfg.threshold_ema,
                                 k_aux=cfg.k_aux, aux_coef=cfg.aux_coef)
        b = np.stack([init_batch[s].mean(0) for s in outs]) if cfg.b_dec_init != "zeros" else None
        d.init_weights(key, None if b is None else mx.array(b))
        out.append(_trainee(cfg, cfg.label, d, ins, outs))
        return out
    cls = architecture(cfg.arch)
    for i, (si, so) in enumerate(zip(ins, outs)):
        m = cfg.width_for(dims[si])
        d = cls(dims[si], m, d_out=dims[so], in_site=si, out_site=so,
                skip=cfg.kind == "skip_transcoder",
                apply_b_dec_to_input=cfg.kind == "sae", **cfg.dict_kwargs(m))
        y0 = init_batch[so]
        b = None
        if cfg.b_dec_init == "geometric_median":
            b = mx.array(geometric_median(y0[:4096]).astype(np.float32))
        elif cfg.b_dec_init == "mean":
            b = mx.array(y0.mean(0))
        d.init_weights(mx.random.split(key, len(ins))[i], b)
        name = f"{cfg.label}/{si}" if cfg.kind == "sae" else f"{cfg.label}/{si}->{so}"
        out.append(_trainee(cfg, name, d, (si,), (so,)))
    return out


def _n_latents(d) -> int:
    return d.width * (d.n_layers if isinstance(d, CrossLayerTranscoder) else 1)


def _trainee(cfg, name, d, ins, outs) -> Trainee:
    opt = adam.init_state(_trainable(d))
    opt["tsf"] = mx.zeros((_n_latents(d),), dtype=mx.int32)
    return Trainee(cfg, name, d, tuple(ins), tuple(outs), opt)


def _trainable(d) -> dict:
    return _flat(d.trainable_parameters())


def make_step(t: Trainee, group=None):
    """The per-step update of one trainee (optionally ``mx.compile``d); ``group``: data parallel."""
    d, cfg = t.dictionary, t.cfg

    def loss_fn(x, y, coef, dead, use_aux):
        return d.loss(x, y, LossContext(coef, dead, use_aux))

    vg = nn.value_and_grad(d, loss_fn)
    fuse = cfg.fuse_elementwise and not cfg.compile and adam.can_fuse()

    def step(x, y, lr, coef, tstep, use_aux):
        dead = t.tsf >= cfg.dead_tokens
        (loss, stats), grads = vg(x, y, coef, dead, use_aux)
        grads, gnorm = adam.clip_by_global_norm(mean_grads(_flat(grads), group), cfg.grad_clip)
        params = _trainable(d)
        new = adam.adam_update(params, grads, t.opt, lr, tstep, cfg.adam_betas, cfg.adam_eps,
                               fused=fuse)
        d.update(_unflat(new))
        yv = y if isinstance(y, list) else [y]
        var = sum(((a - a.mean(0)) ** 2).sum(-1).mean() for a in yv)
        # ranks must agree on thresholds and dead latents: average / OR the statistics
        stats = sync_stats(dict(stats, loss=loss, var=var), group)
        loss, var = stats["loss"], stats["var"]
        d.update_stats(stats)
        n = (x[0].shape[0] if isinstance(x, list) else x.shape[0]) * (group.size() if group else 1)
        t.tsf = mx.where(stats["fired"], 0, mx.minimum(t.tsf + n, _TSF_CAP))
        return {"loss": loss, "mse": stats["mse"], "fvu": stats["mse"] / var,
                "l0": stats["l0"], "sparsity": stats["sparsity"], "aux": stats["aux"],
                "grad_norm": gnorm}

    if not cfg.compile or not adam.can_fuse():  # CPU compile JIT-builds with g++; none: eager
        return step
    state = [d.state, t.opt]
    return mx.compile(step, inputs=state, outputs=state)


def _unflat(flat: dict) -> dict:
    tree: dict = {}
    for k, v in flat.items():
        parts = k.split(".")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    # mlx stores module lists as lists: convert {"0":..,"1":..} dicts back.
    return _lists(tree)


def _lists(node):
    if isinstance(node, dict):
        node = {k: _lists(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[str(i)] for i in range(len(node))]
    return node


def resample_dead(t: Trainee, x: mx.array, y: mx.array, rng: np.random.Generator) -> int:
    """Re-initialise dead latents toward badly reconstructed inputs (host side, rare).

    1. dead = latents silent for ``dead_tokens``; 2. pick tokens with probability
    proportional to their squared error; 3. decoder row = that residual scaled to
    the mean alive decoder norm, encoder column = the input direction scaled to
    0.2 x the mean alive encoder norm, b_enc = 0; Adam moments of those entries reset.
    """
    d = t.dictionary
    dead = np.nonzero(np.array(t.tsf) >= t.cfg.dead_tokens)[0]
    if dead.size == 0 or t.is_clt:
        return 0
    err = np.array(y - d(x))
    p = (err ** 2).sum(1) + 1e-12
    rows = rng.choice(err.shape[0], size=dead.size, p=p / p.sum())
    xin = np.array(x)[rows]
    W_dec, W_enc = np.array(d.W_dec), np.array(d.W_enc)
    alive = np.setdiff1d(np.arange(d.width), dead)
    dn = np.linalg.norm(W_dec[alive], axis=1).mean() if alive.size else d.dec_init_norm
    en = np.linalg.norm(W_enc[:, alive], axis=0).mean() if alive.size else d.dec_init_norm
    r = err[rows] / np.maximum(np.linalg.norm(err[rows], axis=1, keepdims=True), 1e-12)
    u = xin / np.maximum(np.linalg.norm(xin, axis=1, keepdims=True), 1e-12)
    W_dec[dead], W_enc[:, dead] = r * dn, (u * 0.2 * en).T
    b_enc = np.array(d.b_enc)
    b_enc[dead] = 0
    d.W_dec, d.W_enc, d.b_enc = mx.array(W_dec), mx.array(W_enc), mx.array(b_enc)
    for mom in ("m", "v"):
        for name, axis in (("W_dec", 0), ("W_enc", 1), ("b_enc", 0)):
            a = np.array(t.opt[mom][name])
            if axis == 0:
                a[dead] = 0
            else:
                a[:, dead] = 0
            t.opt[mom][name] = mx.array(a)
    tsf = np.array(t.tsf)
    tsf[dead] = 0
    t.tsf = mx.array(tsf)
    return int(dead.size)
