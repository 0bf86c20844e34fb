"""Interventions: typed edits of one site's activation during a forward pass.

Every intervention names a ``site`` and optionally restricts itself to token
``positions`` (the T axis; query positions for attn_pattern) and to attention
heads ``head`` (attn_z and attn_pattern only). Values (``value``, ``delta``,
``source``, ``reference``) are given at full activation shape or anything that
broadcasts to it ([B,T,...], [T,...], [d]); the restriction picks which
entries take the new value. A list of interventions applies in order.

Algorithm (``apply``):
  1. Compute the edited activation ``new`` at full shape: Replace -> value,
     Add -> x + delta, Scale -> x * factor, Ablate -> zeros / mean of the
     reference over examples / reference rows drawn with ``seed``,
     Patch -> the source run's activation at this site.
  2. Without positions/head, return ``new``; otherwise build a boolean mask
     over the position and head axes and return where(mask, new, x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence, Union

import mlx.core as mx
import numpy as np

from attribution.errors import InterventionError
from attribution.sites import Site

Positions = Union[None, int, Sequence[int], slice]  # or a boolean mask over T
Heads = Union[None, int, Sequence[int]]


def _site(value) -> Site:
    from attribution.model.run import to_site

    return to_site(value)


class _Base:
    def __post_init__(self) -> None:
        object.__setattr__(self, "site", _site(self.site))
        if self.head is not None and self.site.kind not in ("attn_z", "attn_pattern"):
            raise InterventionError(
                f"head={self.head!r} only applies to attn_z and attn_pattern sites, not {self.site}; "
                "drop head or intervene on attn_z"
            )


@dataclass(frozen=True, eq=False)
class Replace(_Base):
    """Set the activation to ``value`` (at ``positions``/``head``)."""

    site: Site
    """Where to intervene (a Site or its string form)."""
    value: Any
    """New activation, broadcastable to the site's shape."""
    positions: Positions = None
    """Token positions to edit; None = all."""
    head: Heads = None
    """Heads to edit (attn_z / attn_pattern); None = all."""


@dataclass(frozen=True, eq=False)
class Add(_Base):
    """Add ``delta`` to the activation."""

    site: Site
    """Where to intervene."""
    delta: Any
    """Added vector/array, broadcastable to the site's shape."""
    positions: Positions = None
    """Token positions to edit; None = all."""
    head: Heads = None
    """Heads to edit; None = all."""


@dataclass(frozen=True, eq=False)
class Scale(_Base):
    """Multiply the activation by ``factor``."""

    site: Site
    """Where to intervene."""
    factor: Any
    """Scalar or array broadcastable to the site's shape."""
    positions: Positions = None
    """Token positions to edit; None = all."""
    head: Heads = None
    """Heads to edit; None = all."""


@dataclass(frozen=True, eq=False)
class Ablate(_Base):
    """Ablate the activation: zero, mean over ``reference`` examples, or resample from them."""

    site: Site
    """Where to intervene."""
    how: Literal["zero", "mean", "resample"] = "zero"
    """zero: 0; mean: reference.mean(0); resample: reference[i] with i ~ U{0..N-1} per batch row."""
    reference: Any = None
    """Activations [N, ...] of this site on other examples (mean/resample)."""
    head: Heads = None
    """Heads to ablate; None = all."""
    positions: Positions = None
    """Token positions to ablate; None = all."""
    seed: int = 0
    """Seed of the resample draw."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.how not in ("zero", "mean", "resample"):
            raise InterventionError(f"Ablate how={self.how!r}; use 'zero', 'mean' or 'resample'")
        if self.how != "zero" and self.reference is None:
            raise InterventionError(
                f"Ablate(how={self.how!r}) needs reference activations [N, ...] of {self.site}; "
                "capture them on other examples with attribution.capture"
            )


@dataclass(frozen=True, eq=False)
class Patch(_Base):
    """Replace the activation with the same site's activation from another run."""

    site: Site
    """Where to intervene."""
    source: Any
    """Activation of this site in the source run: an array, a {Site: array} cache or a RunResult."""
    positions: Positions = None
    """Token positions to patch; None = all."""
    head: Heads = None
    """Heads to patch; None = all."""


Intervention = Union[Replace, Add, Scale, Ablate, Patch]
INTERVENTION_TYPES = (Replace, Add, Scale, Ablate, Patch)


