"""The dictionary protocol: what the attribution layer needs from an SAE / transcoder.

``attribution`` must not import ``sae``; it consumes any object that has this
shape. All arrays are in the model's raw activation units (any training-time
normalisation is folded into the weights).

Computation, for input ``x`` [..., d_in] read at ``in_site``:
  1. ``pre = pre_acts(x)``          [..., width]  affine encoder (b_dec subtraction folded in)
  2. ``f = activation(pre)``        [..., width]  ReLU / TopK / JumpReLU nonlinearity
  3. ``y = decode(f)``              [..., d_out]  ``f @ W_dec + b_dec`` (no skip term)
  4. prediction at ``out_site`` = ``y + x @ W_skip`` when ``W_skip`` is not None.

``encode(x) == activation(pre_acts(x))``. For an SAE ``in_site == out_site``.

Gated dictionaries: ``pre_acts`` returns the *magnitude* pre-activation
pi_mag; because W_mag = exp(r) * W_gate, the gate pi_gate > 0 is equivalent to
pi_mag > theta with theta = b_mag - exp(r) * b_gate, so ``activation`` is the
exact JumpReLU with threshold max(theta, 0).

Cross-layer transcoders satisfy ``CrossLayerDictionary``: one encoder per
source layer, and the prediction at target layer j sums ``decode_to(i, j, f_i)``
over sources i <= j.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from attribution.sites import Site

Array = Any  # mlx.core.array; kept loose so this module does not import mlx


@runtime_checkable
class Dictionary(Protocol):
    """A single-site sparse dictionary (SAE, transcoder, skip transcoder)."""

    in_site: Site | None
    """Site the encoder reads (None when trained on unnamed data)."""
    out_site: Site | None
    """Site the decoder predicts; equals ``in_site`` for an SAE."""
    d_in: int
    """Input width."""
    d_out: int
    """Output width."""
    width: int
    """Number of latents m."""

    def pre_acts(self, x: Array) -> Array:
        """Affine encoder on raw activations: [..., d_in] -> [..., width]."""

    def activation(self, pre: Array) -> Array:
        """The nonlinearity: [..., width] pre-activations -> latent activations."""

    def encode(self, x: Array) -> Array:
        """``activation(pre_acts(x))``."""

    def decode(self, f: Array) -> Array:
        """``f @ W_dec + b_dec`` in raw units, without the skip term."""

    @property
    def W_dec(self) -> Array:
        """Write vectors [width, d_out] in raw units."""

    @property
    def W_skip(self) -> Array | None:
        """Skip weights [d_in, d_out] (prediction adds ``x @ W_skip``) or None."""


@runtime_checkable
class CrossLayerDictionary(Protocol):
    """A cross-layer transcoder: encoders at each source layer, decoders to j >= i."""

    in_sites: Sequence[Site]
    """Encoder sites, one per layer (index i)."""
    out_sites: Sequence[Site]
    """Target sites, one per layer (index j)."""
    d_in: int
    d_out: int
    width: int
    """Latents per source layer."""
    b_dec: Array
    """Decoder bias [n_layers, d_out]: target j adds b_dec[j]."""

    def pre_acts_at(self, i: int, x: Array) -> Array:
        """Encoder of source layer i: [..., d_in] -> [..., width]."""

    def activation(self, pre: Array) -> Array:
        """The nonlinearity on [..., n_layers, width] (TopK is joint over layers; ReLU,
        JumpReLU and BatchTopK's global threshold act elementwise)."""

    def decoder(self, i: int) -> Array:
        """Write vectors of source i: [width, n_layers - i, d_out] (targets j = i..L-1)."""

    def decode_to(self, i: int, j: int, f: Array) -> Array:
        """Contribution of source i latents ``f`` to target j (j >= i), without bias."""
