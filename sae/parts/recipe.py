"""``Recipe``: which part of each kind a dictionary is made of, with their parameters.

1. A recipe names one registered part per kind (encoder, activation, penalty, decoder,
   init, dead, schedule) plus ``params`` {kind: {parameter: value}}, an optional default
   ``sparsity_coef`` and a ``name``.
2. Construction validates: every name registered (``UnknownPartError`` listing the
   known ones), every parameter accepted by its part (``ConfigError``).
3. Parameters are stored canonically (sorted tuples, lists as tuples) so a recipe is
   frozen, hashable and compares equal after a JSON round trip (``to_json`` /
   ``from_json``; ``str`` is the canonical JSON, which checkpoints compare on resume).
4. ``RECIPES``: named recipes. The six standard architectures re-expressed as parts
   (same losses and gradients as the classes in ``sae.arch``, tested), and the new ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from sae.errors import ConfigError
from sae.parts.registry import KINDS, part


def _freeze(v):
    if isinstance(v, dict):
        return tuple(sorted((str(k), _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw_params(p) -> dict:
    return {kind: {k: (list(v) if isinstance(v, tuple) else v) for k, v in kv} for kind, kv in p}


@dataclass(frozen=True)
class Recipe:
    """A dictionary as a composition of registered parts (module docstring)."""

    encoder: str = "linear"
    """Encoder part (``sae.parts.encoders``)."""
    activation: str = "relu"
    """Activation part (``sae.parts.activations``)."""
    penalty: str = "l1"
    """Sparsity penalty part (``sae.parts.penalties``)."""
    decoder: str = "linear"
    """Decoder part (``sae.parts.decoders``)."""
    init: str = "transpose"
    """Initialisation part (``sae.parts.inits``)."""
    dead: str = "none"
    """Dead-latent part (``sae.parts.dead``)."""
    schedule: str = "constant"
    """Annealing schedule part (``sae.parts.schedules``)."""
    params: Any = field(default_factory=dict)
    """{kind: {parameter: value}}; stored as sorted tuples (see ``params_for``)."""
    sparsity_coef: float | None = None
    """Default sparsity coefficient; None -> the penalty's own default."""
    name: str = "composed"
    """Label (the named recipes use their key)."""

    def __post_init__(self) -> None:
        raw = self.params
        if isinstance(raw, tuple):
            raw = _thaw_params(raw)
        if not isinstance(raw, dict):
            raise ConfigError(f"recipe params must be a dict {{kind: {{param: value}}}}, got "
                              f"{type(raw).__name__}")
        bad = sorted(set(raw) - set(KINDS))
        if bad:
            raise ConfigError(f"recipe params name unknown kinds {bad}; kinds are {', '.join(KINDS)}")
        for kind, kv in raw.items():
            if not isinstance(kv, dict):
                raise ConfigError(f"recipe params[{kind!r}] must be a dict, got {kv!r}")
        object.__setattr__(self, "params", _freeze(raw))
        for kind in KINDS:
            self.build(kind)  # raises UnknownPartError / ConfigError on a bad name or parameter
        if self.sparsity_coef is not None and not (
                isinstance(self.sparsity_coef, (int, float)) and self.sparsity_coef >= 0):
            raise ConfigError(f"sparsity_coef must be a number >= 0, got {self.sparsity_coef!r}")

    def params_for(self, kind: str) -> dict:
        """Parameters of the ``kind`` part as a plain dict."""
        return _thaw_params(self.params).get(kind, {})

    def build(self, kind: str):
        """A fresh instance of the ``kind`` part."""
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.params_for(kind).items()}
        return part(kind, getattr(self, kind), **kw)

    def with_params(self, **by_kind) -> Recipe:
        """A copy with parameters merged in: ``with_params(activation={"k": 8})``."""
        p = _thaw_params(self.params)
        for kind, kv in by_kind.items():
            p[kind] = {**p.get(kind, {}), **kv}
        return replace(self, params=p)

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {"encoder": self.encoder, "activation": self.activation, "penalty": self.penalty,
                "decoder": self.decoder, "init": self.init, "dead": self.dead,
                "schedule": self.schedule, "params": _thaw_params(self.params),
                "sparsity_coef": self.sparsity_coef, "name": self.name}

    @classmethod
    def from_dict(cls, obj: dict) -> Recipe:
        """Inverse of ``to_dict`` (unknown fields -> ConfigError)."""
        if not isinstance(obj, dict):
            raise ConfigError(f"a recipe is a JSON object, got {type(obj).__name__}")
        fields = set(cls.__dataclass_fields__)
        bad = sorted(set(obj) - fields)
        if bad:
            raise ConfigError(f"recipe has unknown fields {bad}; expected some of {sorted(fields)}")
        return cls(**obj)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        return cls.from_dict(json.loads(text))

    def __str__(self) -> str:
        return self.to_json()

    @classmethod
    def coerce(cls, obj) -> Recipe:
        """A Recipe from a Recipe, a dict, JSON text or a name in ``RECIPES``."""
        if isinstance(obj, Recipe):
            return obj
        if isinstance(obj, dict):
            return cls.from_dict(obj)
        if isinstance(obj, str):
            if obj in RECIPES:
                return RECIPES[obj]
            if obj.lstrip().startswith("{"):
                return cls.from_json(obj)
            raise ConfigError(f"unknown recipe {obj!r}; named recipes: {', '.join(sorted(RECIPES))}")
        raise ConfigError(f"expected a Recipe, dict or recipe name, got {type(obj).__name__}")


