"""Public forward-pass API: run, capture, intervene, frozen, site_grads.

Algorithm (``run``):
  1. Validate tokens (int32 [B,T], context, vocabulary) and sites (kind, layer).
  2. Build a ``Plan``: each intervention becomes an edit at its site (sites in
     forward order, list order within a site); each captured site a read that stores the activation in the
     result cache; the ``stop_after`` site's read raises a private ``_Stop``
     once it has stored its value.
  3. Install the plan (hooks + attention-kernel swap), call the mlx-lm module,
     and remove everything in ``finally``; ``_Stop`` -> logits None.

``capture`` is ``run`` with ``stop_after`` = the deepest requested site, so
one forward captures everything and skips the rest of the network.

``site_grads`` injects ``Add(site, delta)`` with delta = 0 after the user's
interventions and differentiates ``metric(logits)`` with respect to the deltas
via ``mx.value_and_grad``; the gradient w.r.t. delta equals the gradient
w.r.t. the (post-intervention) activation.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import mlx.core as mx

from attribution.errors import (
    AttributionError,
    InterventionError,
    LayerRangeError,
    SiteKindError,
    UnsupportedArchitectureError,
)
from attribution.model.interventions import INTERVENTION_TYPES, Add, apply
from attribution.model.plan import Plan
from attribution.model.tokens import as_tokens
from attribution.sites import SITE_KINDS, Site, SiteError


class _Stop(Exception):
    """Raised inside the forward once the last needed site has been captured."""


@dataclass
class RunResult:
    """Outcome of ``run``."""

    logits: mx.array | None
    """Logits [B,T,V], or None when the forward stopped early."""
    cache: dict
    """Captured activations, Site -> array (shapes as in ``attribution.sites``)."""


def to_site(value) -> Site:
    """A ``Site`` from a Site, a string like ``L3.mlp_in`` or a (layer, kind) pair."""
    if isinstance(value, Site):
        return value
    try:
        if isinstance(value, tuple) and len(value) == 2:
            return Site(int(value[0]), value[1])
        return Site.parse(value)
    except SiteError as exc:
        if "layer" in str(exc) and "kind" not in str(exc):
            raise LayerRangeError(f"{exc}; layers are numbered from 0") from exc
        raise SiteKindError(f"{exc} (valid kinds: {', '.join(SITE_KINDS)})") from exc


def check_layer(model, layer: int) -> int:
    """Raise ``LayerRangeError`` unless 0 <= layer < model.n_layers."""
    if not isinstance(layer, int) or not 0 <= layer < model.n_layers:
        raise LayerRangeError(
            f"layer {layer!r} is out of range: the model has {model.n_layers} layers "
            f"(0..{model.n_layers - 1})"
        )
    return layer


def check_site(model, site) -> Site:
    """Parse and range-check one site."""
    s = to_site(site)
    if s.layer >= model.n_layers:
        raise LayerRangeError(
            f"site {s} is out of range: the model has {model.n_layers} layers "
            f"(0..{model.n_layers - 1})"
        )
    return s


def site_shape(model, site: Site, batch: int, seq: int) -> tuple[int, ...]:
    """Activation shape of ``site`` for a [batch, seq] token batch."""
    if site.kind == "attn_z":
        return (batch, seq, model.n_heads, model.d_head)
    if site.kind == "attn_pattern":
        return (batch, model.n_heads, seq, seq)
    return (batch, seq, model.d_model)


def _check_interventions(model, interventions) -> list:
    ivs = list(interventions) if not isinstance(interventions, INTERVENTION_TYPES) else [interventions]
    for iv in ivs:
        if not isinstance(iv, INTERVENTION_TYPES):
            raise InterventionError(f"not an intervention: {iv!r}; use Replace/Add/Scale/Ablate/Patch")
        check_site(model, iv.site)
    return ivs


def _edit_fn(iv, fired: set):
    def edit(x):
        fired.add(id(iv))
        return apply(iv, x)

    return edit


def _check_reached(ivs, sites, cache: dict, fired: set) -> None:
    """After a complete forward every edit and read must have fired; say which did not."""
    missed = [str(s) for s in sites if s not in cache]
    missed += [f"{type(iv).__name__}({iv.site})" for iv in ivs if id(iv) not in fired]
    if missed:
        raise UnsupportedArchitectureError(
            f"the forward never reached {', '.join(missed)}: the model's modules changed since "
            "load_model (re-wrap it) or this architecture calls them in a way the hooks miss"
        )


def _reader(cache: dict, site: Site, stop: Site | None):
    def read(x):
        cache[site] = x
        if stop is not None and site == stop:
            raise _Stop
        return x

    return read


def _build_plan(model, ivs, sites, cache, stop, freeze) -> Plan:
    plan = Plan(model)
    # Forward order across sites (attn_out edits must precede resid_mid edits, which
    # share its hook point); the stable sort keeps list order within a site.
    for iv in sorted(ivs, key=lambda iv: iv.site.order):
        plan.edit(iv.site, _edit_fn(iv, plan.fired))
    for s in sites:
        plan.read(s, _reader(cache, s, stop))
    if stop is not None and stop not in sites:
        plan.read(stop, _reader({}, stop, stop))
    if freeze:
        plan.freeze()
    return plan


def run(model, tokens, interventions=(), capture: Iterable = (), stop_after=None,
        freeze: bool = False) -> RunResult:
    """One forward with interventions applied and sites captured (see module docstring).

    ``stop_after`` is a Site (or its string), or an int layer meaning that
    layer's resid_post; the returned logits are then None.
    """
    toks = as_tokens(tokens, model)
    ivs = _check_interventions(model, interventions)
    sites = list(dict.fromkeys(check_site(model, s) for s in capture))
    if isinstance(stop_after, int) and not isinstance(stop_after, bool):
        stop_after = Site(check_layer(model, stop_after), "resid_post")
    stop = check_site(model, stop_after) if stop_after is not None else None
    if stop is not None:
        late = [s for s in sites if s.order > stop.order]
        if late:
            raise AttributionError(
                f"captured site(s) {', '.join(map(str, late))} come after stop_after={stop}; "
                "move stop_after to the deepest captured site or drop it"
            )
    cache: dict = {}
    plan = _build_plan(model, ivs, sites, cache, stop, freeze)
    logits = None
    with plan:
        try:
            logits = model.module(toks)
        except _Stop:
            logits = None
    if logits is not None:
        _check_reached(ivs, sites + ([stop] if stop is not None and stop not in sites else []), cache,
                       plan.fired)
    return RunResult(logits=logits, cache=cache)


def capture(model, tokens, sites: Iterable) -> dict:
    """Activations at ``sites`` from one forward that stops after the deepest of them."""
    checked = list(dict.fromkeys(check_site(model, s) for s in sites))
    if not checked:
        raise AttributionError("capture needs at least one site, e.g. [Site(0, 'resid_post')]")
    deepest = max(checked, key=lambda s: s.order)
    return run(model, tokens, capture=checked, stop_after=deepest).cache


@contextmanager
def intervene(model, interventions) -> Iterator[None]:
    """Inside the block, every forward of ``model`` (incl. ``model(tokens)``) is intervened."""
    ivs = _check_interventions(model, interventions)
    with _build_plan(model, ivs, [], {}, None, False):
        yield


@contextmanager
def frozen(model) -> Iterator[None]:
    """Inside the block, norm scales and attention patterns pass no gradient."""
    with _build_plan(model, [], [], {}, None, True):
        yield


def site_grads(model, tokens, sites: Iterable, metric: Callable[[mx.array], mx.array],
               interventions=(), freeze: bool = False) -> tuple[mx.array, dict]:
    """(metric(logits), {site: d metric / d activation}) by zero-delta injection."""
    toks = as_tokens(tokens, model)
    ivs = _check_interventions(model, interventions)
    checked = list(dict.fromkeys(check_site(model, s) for s in sites))
    b, t = toks.shape
    deltas = [mx.zeros(site_shape(model, s, b, t)) for s in checked]

    def objective(ds):
        adds = [Add(s, d) for s, d in zip(checked, ds, strict=True)]
        plan = _build_plan(model, ivs + adds, [], {}, None, freeze)
        with plan:
            value = metric(model.module(toks))
        _check_reached(ivs + adds, [], {}, plan.fired)
        if value.size != 1:
            raise AttributionError(f"metric must return a scalar, got shape {value.shape}")
        return value.reshape(())

    value, grads = mx.value_and_grad(objective)(deltas)
    return value, dict(zip(checked, grads, strict=True))