def _as_array(v, x: mx.array, what: str, site: Site) -> mx.array:
    arr = v if isinstance(v, mx.array) else mx.array(np.asarray(v))
    try:
        return mx.broadcast_to(arr.astype(x.dtype), x.shape)
    except ValueError as exc:
        raise InterventionError(
            f"{what} of shape {tuple(arr.shape)} does not broadcast to {site}'s activation "
            f"{tuple(x.shape)}; give it at full shape or a broadcastable one"
        ) from exc


def _source_array(source, site: Site):
    cache = getattr(source, "cache", source)
    if isinstance(cache, Mapping):
        if site not in cache:
            raise InterventionError(f"Patch source has no activation for {site}; capture it first")
        return cache[site]
    return source


def _reference_rows(iv: Ablate, x: mx.array) -> mx.array:
    ref = iv.reference if isinstance(iv.reference, mx.array) else mx.array(np.asarray(iv.reference))
    if ref.ndim != x.ndim:
        raise InterventionError(
            f"Ablate reference for {iv.site} must be [N, ...] with the activation's rank "
            f"{x.ndim} (got shape {tuple(ref.shape)})"
        )
    if iv.how == "mean":
        return mx.mean(ref.astype(mx.float32), axis=0, keepdims=True)
    idx = np.random.default_rng(iv.seed).integers(0, ref.shape[0], size=x.shape[0])
    return ref[mx.array(idx.astype(np.int32))]


def edited(iv: Intervention, x: mx.array) -> mx.array:
    """The full-shape edited activation (step 1 of ``apply``)."""
    if isinstance(iv, Replace):
        return _as_array(iv.value, x, "Replace value", iv.site)
    if isinstance(iv, Add):
        return x + _as_array(iv.delta, x, "Add delta", iv.site)
    if isinstance(iv, Scale):
        f = iv.factor
        return x * (f if isinstance(f, (int, float)) else _as_array(f, x, "Scale factor", iv.site))
    if isinstance(iv, Ablate):
        if iv.how == "zero":
            return mx.zeros_like(x)
        return _as_array(_reference_rows(iv, x), x, "Ablate reference", iv.site)
    if isinstance(iv, Patch):
        return _as_array(_source_array(iv.source, iv.site), x, "Patch source", iv.site)
    raise InterventionError(f"not an intervention: {iv!r}; use Replace/Add/Scale/Ablate/Patch")


def _index_vector(sel, n: int, what: str, site: Site) -> np.ndarray:
    keep = np.zeros(n, dtype=bool)
    if isinstance(sel, slice):
        keep[sel] = True
        return keep
    arr = np.asarray(sel)
    if arr.dtype == bool:  # a boolean mask over the axis
        if arr.shape != (n,):
            raise InterventionError(f"boolean {what} for {site} must have shape ({n},), got {arr.shape}")
        return arr.copy()
    idx = np.atleast_1d(arr.astype(np.int64))
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise InterventionError(f"{what} {sel!r} out of range for {site} (size {n})")
    keep[idx] = True
    return keep


def selection_mask(iv: Intervention, shape: tuple[int, ...]) -> mx.array | None:
    """Boolean mask broadcastable to ``shape`` selecting positions/heads; None = everything."""
    if iv.positions is None and iv.head is None:
        return None
    kind = iv.site.kind
    pos_axis, head_axis = (2, 1) if kind == "attn_pattern" else (1, 2 if kind == "attn_z" else None)
    mask = np.ones([1] * len(shape), dtype=bool)
    if iv.positions is not None:
        v = _index_vector(iv.positions, shape[pos_axis], "positions", iv.site)
        mask = mask & v.reshape([-1 if a == pos_axis else 1 for a in range(len(shape))])
    if iv.head is not None:
        v = _index_vector(iv.head, shape[head_axis], "head", iv.site)
        mask = mask & v.reshape([-1 if a == head_axis else 1 for a in range(len(shape))])
    return mx.array(mask)


def apply(iv: Intervention, x: mx.array) -> mx.array:
    """The activation after ``iv`` (see module docstring)."""
    new = edited(iv, x)
    mask = selection_mask(iv, x.shape)
    return new if mask is None else mx.where(mask, new, x)
