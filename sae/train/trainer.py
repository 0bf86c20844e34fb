"""The training loop: several dictionaries from one shared activation stream.

1. Draw the first batch; per site compute the normalisation scale
   s = sqrt(d) / mean ||x|| (B2) and initialise every dictionary from it
   (b_dec = geometric median / mean, W_enc = W_dec^T).
2. With ``resume``: read the checkpoint's metadata before any data and refuse a run whose
   configs or ``run_info`` differ from the recorded ones (``ResumeMismatchError`` naming
   each field, old -> new); after the first batch refuse other normalisation scales (other
   data); then restore the state and skip the batches it already consumed (sources are
   deterministic given the seed, so resume == uninterrupted run). The metrics log keeps
   its rows up to the checkpoint's step (rows logged after it are written again).
3. Each step: check the batch is finite on the host (raise ``NonFiniteError`` with
   the step, before any update, keeping the last checkpoint), scale it, run every
   trainee's step (LR: warm-up then linear decay over the last ``decay_frac``;
   sparsity coefficient warm-up), then ``mx.eval`` the new state (no host reads). On
   CPU, when every dictionary's loss is row-separable (``split_streams``), each step runs
   its two half-batches on two CPU streams with the BLAS at one thread per stream
   (restored after each step), and combines them as one batch.
4. Every ``log_every`` steps read the metric sums, log a JSONL row, call the
   progress callback, switch AuxK on when latents are dead (checked also every
   dead_tokens // batch_tokens steps when that is shorter), resample if asked.
   The logged ``dead_frac`` follows ``sae.evaluate.dead_fraction``: the fraction of
   latents that fired on none of the last ``dead_window`` = min(dead_tokens, tokens
   seen) tokens (so a short run reports latents silent since the start; AuxK and
   resampling still wait for the full ``dead_tokens``).
5. Every ``checkpoint_every`` steps write an atomic checkpoint; after the last step (before
   its checkpoint) BatchTopK-style inference thresholds are set from the final weights on
   the last batch (``_calibrate_thresholds``).
6. Return the dictionaries folded back to raw units.
Data parallel (``distributed``; launched with ``mlx.launch``): each rank reads its
shard, gradients are averaged with ``all_sum``, rank 0 writes checkpoints and logs;
see ``sae.train.distributed`` for the exact protocol.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from attribution import set_blas_threads
from attribution.allocator import keep_freed_memory
from sae.data.source import ArraySource
from sae.errors import ConfigError, EmptyDatasetError, NonFiniteError
from sae.evaluate import dead_fraction
from sae.ops import cpu_streams
from sae.train.checkpoint import (
    check_resume,
    check_scales,
    config_record,
    load_checkpoint,
    read_state,
    save_checkpoint,
)
from sae.train.config import TrainConfig
from sae.train.distributed import (
    agree,
    gather_rows,
    local_batch_tokens,
    resolve_group,
    shard_source,
)
from sae.parts.schedules import lr_factor, sparsity_factor
from sae.train.trainee import (
    METRICS,
    Trainee,
    build_trainees,
    make_step,
    resample_dead,
    resample_every,
)


@dataclass(frozen=True)
class TrainProgress:
    """What the progress callback receives every ``log_every`` steps."""

    step: int
    """Steps completed."""
    total_steps: int
    """Steps in the run."""
    tokens: int
    """Tokens consumed."""
    metrics: dict
    """{dictionary name: {metric: mean over the interval, plus dead_frac}}."""


@dataclass
class TrainResult:
    """Trained dictionaries (raw units) and their history."""

    dictionaries: list
    """Dictionaries in config order, then site order; folded to raw units."""
    names: list
    """Name of each dictionary ("<label>/<site>")."""
    history: list
    """Logged rows (dicts with step, tokens, name and the metrics)."""
    scales: dict
    """Normalisation scale per site (x_normalised = scale * x)."""
    steps: int
    """Steps run."""

    def by_name(self) -> dict:
        """{name: dictionary}."""
        return dict(zip(self.names, self.dictionaries))


_lr_factor = lr_factor  # the schedule lives in sae.parts.schedules


def _scales(batch: dict, normalize: bool) -> dict:
    if not normalize:
        return {s: 1.0 for s in batch}
    out = {}
    for s, a in batch.items():
        mean_norm = float(np.linalg.norm(a, axis=1).mean())
        out[s] = math.sqrt(a.shape[1]) / mean_norm if mean_norm > 0 else 1.0
    return out


def train(source, configs, model_configs=None, *, callback: Callable | None = None,
          log_path=None, checkpoint_dir=None, checkpoint_every: int | None = None,
          resume: bool = False, distributed=None, run_info: dict | None = None,
          **harvest_kw) -> TrainResult:
    """Train every dictionary of ``configs`` (one TrainConfig or a sequence) on ``source``.

    ``source`` is an ActivationSource or a {Site: [N, d]} mapping. The form
    ``train(model, texts, configs, ...)`` harvests from a model instead (see
    ``train_on_model``; ``harvest_kw`` go there). All configs share batches, so they
    must agree on batch_tokens, total_tokens, seed and normalize.
    ``log_path`` gets the logged metric rows: JSON lines, or CSV when it ends in ``.csv``.
    ``callback(TrainProgress)`` may raise to stop the run; with ``checkpoint_dir``
    and ``resume=True`` a later call continues it, bit-identically (without a checkpoint
    there it starts from scratch). ``run_info``: JSON-able facts outside the configs that
    decide the data (model, corpus, ...), stored in the checkpoint; a resume with other
    configs or run_info raises ``ResumeMismatchError`` before reading any data.
    ``distributed``: None trains data-parallel when ``mx.distributed.init()`` finds more
    than one process (True requires it, False never, or pass a Group); every rank makes
    the same call; the callback runs on every rank with metrics averaged over ranks and must
    decide alike everywhere (a stop raised on one rank only leaves the others waiting).
    """
    run_kw = dict(callback=callback, log_path=log_path, checkpoint_dir=checkpoint_dir,
                  checkpoint_every=checkpoint_every, resume=resume, distributed=distributed,
                  run_info=run_info)
    if model_configs is not None:
        from sae.train.from_model import train_on_model
        return train_on_model(source, configs, model_configs, **harvest_kw, **run_kw)
    if harvest_kw:
        raise ConfigError(f"unexpected arguments {sorted(harvest_kw)} (only for model sources)")
    if isinstance(source, Mapping):
        source = ArraySource(source)
    keep_freed_memory()  # big per-step temporaries reuse heap pages (attribution.allocator)
    cfgs = [configs] if isinstance(configs, TrainConfig) else list(configs)
    if not cfgs:
        raise ConfigError("no TrainConfig given")
    c0 = cfgs[0]
    for c in cfgs[1:]:
        if (c.batch_tokens, c.total_tokens, c.seed, c.normalize) != \
                (c0.batch_tokens, c0.total_tokens, c0.seed, c0.normalize):
            raise ConfigError("configs trained together must share batch_tokens, "
                              "total_tokens, seed and normalize")
    for c in cfgs:
        _check_sizes(c, source.dims)
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or
                                         not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ConfigError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    state = read_state(checkpoint_dir) if resume and checkpoint_dir is not None else None
    if state is not None:  # before any data is read: a changed config fails fast
        check_resume(checkpoint_dir, state, cfgs, run_info)
    group = resolve_group(distributed)
    local_tokens = local_batch_tokens(c0.batch_tokens, group)
    if group is not None:
        source = shard_source(source, group.rank(), group.size())
    batches = source.batches(local_tokens, c0.seed)
    first = _next_batch(batches, group, 0, what="yielded no batch")
    init = gather_rows(first, group)  # one global first batch: same scales/init on every rank
    scales = _scales(init, c0.normalize)
    norm_first = {s: a * scales[s] for s, a in init.items()}
    trainees: list[Trainee] = []
    for c in cfgs:  # the init key depends on the config's seed only, so sweeps == solo runs
        trainees += build_trainees(c, source.dims, norm_first, mx.random.key(c.seed))
    start, use_aux = 0, [False] * len(trainees)
    if state is not None:
        check_scales(checkpoint_dir, state, scales)
        state = load_checkpoint(checkpoint_dir, trainees)
        start, use_aux = int(state["step"]), list(state.get("use_aux", use_aux))
    extra = {"configs": [config_record(c) for c in cfgs], "run": run_info}
    history = _run(trainees, first, batches, scales, start, use_aux, c0, callback, log_path,
                   checkpoint_dir, checkpoint_every, group, extra)
    dicts = [_fold(t, scales) for t in trainees]
    return TrainResult(dicts, [t.name for t in trainees], history, scales, c0.steps)


def _check_sizes(c: TrainConfig, dims: dict) -> None:
    """MLX arrays must stay below 2^31 elements (DESIGN A2): [batch, latents] and W_enc."""
    for s in c.sites:
        if s not in dims:
            continue
        m = c.width_for(dims[s]) * (len(c.sites) if c.kind == "clt" else 1)
        d_in = dims[s] * (len(c.sites) if c.kind == "crosscoder" else 1)  # W_enc as [L*d, m]
        for what, n in (("batch_tokens x width", c.batch_tokens * m), ("d_in x width", d_in * m)):
            if n >= 2 ** 31:
                raise ConfigError(f"{what} = {n} elements reaches MLX's 2^31 array limit; "
                                  "lower batch_tokens or width (micro-batching is not implemented)")


def _fold(t: Trainee, scales: dict):
    if t.is_clt:
        return t.dictionary.folded([scales[s] for s in t.in_sites], [scales[s] for s in t.out_sites])
    return t.dictionary.folded(scales[t.in_sites[0]], scales[t.out_sites[0]])


def _next_batch(it, group, step: int, what: str = "ran out"):
    """The next batch, checked finite; with a group every rank raises if any rank must."""
    raw, err = None, None
    try:
        raw = next(it)
    except StopIteration:
        pass
    except Exception as e:
        if group is None:
            raise
        err = e
    bad = next((s for s, a in (raw or {}).items() if not np.isfinite(a).all()), None)
    failed, gone, nonfinite = agree([err is not None, raw is None, bad is not None], group)
    if err is not None:
        raise err
    if failed:
        raise EmptyDatasetError(f"another rank's activation source failed at step {step}")
    if gone:
        raise EmptyDatasetError(f"activation source {what} at step {step}" if step else
                                f"the activation source {what}")
    if nonfinite:
        raise NonFiniteError(f"non-finite activations at site {bad or '(another rank)'} in step "
                             f"{step}; the last good checkpoint is kept", step)
    return raw


def _run(trainees, first, batches, scales, start, use_aux, c0, callback, log_path, ckpt_dir,
         ckpt_every, group=None, extra=None):
    total, history = c0.steps, []
    streams = split_streams(trainees, group)
    steps = [make_step(t, group, streams) for t in trainees]
    # AuxK's switch is checked at least once per dead window, not only at log steps: with
    # log_every >= the run length it never came on (a training choice must not hang on a
    # logging cadence); deterministic in the step, so resumes agree
    aux_every = min([c0.log_every] + [max(1, t.cfg.dead_tokens // c0.batch_tokens)
                                      for t in trainees])
    for t in trainees:
        t.sums = {m: mx.array(0.0) for m in METRICS}
    lead = group is None or group.rank() == 0  # only rank 0 writes files
    log_file = MetricsLog(log_path, keep_through=start) if log_path and lead else None
    it = _chain(first, batches)
    try:
        for _ in range(start):  # replay the data order of the interrupted run
            next(it)
        n_in_interval = 0
        for step in range(start, total):
            raw = _next_batch(it, group, step)
            batch = {s: mx.array(a * scales[s]) for s, a in raw.items()}
            prev = set_blas_threads(1) if streams else None  # one per stream (split_streams)
            try:
                _step_all(trainees, steps, batch, step, total, use_aux)
            finally:
                if prev is not None:
                    set_blas_threads(prev)
            n_in_interval += 1
            done = step + 1
            for t in trainees:  # before the checkpoint, so a resume sees the resampled state
                every = resample_every(t)  # the config's, or the recipe's resample part
                if every and done % every == 0:
                    x, y = t.xy(_gathered(batch, group))  # same rows, same RNG on every rank
                    resample_dead(t, x, y, np.random.default_rng([c0.seed, done]))
            if done == total:  # before the final checkpoint, so a resume keeps it
                _calibrate_thresholds(trainees, batch, group)
            if done % c0.log_every == 0 or done % aux_every == 0 or done == total:
                _switch_aux(trainees, use_aux)  # before the checkpoint, which records it
            if ckpt_dir is not None and ckpt_every and (done % ckpt_every == 0 or done == total):
                _check_finite(trainees, step)
                if lead:
                    save_checkpoint(ckpt_dir, trainees, done, scales,
                                    {"use_aux": use_aux, **(extra or {})})
            if done % c0.log_every == 0 or done == total:
                rows = _log(trainees, done, c0.batch_tokens, n_in_interval, step)
                n_in_interval = 0
                history += rows
                if log_file:
                    log_file.write(rows)
                if callback is not None:
                    callback(TrainProgress(done, total, done * c0.batch_tokens,
                                           {r["name"]: r for r in rows}))
    finally:
        if log_file:
            log_file.close()
    return history


class MetricsLog:
    """Writes logged rows to ``path``: CSV when it ends in ``.csv`` (header written once,
    also across resumes), JSON lines otherwise.

    ``keep_through``: rows of an earlier run with ``step <= keep_through`` are kept and the
    rest dropped (a resume from step s keeps the log up to s; rows logged after the
    checkpoint are written again by the resumed run); 0 starts a fresh file."""

    def __init__(self, path, keep_through: int = 0) -> None:
        from pathlib import Path

        self.path = Path(path)
        self.csv = self.path.suffix.lower() == ".csv"
        kept = self._kept_lines(keep_through) if keep_through > 0 and self.path.exists() else []
        self._f = open(self.path, "w", newline="")
        self._f.writelines(kept)
        self._needs_header = not kept
        self._writer = None

    def _kept_lines(self, keep_through: int) -> list[str]:
        lines = self.path.read_text().splitlines(keepends=True)
        if self.csv:
            import csv

            if not lines:
                return []
            col = next(csv.reader(lines[:1])).index("step")
            body = [ln for ln in lines[1:] if int(next(csv.reader([ln]))[col]) <= keep_through]
            return lines[:1] + body
        return [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= keep_through]

    def write(self, rows: list) -> None:
        if self.csv:
            import csv

            if self._writer is None:
                self._writer = csv.DictWriter(self._f, fieldnames=sorted(rows[0]))
                if self._needs_header:
                    self._writer.writeheader()
            self._writer.writerows(rows)
        else:
            self._f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _gathered(batch: dict, group) -> dict:
    if group is None:
        return batch
    return {s: mx.distributed.all_gather(a, group=group) for s, a in batch.items()}


SPLIT_MIN_ENTRIES = 1 << 22
"""Smallest batch_tokens x width (of the narrowest dictionary) whose steps split over two
streams: below it the blocks' fixed costs outweigh the second core (``split_streams``)."""


