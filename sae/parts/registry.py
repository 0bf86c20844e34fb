"""The part registry: ``register(kind, name)`` and ``part(kind, name, **params)``.

1. A part is a small class (a frozen dataclass whose fields are its parameters) of one
   of the ``KINDS``; ``@register(kind, name)`` files it under that name.
2. ``part(kind, name, **params)`` builds one; an unknown kind or name raises
   ``UnknownPartError`` naming the known ones, wrong parameters a ``ConfigError``
   listing the accepted ones.
Registration happens when a part module is imported; ``sae.parts`` imports the
built-in ones, so a new part is one file with a decorated class, imported once.
"""

from __future__ import annotations

import dataclasses

from sae.errors import ConfigError, UnknownArchitectureError

KINDS = ("encoder", "activation", "penalty", "decoder", "init", "dead", "schedule")
_REGISTRY: dict[str, dict[str, type]] = {k: {} for k in KINDS}


class UnknownPartError(UnknownArchitectureError):
    """A recipe names a part kind or part that is not registered."""


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise UnknownPartError(f"unknown part kind {kind!r}; expected one of {', '.join(KINDS)}")


def register(kind: str, name: str):
    """Class decorator: file the part class under (kind, name); re-registering replaces it."""
    _check_kind(kind)

    def deco(cls):
        cls.kind, cls.name = kind, name
        _REGISTRY[kind][name] = cls
        return cls

    return deco


def names(kind: str) -> tuple[str, ...]:
    """Registered names of a kind, sorted."""
    _check_kind(kind)
    return tuple(sorted(_REGISTRY[kind]))


def part_class(kind: str, name: str) -> type:
    """The class registered as (kind, name)."""
    _check_kind(kind)
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        raise UnknownPartError(f"unknown {kind} part {name!r}; known: "
                               f"{', '.join(names(kind))}") from None


def part(kind: str, name: str, **params):
    """An instance of the (kind, name) part with ``params`` (validated by the part)."""
    cls = part_class(kind, name)
    fields = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    bad = sorted(set(params) - set(fields))
    if bad:
        raise ConfigError(f"{kind} part {name!r} has no parameter(s) {bad}; it accepts "
                          f"{fields or 'none'}")
    return cls(**params)
