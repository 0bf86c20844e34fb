"""The linearised replacement model (DESIGN B4), as a function of write deltas.

Under this forward every path from a node's write to a target is linear:
  1. ``freeze``: stop-gradient on every attention pattern and every norm
     scale, the final norm included (forward values unchanged); patterns and
     MLP outputs are the clean state's constants, so MLX never recomputes
     QKᵀ, softmax or the MLPs for the B tiled copies (they are dead code).
  2. Each unit's output site becomes ``stop_gradient(activation) + delta``:
     a constant (reconstruction + error, whose value is the clean activation)
     plus a zero ``delta`` where sources write. A skip transcoder adds
     ``s − stop_gradient(s)`` with s = x_in @ W_skip, so its forward value is
     unchanged and W_skip is the only route through that MLP.
  3. MLPs that no transcoder replaces are frozen the same way
     (``unreplaced_mlps="frozen"``, exact for the linear model) or left live
     (``"gradient"``, a local derivative only: not exact for finite changes).
  4. An SAE at a site cuts the residual stream there: downstream sees only its
     (constant) features and error, so upstream influence on later nodes runs
     through the SAE's feature nodes. Its encoder input is read before the cut.
  5. Token nodes write at resid_pre[0] through ``deltas[0]``.
The forward returns the encoder inputs (targets' pre-activations are linear
in them) and the final-norm output (logit directions are read there).

What is exact with SAEs (sites whose input path crosses an MLP without a
transcoder, e.g. an SAE at resid_post l with a plain MLP at layer l):
  - exact: every edge equals the frozen-model effect of the source's write
    (attention patterns, norm scales, all MLP outputs and all other features
    held at their clean values), to fp32 round-off;
  - not represented: how that MLP would respond to the change. It is frozen,
    so MLP-mediated influence is neither an edge nor part of any error node
    (error nodes hold only the dictionaries' clean reconstruction errors).
    ``unreplaced_mlps="gradient"`` adds the MLP's local Jacobian instead;
    edges are then first-order derivatives, exact only for infinitesimal
    changes, not for doubling a feature.
Because the map deltas -> outputs is linear, a VJP of it gives graph rows and
a JVP gives the frozen forward change of a finite write (constrained steering).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import mlx.core as mx

from attribution.replacement.forward import hooked_forward
from attribution.replacement.model import TOKEN_SITE, CleanState, ReplacementModel
from attribution.sites import Site

UnreplacedMlps = Literal["frozen", "gradient"]


class LinearOut(NamedTuple):
    """Outputs of ``linear_forward``."""

    norm_out: mx.array
    """[B,T,d] final-norm output."""
    x_in: dict
    """layer -> [B,T,d_in] encoder input of the unit (before an SAE's cut)."""


def write_sites(rm: ReplacementModel) -> list[Site]:
    """Sites of ``deltas``: token site first, then each unit's output site by layer."""
    return [TOKEN_SITE] + [u.out_site for u in rm.units.values()]


def _unit_hooks(rm: ReplacementModel, state: CleanState, layer: int, delta: mx.array, xin: dict):
    u = rm.units[layer]
    if u.kind == "sae":
        def cut(x, l=layer):
            xin[l] = x
            return mx.stop_gradient(x) + delta
        return [(u.out_site, cut)], []

    def read(x, l=layer):
        xin[l] = x
        return x

    const = state.out[layer]

    def replace(y, l=layer):
        # The clean value, not stop_gradient(y): y is then dead code and MLX never computes the MLP.
        out = mx.broadcast_to(const, y.shape)
        if u.W_skip is not None:
            s = xin[l] @ u.W_skip
            out = out + (s - mx.stop_gradient(s))
        return out + delta

    return [(u.out_site, replace)], [(u.in_site, read)]


def _constant(value: mx.array):
    return lambda y: mx.broadcast_to(value, y.shape)


def linear_forward(rm: ReplacementModel, state: CleanState, deltas: Sequence[mx.array],
                   unreplaced_mlps: UnreplacedMlps = "frozen") -> LinearOut:
    """The linearised forward on the prompt tiled to B = deltas[0].shape[0] copies."""
    model = rm.model
    b = int(deltas[0].shape[0])
    toks = mx.broadcast_to(state.tokens, (b, state.tokens.shape[1]))
    xin: dict = {}
    edits = [(TOKEN_SITE, lambda x: x + deltas[0])]
    reads = []
    for k, layer in enumerate(rm.units):
        e, r = _unit_hooks(rm, state, layer, deltas[k + 1], xin)
        edits += e
        reads += r
    if unreplaced_mlps == "frozen":
        written = {u.out_site for u in rm.units.values() if u.kind != "sae"}
        edits += [(Site(l, "mlp_out"), _constant(state.mlp_out[l])) for l in range(model.n_layers)
                  if Site(l, "mlp_out") not in written]
    # Frozen patterns are the clean ones: returning them makes QK^T and softmax dead code.
    edits += [(Site(l, "attn_pattern"), _constant(p)) for l, p in state.patterns.items()]
    fo = hooked_forward(model, toks, edits=edits, reads=reads, freeze=True)
    return LinearOut(fo.norm_out, xin)


def zero_deltas(rm: ReplacementModel, state: CleanState, batch: int) -> list[mx.array]:
    """Zero write deltas [B,T,d] for every write site."""
    t = state.tokens.shape[1]
    return [mx.zeros((batch, t, rm.model.d_model)) for _ in write_sites(rm)]


__all__ = ["LinearOut", "UnreplacedMlps", "linear_forward", "write_sites", "zero_deltas"]