def _named() -> dict[str, Recipe]:
    R = Recipe
    std = dict(
        # the six standard architectures, as in sae.arch (same numerics, tested)
        relu=R(init="transpose", params={"init": {"dec_norm": 0.1}}, sparsity_coef=5.0),
        topk=R(activation="topk", penalty="none", dead="auxk"),
        batchtopk=R(activation="batchtopk", penalty="none", dead="auxk"),
        jumprelu=R(activation="jumprelu", penalty="l0_ste", dead="pre_act",
                   params={"init": {"dec_norm": 0.1}}, sparsity_coef=0.02),
        gated=R(activation="gated", params={"init": {"dec_norm": 0.1}}, sparsity_coef=1.0),
        matryoshka=R(activation="batchtopk", penalty="none", decoder="matryoshka", dead="auxk"),
        # new architectures built from parts
        prolu=R(activation="prolu", penalty="sqrt_l1", params={"init": {"dec_norm": 0.1}},
                sparsity_coef=1.0),
        sqrt_l1=R(penalty="sqrt_l1", params={"init": {"dec_norm": 0.1}}, sparsity_coef=1.0),
        lp_anneal=R(penalty="lp", schedule="linear", sparsity_coef=2.0,
                    params={"init": {"dec_norm": 0.1}, "schedule": {"start": 0.1, "end": 0.9}}),
        cauchy=R(penalty="cauchy", params={"init": {"dec_norm": 0.1}, "penalty": {"scale": 0.1}},
                 sparsity_coef=0.3),
        deep=R(encoder="deep", activation="topk", penalty="none", dead="auxk"),
        ghost_grads=R(dead="ghost_grads", params={"init": {"dec_norm": 0.1}}, sparsity_coef=5.0),
        resample=R(dead="resample", params={"init": {"dec_norm": 0.1}}, sparsity_coef=5.0),
    )
    return {k: replace(v, name=k) for k, v in std.items()}


RECIPES: dict[str, Recipe] = {}
"""Named recipes (filled on first import of ``sae.parts``; see ``_named``)."""

STANDARD = ("relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")
"""Names of the six standard architectures among ``RECIPES``."""
NEW = ("prolu", "sqrt_l1", "lp_anneal", "cauchy", "deep", "ghost_grads", "resample")
"""Names of the part-built architectures added with ``sae.parts``."""
