"""Typed activation sites.

A ``Site`` names one place in a transformer where an activation lives. Sites
are values, never free strings; strings appear only at the CLI and file
boundaries through ``Site.parse`` / ``str(site)``.

Kinds and shapes (B batch, T tokens, d d_model, H heads, dh head dim):
  1. ``resid_pre``   [B,T,d]   input of block ``layer``.
  2. ``resid_mid``   [B,T,d]   residual after the attention contribution.
  3. ``resid_post``  [B,T,d]   output of block ``layer``.
  4. ``attn_out``    [B,T,d]   attention's contribution to the residual
                               (after Gemma's post-attention norm).
  5. ``mlp_in``      [B,T,d]   input of the MLP (after its pre-norm).
  6. ``mlp_out``     [B,T,d]   MLP's contribution to the residual
                               (after Gemma's post-feedforward norm).
  7. ``attn_z``      [B,T,H,dh] per-head attention output before the output projection.
  8. ``attn_pattern``[B,H,T,T] softmax attention probabilities.

String form: ``L{layer}.{kind}`` (e.g. ``L3.mlp_in``); ``parse`` also accepts
``{layer}.{kind}``, ``{kind}.{layer}`` and TransformerLens-style
``blocks.{layer}.hook_{kind}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

SiteKind = Literal[
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_in", "mlp_out", "attn_z", "attn_pattern"
]
SITE_KINDS: tuple[str, ...] = get_args(SiteKind)
RESIDUAL_WIDTH_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_in", "mlp_out")

# Order of kinds within one block, used to sort sites by forward order.
_KIND_ORDER = {
    "resid_pre": 0, "attn_pattern": 1, "attn_z": 2, "attn_out": 3,
    "resid_mid": 4, "mlp_in": 5, "mlp_out": 6, "resid_post": 7,
}
_TL_ALIASES = {"hook_z": "attn_z", "hook_pattern": "attn_pattern", "hook_resid_pre": "resid_pre",
               "hook_resid_mid": "resid_mid", "hook_resid_post": "resid_post",
               "hook_attn_out": "attn_out", "hook_mlp_in": "mlp_in", "hook_mlp_out": "mlp_out"}


class SiteError(ValueError):
    """A site string or value is malformed, or does not exist in a model."""


@dataclass(frozen=True)
class Site:
    """One activation site of a transformer block."""

    layer: int
    """Block index, 0-based."""
    kind: SiteKind
    """Which activation within the block; see the module docstring."""

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise SiteError(f"site layer must be a non-negative int, got {self.layer!r}")
        if self.kind not in SITE_KINDS:
            raise SiteError(
                f"unknown site kind {self.kind!r}; expected one of {', '.join(SITE_KINDS)}"
            )

    def __str__(self) -> str:
        return f"L{self.layer}.{self.kind}"

    @property
    def order(self) -> tuple[int, int]:
        """Sort key following the forward pass."""
        return (self.layer, _KIND_ORDER[self.kind])

    @property
    def is_residual_width(self) -> bool:
        """True when the activation has width d_model."""
        return self.kind in RESIDUAL_WIDTH_KINDS

    def check(self, n_layers: int) -> "Site":
        """Raise ``SiteError`` if the layer does not exist in an ``n_layers`` model."""
        if self.layer >= n_layers:
            raise SiteError(
                f"site {self} is out of range: the model has {n_layers} layers (0..{n_layers - 1})"
            )
        return self

    @classmethod
    def parse(cls, text: "str | Site") -> "Site":
        """Parse ``L3.mlp_in``, ``3.mlp_in``, ``mlp_in.3`` or ``blocks.3.hook_mlp_in``."""
        if isinstance(text, Site):
            return text
        s = str(text).strip()
        m = (re.fullmatch(r"[Ll]?(\d+)[.:/@](\w+)", s)
             or re.fullmatch(r"blocks\.(\d+)\.(?:attn\.)?(hook_\w+)", s))
        if m:
            layer, kind = int(m.group(1)), _TL_ALIASES.get(m.group(2), m.group(2))
        else:
            m = re.fullmatch(r"(\w+?)[.:@][Ll]?(\d+)", s)
            if not m:
                raise SiteError(
                    f"cannot parse site {text!r}; write it as L<layer>.<kind>, e.g. L3.mlp_in "
                    f"(kinds: {', '.join(SITE_KINDS)})"
                )
            kind, layer = m.group(1), int(m.group(2))
        return cls(layer, kind)  # type: ignore[arg-type]


def parse_sites(text: str, n_layers: int | None = None) -> list[Site]:
    """Parse a comma list; ``*`` as the layer expands to every layer (needs n_layers)."""
    out: list[Site] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.startswith(("L*.", "*.")):
            if n_layers is None:
                raise SiteError(f"{part!r} needs the model's layer count to expand '*'")
            kind = part.split(".", 1)[1]
            out.extend(Site(i, kind) for i in range(n_layers))  # type: ignore[arg-type]
        else:
            out.append(Site.parse(part))
    if n_layers is not None:
        for s in out:
            s.check(n_layers)
    return out
