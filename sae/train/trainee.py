"""One dictionary under training: construction, the step function, resampling.

Step (all lazy; no host sync):
  1. (loss, stats), grads = value_and_grad(dictionary.loss)(x, y, ctx)
  2. clip grads to global norm ``grad_clip``; Adam update with the scheduled LR
  3. dictionary.post_update() (e.g. unit-norm decoder rows), then
     dictionary.update_stats(stats) (BatchTopK threshold EMA)
  4. tokens_since_fired <- 0 where a latent fired, else + batch tokens
  5. metric sums accumulate on device; the host reads them every ``log_every`` steps.
With a process group (data parallel, see ``sae.train.distributed``) step 1's gradients
are averaged over ranks before step 2, and the statistics of steps 3-5 are synced.
With ``streams`` (the trainer's ``split_streams``) step 1 runs on row blocks of the
batch, one per CPU stream, and combines them as one batch (``split_value_and_grad``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np
from mlx import nn
from mlx.utils import tree_map

from sae.arch import Crosscoder, CrossLayerTranscoder, architecture
from sae.dictionary import LossContext, _flat, geometric_median
from sae.errors import ConfigError, ShapeMismatchError
from sae.parts.dead import resample_dead as _resample
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
        """Multi-site (a CLT or a crosscoder): lists of site arrays, per-site scales."""
        return isinstance(self.dictionary, (CrossLayerTranscoder, Crosscoder))

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
    if cfg.kind == "crosscoder":
        return [_crosscoder_trainee(cfg, dims, init_batch, key)]
    cls = architecture(cfg.arch)
    for i, (si, so) in enumerate(zip(ins, outs)):
        m = cfg.width_for(dims[si])
        d = cls(dims[si], m, d_out=dims[so], in_site=si, out_site=so,
                skip=cfg.kind == "skip_transcoder",
                apply_b_dec_to_input=cfg.kind == "sae", **cfg.dict_kwargs(m))
        y0 = init_batch[so]
        b, how = None, getattr(d, "b_dec_init", None) or cfg.b_dec_init  # a recipe may decide
        if how == "geometric_median":
            b = mx.array(geometric_median(y0[:4096]).astype(np.float32))
        elif how == "mean":
            b = mx.array(y0.mean(0))
        d.init_weights(mx.random.split(key, len(ins))[i], b)
        name = f"{cfg.label}/{si}" if cfg.kind == "sae" else f"{cfg.label}/{si}->{so}"
        out.append(_trainee(cfg, name, d, (si,), (so,)))
    return out


def _crosscoder_trainee(cfg: TrainConfig, dims: dict, init_batch: dict, key) -> Trainee:
    """One crosscoder over all ``cfg.sites``; b_dec per site as ``cfg.b_dec_init`` says."""
    sites = cfg.sites
    if len({dims[s] for s in sites}) != 1:
        raise ConfigError("crosscoder sites must share one width, got "
                          + ", ".join(f"{s}={dims[s]}" for s in sites)
                          + "; choose sites of the same kind (e.g. L*.resid_post)")
    m = cfg.width_for(dims[sites[0]])
    d = Crosscoder(dims[sites[0]], m, len(sites), sites=sites, **cfg.dict_kwargs(m))
    b = None
    if cfg.b_dec_init == "geometric_median":
        b = np.stack([geometric_median(init_batch[s][:4096]) for s in sites]).astype(np.float32)
    elif cfg.b_dec_init == "mean":
        b = np.stack([np.asarray(init_batch[s]).mean(0) for s in sites]).astype(np.float32)
    d.init_weights(key, None if b is None else mx.array(b))
    return _trainee(cfg, cfg.label, d, sites, sites)


def _n_latents(d) -> int:
    return d.width * (d.n_layers if isinstance(d, CrossLayerTranscoder) else 1)


def _trainee(cfg, name, d, ins, outs) -> Trainee:
    opt = adam.init_state(_trainable(d))
    opt["tsf"] = mx.zeros((_n_latents(d),), dtype=mx.int32)
    return Trainee(cfg, name, d, tuple(ins), tuple(outs), opt)


def _trainable(d) -> dict:
    return _flat(d.trainable_parameters())


def make_step(t: Trainee, group=None, streams=None):
    """The per-step update of one trainee (optionally ``mx.compile``d); ``group``: data
    parallel; ``streams``: CPU streams to split the batch over (``split_value_and_grad``)."""
    d, cfg = t.dictionary, t.cfg

    def loss_fn(x, y, coef, dead, use_aux, progress):
        return d.loss(x, y, LossContext(coef, dead, use_aux, progress))

    vg = nn.value_and_grad(d, loss_fn)
    if streams:
        vg = split_value_and_grad(vg, streams)
    eager = getattr(d, "needs_eager_step", False)  # sparse pair loss: a host sync per step
    fuse = cfg.fuse_elementwise and (eager or not cfg.compile) and adam.can_fuse()

    post_update = getattr(d, "post_update", None)  # CLTs / crosscoders have none

    def step(x, y, lr, coef, tstep, use_aux, progress=0.0):
        dead = t.tsf >= cfg.dead_tokens
        (loss, stats), grads = vg(x, y, coef, dead, use_aux, progress)
        grads, gnorm = adam.clip_by_global_norm(mean_grads(_flat(grads), group), cfg.grad_clip)
        params = _trainable(d)
        new = adam.adam_update(params, grads, t.opt, lr, tstep, cfg.adam_betas, cfg.adam_eps,
                               fused=fuse)
        d.update(_unflat(new))
        if post_update is not None:
            post_update()  # projections such as unit-norm decoder rows (sae.parts.decoders)
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

    # CPU compile JIT-builds with g++; without one (or on the host-synced pair path): eager
    if eager or not cfg.compile or not adam.can_fuse():
        return step
    state = [d.state, t.opt]
    return mx.compile(step, inputs=state, outputs=state)


def split_value_and_grad(vg, streams):
    """``vg`` on row blocks of the batch, one per CPU stream, combined as one batch.

    For a row-separable loss (``sae.parts.separable``; the trainer checks) the batch loss
    and gradients are the size-weighted means of the blocks' (exact up to float
    rounding), as in data-parallel training over ranks; statistics are weighted means too,
    and ``fired`` masks OR-ed. Why: MLX's elementwise CPU kernels run on one thread, and
    over [batch, width] they are a third or more of a dense step; on two streams (with BLAS
    single-threaded in each, which the trainer arranges) they use both cores."""

    def split(x, y, coef, dead, use_aux, progress):
        n = x.shape[0]
        bounds = [n * i // len(streams) for i in range(len(streams) + 1)]
        outs = []
        for s, e, st in zip(bounds[:-1], bounds[1:], streams):
            with mx.stream(st):
                outs.append((e - s, vg(x[s:e], y[s:e], coef, dead, use_aux, progress)))
        w = [mx.array(k / n, mx.float32) for k, _ in outs]
        loss = sum(wi * o[0][0] for wi, (_, o) in zip(w, outs))
        stats = {}
        for key, v in outs[0][1][0][1].items():
            vals = [o[0][1][key] for _, o in outs]
            if v.dtype == mx.bool_:
                stats[key] = functools.reduce(mx.logical_or, vals)
            else:
                stats[key] = sum(wi * a for wi, a in zip(w, vals)).astype(v.dtype)
        grads = tree_map(lambda *g: sum(wi * gi for wi, gi in zip(w, g)), *[o[1] for _, o in outs])
        return (loss, stats), grads

    return split


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

    The algorithm lives in ``sae.parts.dead.resample_dead`` (the ``resample`` part); this
    applies it to a trainee (dead = silent for ``dead_tokens``; Adam moments and dead
    counters of the resampled latents reset). Multi-site dictionaries: not resampled."""
    if t.is_clt:
        return 0
    scale = getattr(getattr(getattr(t.dictionary, "parts", None), "dead", None), "enc_scale", 0.2)
    n, t.tsf = _resample(t.dictionary, t.opt, t.tsf, t.cfg.dead_tokens, x, y, rng, scale)
    return n


def resample_every(t: Trainee) -> int | None:
    """Steps between resamplings: the config's ``resample_every``, else the recipe's."""
    return t.cfg.resample_every or getattr(t.dictionary, "resample_every", None)
