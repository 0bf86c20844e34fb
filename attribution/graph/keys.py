"""Typed node keys of an attribution graph.

Nodes are addressed by these keys, never by offsets into the adjacency matrix.

1. Four kinds, each a hashable NamedTuple:
   ``FeatureNode(layer, pos, feature)``, ``ErrorNode(layer, pos)``,
   ``TokenNode(pos, token_id)`` and ``LogitNode(pos, token_id, name="")``.
   A logit node along a custom direction (e.g. a logit difference) has
   ``token_id == -1`` and a non-empty ``name``; a vocabulary logit has
   ``token_id >= 0`` and ``name == ""``.
2. Equality and hashing include the kind, so ``TokenNode(0, 5) != ErrorNode(0, 5)``
   although the plain tuples are equal; keys of different kinds can share a dict.
3. String forms (``str(key)``), inverted by ``parse_key``:
   ``feat:{layer}:{pos}:{feature}``, ``err:{layer}:{pos}``, ``tok:{pos}:{token_id}``,
   ``logit:{pos}:{token_id}`` or ``logit:{pos}:{name}``.
4. ``sort_key(key, n_layers)`` gives the canonical graph order: tokens by position,
   then features and errors by (layer, pos, features before the error, feature id),
   then logits (their given order is kept by a stable sort).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from attribution.graph.errors import NodeKeyError

NODE_TYPES: tuple[str, ...] = ("token", "feature", "error", "logit")
"""Node types in canonical group order (features and errors share a group)."""

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def _typed_eq(self, other) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)


def _typed_ne(self, other) -> bool:
    return not _typed_eq(self, other)


def _typed_hash(self) -> int:
    return hash((self.kind, *self))


class FeatureNode(NamedTuple):
    """An active dictionary feature."""

    layer: int
    """Layer of the dictionary (0-based)."""
    pos: int
    """Token position (0-based)."""
    feature: int
    """Feature (latent) index within the dictionary."""

    kind = "feature"
    __eq__, __ne__, __hash__ = _typed_eq, _typed_ne, _typed_hash

    def __str__(self) -> str:
        return f"feat:{self.layer}:{self.pos}:{self.feature}"


class ErrorNode(NamedTuple):
    """The reconstruction error of one dictionary at one position."""

    layer: int
    """Layer of the dictionary (0-based)."""
    pos: int
    """Token position (0-based)."""

    kind = "error"
    __eq__, __ne__, __hash__ = _typed_eq, _typed_ne, _typed_hash

    def __str__(self) -> str:
        return f"err:{self.layer}:{self.pos}"


class TokenNode(NamedTuple):
    """An input token embedding."""

    pos: int
    """Token position (0-based)."""
    token_id: int
    """Vocabulary id of the token."""

    kind = "token"
    __eq__, __ne__, __hash__ = _typed_eq, _typed_ne, _typed_hash

    def __str__(self) -> str:
        return f"tok:{self.pos}:{self.token_id}"


class LogitNode(NamedTuple):
    """An output logit (a vocabulary token's logit or a custom direction)."""

    pos: int
    """Token position whose output is explained (usually the last)."""
    token_id: int
    """Vocabulary id, or -1 for a custom direction."""
    name: str = ""
    """Custom direction name (e.g. ``logit_diff``); empty for a vocabulary logit."""

    kind = "logit"
    __eq__, __ne__, __hash__ = _typed_eq, _typed_ne, _typed_hash

    def __str__(self) -> str:
        return f"logit:{self.pos}:{self.name or self.token_id}"


NodeKey = FeatureNode | ErrorNode | TokenNode | LogitNode
KEY_CLASSES = (FeatureNode, ErrorNode, TokenNode, LogitNode)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_key(key: NodeKey) -> NodeKey:
    """Validate a key's field values; return it unchanged or raise ``NodeKeyError``."""
    if not isinstance(key, KEY_CLASSES):
        raise NodeKeyError(f"not a node key: {key!r}; use FeatureNode/ErrorNode/TokenNode/LogitNode")
    ints = [v for f, v in zip(key._fields, key) if f != "name"]
    if not all(_is_int(v) for v in ints):
        raise NodeKeyError(f"node key fields must be ints: {key!r}")
    if isinstance(key, LogitNode):
        if key.pos < 0:
            raise NodeKeyError(f"negative position in {key!r}")
        if key.name:
            if not _NAME_RE.match(key.name) or key.token_id != -1:
                raise NodeKeyError(
                    f"custom logit {key!r}: name must match {_NAME_RE.pattern} and token_id be -1")
        elif key.token_id < 0:
            raise NodeKeyError(f"vocabulary logit {key!r} needs token_id >= 0 (or a name)")
    elif min(ints) < 0:
        raise NodeKeyError(f"negative field in {key!r}")
    return key


def parse_key(text: str) -> NodeKey:
    """Parse the string form of a key (``str(key)``) back into the typed key."""
    if isinstance(text, KEY_CLASSES):
        return check_key(text)
    if not isinstance(text, str):
        raise NodeKeyError(f"node key must be a string or a key, got {type(text).__name__}")
    parts = text.split(":")
    kind, args = parts[0], parts[1:]
    try:
        if kind == "feat" and len(args) == 3:
            return check_key(FeatureNode(*map(int, args)))
        if kind == "err" and len(args) == 2:
            return check_key(ErrorNode(*map(int, args)))
        if kind == "tok" and len(args) == 2:
            return check_key(TokenNode(*map(int, args)))
        if kind == "logit" and len(args) == 2:
            if re.fullmatch(r"-?\d+", args[1]):
                return check_key(LogitNode(int(args[0]), int(args[1])))
            return check_key(LogitNode(int(args[0]), -1, args[1]))
    except ValueError as exc:  # int() failed
        raise NodeKeyError(f"malformed node key {text!r}: {exc}") from None
    raise NodeKeyError(
        f"malformed node key {text!r}; expected feat:L:P:F, err:L:P, tok:P:ID, logit:P:ID or logit:P:NAME")


def as_key(key: NodeKey | str) -> NodeKey:
    """Accept a typed key or its string form; return the typed key."""
    return parse_key(key)


def key_layer(key: NodeKey, n_layers: int) -> int:
    """The ``layer`` column value of a key: tokens -1, logits ``n_layers``."""
    if isinstance(key, TokenNode):
        return -1
    if isinstance(key, LogitNode):
        return n_layers
    return key.layer


def sort_key(key: NodeKey, n_layers: int) -> tuple[int, int, int, int, int]:
    """Canonical order: (group, layer, pos, feature-before-error, feature)."""
    if isinstance(key, TokenNode):
        return (0, -1, key.pos, 0, 0)
    if isinstance(key, FeatureNode):
        return (1, key.layer, key.pos, 0, key.feature)
    if isinstance(key, ErrorNode):
        return (1, key.layer, key.pos, 1, 0)
    return (2, n_layers, 0, 0, 0)  # logits keep their given order (stable sort)


__all__ = [
    "NODE_TYPES",
    "ErrorNode",
    "FeatureNode",
    "LogitNode",
    "NodeKey",
    "TokenNode",
    "as_key",
    "check_key",
    "key_layer",
    "parse_key",
    "sort_key",
]
