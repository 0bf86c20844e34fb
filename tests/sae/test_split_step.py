"""The split training step: row-separable recipes, the two-stream step, BLAS threads.

The reference everywhere is the unsplit full-batch computation (MLX autodiff on one
stream); the split must reproduce it for the whitelisted parts and must differ for the
parts kept off the whitelist, which shows the whitelist is needed and right.
"""

from __future__ import annotations

import importlib

import attribution  # noqa: F401  (BLAS preload before mlx)
import mlx.core as mx
import numpy as np
import pytest
from mlx import nn
from mlx.utils import tree_flatten

from attribution import Site, set_blas_threads
from sae import ArraySource, TrainConfig, train
from sae.dictionary import LossContext
from sae.ops import cpu_streams
from sae.parts import ComposedDictionary, Recipe, names
from sae.parts.registry import KINDS
from sae.parts.separable import _SEPARABLE, row_separable
from sae.train.trainee import split_value_and_grad

trainer_mod = importlib.import_module("sae.train.trainer")  # ``sae.train`` is also a function
NOT_SEPARABLE = {("activation", "batchtopk"), ("dead", "auxk")}
"""Built-in parts that read statistics of the whole batch (``sae.parts.separable``)."""
D, M, B = 16, 64, 96


def _recipe(kind: str, name: str) -> Recipe:
    kw = {kind: name}
    if kind == "activation" and name in ("topk", "batchtopk"):
        kw.update(penalty="none", params={"activation": {"k": 6}})
    if kind == "dead" and name == "pre_act":
        kw.update(activation="jumprelu")
    return Recipe(**kw)


def _builtin(kind: str) -> list[str]:
    from sae.parts.registry import _REGISTRY

    return [n for n in names(kind) if _REGISTRY[kind][n].__module__.startswith("sae.parts.")]


def _full_and_split(recipe: Recipe, seed: int = 0, term: str | None = None):
    """(full-batch, split) value_and_grad of the loss (or of the stats' ``term`` alone)."""
    rng = np.random.default_rng(seed)
    d = ComposedDictionary(D, M, recipe=recipe)
    d.init_weights(mx.random.key(seed))
    # the two halves differ in kind (the second is shifted along one direction), so a
    # statistic of the whole batch differs from the mean of the halves' statistics
    xs = rng.normal(size=(B, D))
    xs[B // 2:] = 0.3 * xs[B // 2:] + 3 * rng.normal(size=D)
    x = mx.array(xs.astype(np.float32))
    dead = mx.array(rng.random(M) < 0.4)  # AuxK / ghost grads act on these

    def loss_fn(x, y, coef, dead, use_aux, progress):
        loss, stats = d.loss(x, y, LossContext(coef, dead, use_aux, progress))
        return (loss if term is None else stats[term]), stats

    vg = nn.value_and_grad(d, loss_fn)
    args = (x, x, mx.array(0.7), dead, True, mx.array(0.4))
    full = vg(*args)
    split = split_value_and_grad(vg, cpu_streams(2))(*args)
    mx.eval(full, split)
    return full, split


def _max_rel(a, b) -> float:
    a, b = np.array(a, np.float64), np.array(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-6))


def test_every_builtin_part_is_classified():
    """A new built-in part must be put on the whitelist or the known-coupled list."""
    for kind in ("encoder", "activation", "penalty", "decoder", "dead"):
        for name in _builtin(kind):
            assert (name in _SEPARABLE[kind]) != ((kind, name) in NOT_SEPARABLE), (kind, name)
    assert set(_SEPARABLE) < set(KINDS)


@pytest.mark.parametrize("kind,name", [(k, n) for k in ("encoder", "activation", "penalty",
                                                        "decoder", "dead")
                                       for n in _SEPARABLE[k]])
