"""Dictionaries as per-layer splice units, validated against a model.

Algorithm (``make_units``):
  1. Accept one dictionary, a sequence of them, or a mapping name -> dictionary.
     Per-layer objects satisfy ``attribution.dictionary.Dictionary``; a
     cross-layer transcoder satisfies ``CrossLayerDictionary``.
  2. A per-layer dictionary becomes one ``Unit`` at its ``out_site.layer``:
     kind ``transcoder`` when in_site != out_site (or it has W_skip), else
     ``sae``. A CLT becomes one ``clt`` unit per layer i (source i reads
     ``in_sites[i]``, target i is ``out_sites[i]``).
  3. Validate at the boundary: sites exist and are residual-width, d_in/d_out
     equal d_model, a transcoder reads a site of its own layer no later than
     it writes, a CLT covers exactly the model's layers, and at most one
     dictionary sits on each layer (node keys are (layer, pos[, feature])).
  4. ``encoder(unit)`` recovers the affine encoder (W [d_in, m], b [m]) by
     probing ``pre_acts`` on the identity (the protocol makes it affine), so
     graph seeds are exact encoder rows whatever the storage layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import mlx.core as mx

from attribution.dictionary import CrossLayerDictionary
from attribution.replacement.errors import DictionaryMismatchError
from attribution.sites import Site

UnitKind = Literal["transcoder", "sae", "clt"]


@dataclass(frozen=True, eq=False)
class Unit:
    """One dictionary layer spliced into the model."""

    layer: int
    """Layer of the unit's feature and error nodes."""
    kind: UnitKind
    """``transcoder`` (incl. skip), ``sae`` (reads and writes one site) or ``clt`` (source ``layer``)."""
    in_site: Site
    """Site the encoder reads."""
    out_site: Site
    """Site the unit writes (its error node lives here)."""
    dictionary: Any
    """The dictionary object (shared by all layers of a CLT)."""
    name: str
    """Name used in graph metadata."""

    @property
    def width(self) -> int:
        """Latents of this layer."""
        return int(self.dictionary.width)

    @property
    def W_skip(self):
        """Skip weights [d_in, d_out] or None."""
        return None if self.kind == "clt" else getattr(self.dictionary, "W_skip", None)


def _is_clt(d) -> bool:
    return isinstance(d, CrossLayerDictionary) or hasattr(d, "pre_acts_at")


def _site(model, value, what: str) -> Site:
    if not isinstance(value, Site):
        raise DictionaryMismatchError(
            f"{what} is {value!r}, not a Site; set the dictionary's in_site/out_site "
            "(e.g. Site(3, 'mlp_in')) before splicing it")
    if value.layer >= model.n_layers:
        raise DictionaryMismatchError(
            f"{what} {value} does not exist: the model has {model.n_layers} layers "
            f"(0..{model.n_layers - 1}); the dictionary was trained for another model")
    if not value.is_residual_width:
        raise DictionaryMismatchError(f"{what} {value} is not a residual-width site; "
                                      "dictionaries must read/write d_model-wide sites")
    return value


def _check_widths(model, d, name: str) -> None:
    for attr in ("d_in", "d_out"):
        if int(getattr(d, attr)) != model.d_model:
            raise DictionaryMismatchError(
                f"dictionary {name!r} has {attr}={getattr(d, attr)} but the model's d_model is "
                f"{model.d_model}; load the dictionaries trained for this model")


def _single_unit(model, d, name: str) -> Unit:
    in_site = _site(model, getattr(d, "in_site", None), f"{name}.in_site")
    out_site = _site(model, getattr(d, "out_site", None) or in_site, f"{name}.out_site")
    _check_widths(model, d, name)
    skip = getattr(d, "W_skip", None)
    kind: UnitKind = "transcoder" if (in_site != out_site or skip is not None) else "sae"
    if kind == "transcoder":
        if out_site.kind != "mlp_out":
            raise DictionaryMismatchError(
                f"transcoder {name!r} writes {out_site}; only MLP transcoders (out_site kind "
                "mlp_out) can replace a module")
        if in_site.layer != out_site.layer or in_site.order > out_site.order:
            raise DictionaryMismatchError(
                f"transcoder {name!r} reads {in_site} but writes {out_site}; it must read a site "
                "of the same layer before the MLP output (e.g. mlp_in)")
    return Unit(out_site.layer, kind, in_site, out_site, d, name)


def _clt_units(model, d, name: str) -> list[Unit]:
    ins, outs = list(d.in_sites), list(d.out_sites)
    if len(ins) != model.n_layers or len(outs) != model.n_layers:
        raise DictionaryMismatchError(
            f"CLT {name!r} has {len(ins)} source and {len(outs)} target layers but the model has "
            f"{model.n_layers}; a CLT must cover every layer of its model")
    _check_widths(model, d, name)
    units = []
    for i, (a, b) in enumerate(zip(ins, outs)):
        a, b = _site(model, a, f"{name}.in_sites[{i}]"), _site(model, b, f"{name}.out_sites[{i}]")
        if a.layer != i or b.layer != i or b.kind != "mlp_out" or a.order > b.order:
            raise DictionaryMismatchError(
                f"CLT {name!r} layer {i} reads {a} and writes {b}; expected L{i}.mlp_in -> "
                f"L{i}.mlp_out (source and target i on layer i)")
        units.append(Unit(i, "clt", a, b, d, name))
    return units