def split_streams(trainees, group=None) -> list | None:
    """Two CPU streams when this run's steps split their batch (``TrainConfig.split_batch``),
    else None: single process on the CPU device, at least two cores, every dictionary
    row-separable and asking for it, a big enough batch, and a BLAS whose thread count
    can be set (two streams sharing one multi-threaded BLAS pool gain nothing)."""
    if group is not None or mx.default_device() != mx.cpu or (os.cpu_count() or 1) < 2:
        return None
    if not all(t.cfg.split_batch and getattr(t.dictionary, "row_separable", False)
               for t in trainees):
        return None
    rows = trainees[0].cfg.batch_tokens
    if rows < 64 or rows * min(t.dictionary.width for t in trainees) < SPLIT_MIN_ENTRIES:
        return None
    prev = set_blas_threads(1)
    if prev is None:
        return None
    set_blas_threads(prev)
    return cpu_streams(2)  # None off the thread that owns the streams (sae.ops)


def _step_all(trainees, steps, batch, step: int, total: int, use_aux) -> None:
    """One optimiser step of every trainee on the shared batch, then one ``mx.eval``."""
    outs = []
    for j, (t, fn) in enumerate(zip(trainees, steps)):
        c = t.cfg
        lr = c.lr_for(t.dictionary.width) * _lr_factor(
            step, total, min(c.warmup_steps, max(1, total // 10)), c.decay_frac)
        coef = (c.sparsity_coef if c.sparsity_coef is not None else
                _default_coef(t)) * sparsity_factor(step, total, c.sparsity_warmup_frac)
        x, y = t.xy(batch)
        m = fn(x, y, mx.array(lr), mx.array(coef), mx.array(step + 1.0), use_aux[j],
               mx.array(step / max(total, 1)))  # progress, for schedules (p-annealing)
        t.sums = {k: t.sums[k] + m[k] for k in METRICS}
        outs.append((t.dictionary.state, t.opt, t.sums))
    mx.eval(outs)  # the only synchronisation per step; metrics stay on device


def _default_coef(t: Trainee) -> float:
    if t.is_clt:
        return {"relu": 5.0, "jumprelu": 0.02}.get(t.cfg.arch, 0.0)
    return t.dictionary.default_sparsity_coef  # composed: the recipe's (an instance value)


def _chain(first, rest):
    yield first
    yield from rest


def _check_finite(trainees, step: int) -> None:
    for t in trainees:
        if not all(bool(mx.isfinite(v).all()) for v in t.dictionary.arrays().values()):
            raise NonFiniteError(f"{t.name}: non-finite weights after step {step}; "
                                 "the last good checkpoint is kept", step)


def _calibrate_thresholds(trainees, batch, group) -> None:
    """End of run: a BatchTopK-style activation's inference threshold (single-site, CLT or
    crosscoder) becomes the final weights' own batch threshold on the last batch (mean over
    ranks), not the EMA, which lags a threshold that falls while the encoder trains
    (``sae.parts.activations``, 3)."""
    for t in trainees:
        x, _ = t.xy(batch)
        act = getattr(getattr(t.dictionary, "parts", None), "activation", None)
        if hasattr(act, "calibrate"):  # single-site dictionaries built from parts
            thr = act.calibrate(t.dictionary, t.dictionary.train_pre_acts(x))
        elif hasattr(t.dictionary, "calibrate_threshold"):  # CLTs and crosscoders
            thr = t.dictionary.calibrate_threshold(x)
        else:
            thr = None
        if thr is None:
            continue
        if group is not None:
            thr = mx.distributed.all_sum(thr, group=group) / float(group.size())
        t.dictionary.threshold = thr
        mx.eval(t.dictionary.threshold)


def _switch_aux(trainees, use_aux) -> None:
    """AuxK on (TopK family) once a latent has been silent for ``dead_tokens``: decided at
    a log step before that step's checkpoint, so a resume continues with the same choice."""
    for j, t in enumerate(trainees):
        aux_dead = bool((np.array(t.tsf) >= t.cfg.dead_tokens).any())
        use_aux[j] = aux_dead and (t.cfg.arch in ("topk", "batchtopk", "matryoshka")
                                   or getattr(t.dictionary, "uses_dead_mask", False))


def _log(trainees, done, batch_tokens, n, step) -> list[dict]:
    rows = []
    for t in trainees:
        vals = {k: float(v) / max(n, 1) for k, v in t.sums.items()}
        if not math.isfinite(vals["loss"]):
            raise NonFiniteError(f"{t.name}: loss became non-finite by step {step}", step)
        tsf = np.array(t.tsf)  # dead_frac's window may be shorter; AuxK waits for dead_tokens
        window = min(t.cfg.dead_tokens, done * batch_tokens)
        rows.append({"step": done, "tokens": done * batch_tokens, "name": t.name,
                     "dead_frac": dead_fraction(tsf, window), "dead_window": window, **vals})
        t.sums = {k: mx.array(0.0) for k in t.sums}
    return rows
