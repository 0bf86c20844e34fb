"""``ReplacementModel``: a model with dictionaries spliced in, and its clean state.

The replacement model replaces each dictionary's output site by
``reconstruction + error``, where error = (true activation − reconstruction)
on the clean prompt, so its forward pass equals the original one exactly.

Algorithm (``ReplacementModel.clean``):
  1. One forward of the original model reads resid_pre[0] (token embeddings,
     incl. position embeddings), every unit's input site and output site,
     every MLP output and attention pattern (constants of the linearised
     model: n_layers·H·T² floats), and the final-norm output.
  2. Per unit: pre = pre_acts(x_in); latents f = activation(pre) (a CLT's
     nonlinearity runs jointly over its layers); reconstruction at the output
     site (decoder, bias, skip term; CLT: sum over source layers i <= j);
     error = clean activation − reconstruction.
  3. Everything is kept unbatched ([T, ...]) in a ``CleanState``.
  4. Finite check, evaluated with the state: one ``all(isfinite)`` per read
     site, per error node and on the logits; a failure names the first
     non-finite one in forward order (NaN propagates, so that one is the
     source) and whether the model or a dictionary produced it.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from attribution.model.integrity import check_finite
from attribution.model.tokens import as_tokens
from attribution.replacement.errors import DictionaryMismatchError
from attribution.replacement.forward import hooked_forward
from attribution.replacement.units import (
    Unit,
    activations,
    make_units,
    pre_acts,
    reconstruct,
)
from attribution.sites import Site

TOKEN_SITE = Site(0, "resid_pre")
"""Where token-embedding nodes write."""


@dataclass(frozen=True, eq=False)
class CleanState:
    """Activations of one prompt in the (unmodified) model, per unit layer; [T, ...] arrays."""

    tokens: mx.array
    """[1,T] int32 tokens."""
    logits: mx.array
    """[T,V] clean logits."""
    norm_out: mx.array
    """[T,d] final-norm output (pre-unembedding)."""
    embed: mx.array
    """[T,d] resid_pre[0]: what token nodes write."""
    x_in: dict
    """layer -> [T,d_in] encoder input."""
    pre: dict
    """layer -> [T,m] pre-activations."""
    acts: dict
    """layer -> [T,m] latent activations."""
    out: dict
    """layer -> [T,d] clean activation at the unit's output site."""
    recon: dict
    """layer -> [T,d] reconstruction (incl. bias and skip)."""
    error: dict
    """layer -> [T,d] out − recon (the error node's write vector)."""
    mlp_out: dict
    """layer -> [T,d] clean MLP output of every layer (constants of the linearised model)."""
    patterns: dict
    """layer -> [1,H,T,T] clean attention patterns (constants of the linearised model)."""


class ReplacementModel:
    """A ``Model`` plus validated dictionary units (see the module docstring)."""

    def __init__(self, model, dictionaries) -> None:
        self.model = model
        self.units: dict[int, Unit] = make_units(model, dictionaries)
        self._encoders: dict[int, tuple] = {}

    @property
    def layers(self) -> list[int]:
        """Layers that carry a dictionary, ascending."""
        return list(self.units)

    def encoder(self, layer: int):
        """Cached affine encoder (W [d_in,m], b [m]) of ``layer``'s unit."""
        from attribution.replacement.units import encoder

        if layer not in self._encoders:
            self._encoders[layer] = encoder(self.units[layer])
            mx.eval(*self._encoders[layer])
        return self._encoders[layer]

    def describe(self) -> list[dict]:
        """JSON-ready description of the dictionaries (for graph metadata)."""
        seen: dict[str, dict] = {}
        for u in self.units.values():
            entry = seen.setdefault(u.name, {"name": u.name, "kind": u.kind, "width": u.width,
                                             "class": type(u.dictionary).__name__,
                                             "in_sites": [], "out_sites": [],
                                             "skip": u.W_skip is not None})
            entry["in_sites"].append(str(u.in_site))
            entry["out_sites"].append(str(u.out_site))
        return list(seen.values())

    def clean(self, tokens) -> CleanState:
        """The clean state of one prompt (module docstring)."""
        toks = as_tokens(tokens, self.model)
        if toks.shape[0] != 1:
            raise DictionaryMismatchError(
                f"attribution runs on one prompt at a time, got a batch of {toks.shape[0]}")
        cache: dict = {}

        def reader(site):
            def read(x):
                cache[site] = x[0]
                return x
            return read

        n = self.model.n_layers
        sites = [TOKEN_SITE] + [s for u in self.units.values() for s in (u.in_site, u.out_site)]
        sites += [Site(l, "mlp_out") for l in range(n)]
        sites = list(dict.fromkeys(sites))
        patterns: dict = {}

        def pattern_reader(layer):
            def read(p):
                patterns[layer] = p[:1]
                return p
            return read
        reads = [(s, reader(s)) for s in sites]
        reads += [(Site(l, "attn_pattern"), pattern_reader(l)) for l in range(n)]
        fo = hooked_forward(self.model, toks, reads=reads)
        x_in = {l: cache[u.in_site] for l, u in self.units.items()}
        pres = {l: pre_acts(u, x_in[l]) for l, u in self.units.items()}
        acts = activations(self.units, pres)
        out = {l: cache[u.out_site] for l, u in self.units.items()}
        recon = {l: reconstruct(u, self.units, acts, x_in[l]) for l, u in self.units.items()}
        error = {l: out[l] - recon[l] for l in self.units}
        mlp_out = {l: cache[Site(l, "mlp_out")] for l in range(n)}
        state = CleanState(toks, fo.logits[0], fo.norm_out[0], cache[TOKEN_SITE], x_in, pres, acts,
                           out, recon, error, mlp_out, patterns)
        checks = _finite_checks(cache, error, self.units, fo.logits[0], n)
        flags = mx.stack([mx.isfinite(a).all() for _, a, _ in checks])
        mx.eval(state.logits, state.norm_out, state.embed, x_in, pres, acts, out, recon, error,
                mlp_out, patterns, flags)
        for ok, (name, a, fix) in zip(flags.tolist(), checks):
            if not ok:
                check_finite(name, a, fix=fix)  # raises, with NaN / inf counts
        return state


def _finite_checks(cache: dict, error: dict, units: dict, logits, n_layers: int) -> list:
    """(name, array, fix) of every clean activation worth checking, in forward order."""
    model_fix = ("the model produced them on this prompt (corrupt weights, or an overflow in "
                 "low precision): reload it with load_model, which checks the weights, or use "
                 "float32 weights")
    keyed = [((*s.order, 0), f"activation {s}", a, model_fix) for s, a in cache.items()]
    for l, e in error.items():
        u = units[l]
        keyed.append(((*u.out_site.order, 1), f"reconstruction error at {u.out_site}", e,
                      f"the dictionary {u.name or f'at layer {l}'} produced them (NaN/inf "
                      "weights, or an overflow on this input): check or retrain it"))
    keyed.append(((n_layers, 0, 0), "logits", logits,
                  "the final norm or unembedding produced them (an overflow in low precision?): "
                  "use float32 weights"))
    keyed.sort(key=lambda k: k[0])
    return [(name, a, fix) for _, name, a, fix in keyed]


__all__ = ["TOKEN_SITE", "CleanState", "ReplacementModel"]