def test_whitelisted_parts_split_exactly(kind, name):
    r = _recipe(kind, name)
    assert row_separable(r)
    ((loss, stats), grads), ((loss_s, stats_s), grads_s) = _full_and_split(r)
    assert abs(float(loss) - float(loss_s)) <= 1e-5 * max(1.0, abs(float(loss)))
    for k, v in stats.items():
        if v.dtype == mx.bool_:
            assert (np.array(v) == np.array(stats_s[k])).all(), k
        else:
            assert _max_rel(v, stats_s[k]) < 1e-5, k
    g, gs = dict(tree_flatten(grads)), dict(tree_flatten(grads_s))
    assert g.keys() == gs.keys()
    for k in g:
        assert _max_rel(g[k], gs[k]) < 1e-4, (kind, name, k)


@pytest.mark.parametrize("kind,name", sorted(NOT_SEPARABLE))
def test_batch_coupled_parts_would_change_under_a_split(kind, name):
    r = _recipe(kind, name)
    assert not row_separable(r)
    # the term that reads the whole batch, alone
    ((v, _), grads), ((v_s, _), grads_s) = _full_and_split(
        r, term="aux" if kind == "dead" else "mse")
    g, gs = dict(tree_flatten(grads)), dict(tree_flatten(grads_s))
    assert abs(float(v) - float(v_s)) > 1e-3 * float(v)
    assert max(_max_rel(g[k], gs[k]) for k in g) > 1e-3


def test_nested_split_gets_no_streams():
    st = cpu_streams(2)
    assert st is not None and len(st) == 2
    with mx.stream(st[0]):
        assert cpu_streams(2) is None  # the block is already one of two parallel halves
    assert cpu_streams(2) == st


def test_set_blas_threads_round_trip():
    prev = set_blas_threads(1)
    assert prev is not None, "the set-up installs OpenBLAS, whose thread count is settable"
    try:
        assert set_blas_threads(2) == 1
        assert set_blas_threads(1) == 2
    finally:
        set_blas_threads(prev)


def _run(arch, split, width=4096, batch=1024, steps=3, **kw):
    site = Site(0, "resid_post")
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(batch * steps, 8)) * rng.random((batch * steps, 1))).astype(np.float32)
    cfg = TrainConfig(kind="sae", arch=arch, sites=(site,), width=width, batch_tokens=batch,
                      total_tokens=batch * steps, log_every=1, split_batch=split, **kw)
    seen, blas = {}, []
    real_split, real_step = trainer_mod.split_streams, trainer_mod._step_all

    def spy_split(trainees, group=None):
        seen["streams"] = real_split(trainees, group)
        return seen["streams"]

    def spy_step(*a, **k):
        now = set_blas_threads(1)
        set_blas_threads(now)
        blas.append(now)
        return real_step(*a, **k)

    trainer_mod.split_streams, trainer_mod._step_all = spy_split, spy_step
    try:
        res = train(ArraySource({site: x}), cfg, distributed=False)
    finally:
        trainer_mod.split_streams, trainer_mod._step_all = real_split, real_step
    return res, seen["streams"], blas


def test_training_splits_only_where_it_may_and_restores_blas():
    before = set_blas_threads(2)
    set_blas_threads(before)
    res_s, streams, blas = _run("sqrt_l1", True)
    assert streams is not None and blas == [1, 1, 1]  # split, one BLAS thread per stream
    res_1, streams_1, blas_1 = _run("sqrt_l1", False)
    assert streams_1 is None and blas_1 == [before] * 3
    after = set_blas_threads(before)
    assert after == before  # restored after the run
    # the same training, up to float rounding: first step exact in value, later close
    for h_s, h_1, tol in zip(res_s.history, res_1.history, (1e-5, 1e-3, 1e-3)):
        for k in ("loss", "mse", "l0", "sparsity"):
            assert abs(h_s[k] - h_1[k]) <= tol * max(1.0, abs(h_1[k])), (k, h_s[k], h_1[k])
    # not split: a batch-coupled recipe (AuxK), TopK's own loss, a small batch
    assert _run("resample", True)[1] is not None
    assert _run("deep", True, k=8)[1] is None
    assert _run("topk", True, k=8)[1] is None
    assert _run("sqrt_l1", True, width=256, batch=256)[1] is None