def _named(dictionaries) -> list[tuple[str, Any]]:
    if isinstance(dictionaries, Mapping):
        return [(str(k), v) for k, v in dictionaries.items()]
    if hasattr(dictionaries, "pre_acts") or _is_clt(dictionaries):
        dictionaries = [dictionaries]
    items = list(dictionaries)
    return [(getattr(d, "name", None) or f"{type(d).__name__}_{j}", d) for j, d in enumerate(items)]


def make_units(model, dictionaries) -> dict[int, Unit]:
    """Validated units keyed by layer (see the module docstring)."""
    named = _named(dictionaries)
    if not named:
        raise DictionaryMismatchError("no dictionaries given; pass at least one transcoder, SAE or CLT")
    units: dict[int, Unit] = {}
    for name, d in named:
        if not (_is_clt(d) or hasattr(d, "pre_acts")):
            raise DictionaryMismatchError(
                f"{name!r} ({type(d).__name__}) is not a dictionary: it needs pre_acts/activation/"
                "decode (attribution.dictionary.Dictionary) or pre_acts_at/decoder (CLT)")
        for u in (_clt_units(model, d, name) if _is_clt(d) else [_single_unit(model, d, name)]):
            if u.layer in units:
                raise DictionaryMismatchError(
                    f"two dictionaries on layer {u.layer} ({units[u.layer].name!r} and {name!r}); "
                    "graph nodes are keyed by layer, so splice at most one per layer")
            units[u.layer] = u
    return dict(sorted(units.items()))


def pre_acts(unit: Unit, x: mx.array) -> mx.array:
    """Encoder pre-activations of ``unit`` for input x [..., d_in]."""
    if unit.kind == "clt":
        return unit.dictionary.pre_acts_at(unit.layer, x)
    return unit.dictionary.pre_acts(x)


def encoder(unit: Unit) -> tuple[mx.array, mx.array]:
    """(W [d_in, m], b [m]) with pre_acts(x) = x @ W + b, recovered by probing."""
    d_in = int(unit.dictionary.d_in)
    b = pre_acts(unit, mx.zeros((1, d_in)))[0]
    w = pre_acts(unit, mx.eye(d_in)) - b[None]
    return w, b


def write_vectors(unit: Unit, target: Unit) -> mx.array:
    """Decoder rows [m, d_out] of ``unit``'s features written at ``target.out_site``."""
    d = unit.dictionary
    if unit.kind == "clt":
        return d.decoder(unit.layer)[:, target.layer - unit.layer, :]
    return d.W_dec


def targets_of(unit: Unit, units: dict[int, Unit]) -> list[Unit]:
    """Units whose out_site this unit's features write to (CLT: every layer j >= i)."""
    if unit.kind == "clt":
        return [u for u in units.values() if u.kind == "clt" and u.layer >= unit.layer]
    return [unit]


def activations(units: dict[int, Unit], pres: dict[int, mx.array]) -> dict[int, mx.array]:
    """Latent activations per layer; a CLT's nonlinearity runs jointly over its layers."""
    out: dict[int, mx.array] = {}
    clt = [l for l, u in units.items() if u.kind == "clt"]
    if clt:
        d = units[clt[0]].dictionary
        f = d.activation(mx.stack([pres[l] for l in clt], axis=-2))
        out.update({l: f[..., k, :] for k, l in enumerate(clt)})
    for l, u in units.items():
        if u.kind != "clt":
            out[l] = u.dictionary.activation(pres[l])
    return out


def clt_layer_activation(unit: Unit, pre: mx.array, context: dict[int, mx.array] | None) -> mx.array:
    """One CLT layer's activations from its live pre-activations.

    The nonlinearity is applied to the stack of all layers with the other
    layers taken from ``context`` (clean pre-activations) or zeros: exact for
    elementwise activations (ReLU/JumpReLU), an approximation for a joint TopK.
    """
    d, n = unit.dictionary, len(unit.dictionary.in_sites)
    rows = []
    for j in range(n):
        if j == unit.layer:
            rows.append(pre)
        elif context is not None and j in context and context[j].shape[-2:] == pre.shape[-2:]:
            rows.append(mx.broadcast_to(context[j], pre.shape))
        else:
            rows.append(mx.zeros_like(pre))
    return d.activation(mx.stack(rows, axis=-2))[..., unit.layer, :]


def clt_bias(unit: Unit):
    """The CLT's decoder bias at target ``unit.layer`` when it exposes ``b_dec`` [L, d], else None."""
    b = getattr(unit.dictionary, "b_dec", None)
    if b is None or tuple(b.shape) != (len(unit.dictionary.out_sites), int(unit.dictionary.d_out)):
        return None
    return b[unit.layer]


def reconstruct(unit: Unit, units: dict[int, Unit], acts: dict[int, mx.array], x_in: mx.array) -> mx.array:
    """The dictionary's prediction at ``unit.out_site`` from the latents (and skip input)."""
    if unit.kind != "clt":
        y = unit.dictionary.decode(acts[unit.layer])
        return y if unit.W_skip is None else y + x_in @ unit.W_skip
    y = None
    for i, u in units.items():
        if u.kind == "clt" and i <= unit.layer:
            part = u.dictionary.decode_to(i, unit.layer, acts[i])
            y = part if y is None else y + part
    b = clt_bias(unit)
    return y if b is None else y + b


__all__ = ["Unit", "activations", "clt_layer_activation", "encoder", "make_units", "pre_acts",
           "reconstruct", "targets_of", "write_vectors"]
