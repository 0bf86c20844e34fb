"""``ComposedDictionary``: a ``Dictionary`` whose hooks delegate to the parts of a ``Recipe``.

1. Construction builds one part per kind from the recipe (``hparams["recipe"]`` holds its
   JSON form, so ``describe()`` / save / load / ``clone_empty`` carry it), lets each part
   check the dictionary and add its arrays (``setup``), then drops W_enc for a tied decoder.
2. Encode: pre = encoder.pre_acts(x) (training: encoder.train_pre_acts, with the b_dec
   folding trick of the linear encoder); f = activation.train(pre) / activation.infer.
   ``pre_acts`` returns activation.protocol_pre(pre) (gated: pi_mag; prolu: the bias-free
   projection) so ``activation(pre_acts(x))`` is the inference map.
3. Loss = decoder.recon (mse, or matryoshka's nested sum) + sparsity_coef *
   penalty(activation.penalty_input(f, pre)) + activation.aux + dead.aux. With
   hparam ``decoder="sparse"`` (supported recipes only, checked at construction) the same
   loss comes from the active (token, latent) pairs (``sae.parts.sparse``).
4. After each optimiser step the trainer calls ``post_update`` (decoder.post_update: the
   unit-norm constraint) and ``update_stats`` (activation: the BatchTopK EMA threshold).
5. ``folded`` scales W_enc (or W_dec^T when tied, which unties), W_dec, b_dec, W_skip and
   the encoder's own input-side arrays (deep encoder: W_h0).
6. ``export_form`` gives the file formats the ReLU / TopK / JumpReLU form when the
   encoder is affine; otherwise ``UnknownArchitectureError``.
The parts hold no arrays, so checkpoints, ``mx.compile`` and save/load see one module.
The six standard classes (``sae.arch``) subclass this and override ``make_recipe`` (their
hparams -> a recipe), keeping their ``arch`` strings and formats; TopK / BatchTopK add
the sparse decoder path as their ``loss``.
"""

from __future__ import annotations

from types import SimpleNamespace

import mlx.core as mx
import numpy as np

from sae.dictionary import Dictionary, LossContext, _flat
from sae.errors import ConfigError, ShapeMismatchError, UnknownArchitectureError
from sae.parts.encoders import LinearEncoder
from sae.parts.recipe import Recipe
from sae.parts.registry import KINDS
from sae.parts.separable import row_separable
from sae.parts.sparse import check_sparse, sparse_loss


class ComposedDictionary(Dictionary):
    """A dictionary made of registered parts (module docstring)."""

    arch = "composed"

    def __init__(self, d_in: int, width: int, **kw):
        super().__init__(d_in, width, **kw)
        r = self.make_recipe()
        object.__setattr__(self, "recipe", r)
        if type(self).loss is ComposedDictionary.loss:  # TopK / BatchTopK: their own pair path
            _check_decoder(self.hparams, r)
        object.__setattr__(self, "parts", SimpleNamespace(**{k: r.build(k) for k in KINDS}))
        for k in KINDS:
            getattr(self.parts, k).check(self)
        for k in KINDS:
            getattr(self.parts, k).setup(self)
        if self.parts.decoder.tied:
            del self["W_enc"]
        coef = r.sparsity_coef if r.sparsity_coef is not None else self.parts.penalty.default_coef
        object.__setattr__(self, "default_sparsity_coef", float(coef))
        object.__setattr__(self, "dec_init_norm", float(self.parts.init.dec_norm))

    def _check_hparams(self) -> None:
        if "recipe" not in self.hparams or self.hparams["recipe"] is None:
            raise ConfigError("a composed dictionary needs recipe= (a Recipe, dict or name)")
        extra = sorted(set(self.hparams) - {"recipe", "decoder"})
        if extra:
            raise ConfigError(f"a composed dictionary takes its hyperparameters from the recipe; "
                              f"unexpected {extra}")
        self.hparams["recipe"] = Recipe.coerce(self.hparams["recipe"]).to_dict()  # JSON-able

    def make_recipe(self) -> Recipe:
        """The recipe: ``hparams["recipe"]`` here; the standard classes map their hparams."""
        return Recipe.coerce(self.hparams["recipe"])

    # ---- what the trainer asks ------------------------------------------------------
    @property
    def b_dec_init(self) -> str | None:
        """How b_dec starts, when the recipe's init says (else the TrainConfig decides)."""
        return self.parts.init.b_dec

    @property
    def uses_dead_mask(self) -> bool:
        """Whether the dead-latent part needs ``ctx.dead`` / ``ctx.use_aux``."""
        return bool(self.parts.dead.needs_dead)

    @property
    def resample_every(self) -> int | None:
        """Steps between host-side resamplings (the ``resample`` dead part), else None."""
        return self.parts.dead.resample_every

    # ---- hooks --------------------------------------------------------------------------
    def enc_weight(self) -> mx.array:
        """The encoder matrix [d_in, width] (W_dec^T for a tied decoder)."""
        return self.W_dec.T if self.parts.decoder.tied else self.W_enc

    def _check_x(self, x) -> None:
        if x.shape[-1] != self.d_in:
            raise ShapeMismatchError(f"{self.recipe.name} dictionary expects d_in={self.d_in}, "
                                     f"got activations of width {x.shape[-1]}")

    def pre_acts(self, x: mx.array) -> mx.array:
        self._check_x(x)
        return self.parts.activation.protocol_pre(self, self.parts.encoder.pre_acts(self, x))

    def train_pre_acts(self, x: mx.array, bias=None) -> mx.array:
        """The encoder's training pre-activations; ``bias``: ``train_enc_bias()`` when the
        caller already has it (affine encoders only; the sparse TopK path shares it)."""
        self._check_x(x)
        if bias is not None and type(self.parts.encoder).train_pre_acts is LinearEncoder.train_pre_acts:
            return mx.addmm(bias, x, self.enc_weight())
        return self.parts.encoder.train_pre_acts(self, x)

    def train_enc_bias(self) -> mx.array:
        W = self.enc_weight()
        return self.b_enc - self.b_dec @ W if self.apply_b_dec_to_input else self.b_enc

    def activation(self, pre: mx.array) -> mx.array:
        return self.parts.activation.infer(self, pre)

    def train_activation(self, pre: mx.array):
        return self.parts.activation.train(self, pre)

    def decode(self, f: mx.array) -> mx.array:
        return self.parts.decoder.decode(self, f)

    def sparsity(self, f, pre, ctx: LossContext | None = None):
        ctx = ctx if ctx is not None else LossContext(0.0, None)
        a = self.parts.activation.penalty_input(self, f, pre)
        return self.parts.penalty(self, a, pre, ctx)

    def aux_loss(self, x, y, pre, f, y_hat, ctx: LossContext):
        return (self.parts.activation.aux(self, x, y, pre, f, y_hat, ctx)
                + self.parts.dead.aux(self, x, y, pre, f, y_hat, ctx))

    def update_stats(self, stats: dict) -> None:
        self.parts.activation.update_stats(self, stats)

    def post_update(self) -> None:
        self.parts.decoder.post_update(self)

    def train_forward(self, x):
        pre = self.train_pre_acts(x)
        f, stats = self.train_activation(pre)
        _, _, y_hat = self.parts.decoder.recon(self, x, mx.zeros((1, self.d_out)), f)
        return pre, f, y_hat, stats

    @property
    def needs_eager_step(self) -> bool:
        """True on the sparse pair path: its loss reads the active count on the host,
        which ``mx.compile`` forbids, so the trainer runs the step uncompiled."""
        return (self.hparams.get("decoder", "dense") == "sparse"
                and type(self).loss is ComposedDictionary.loss
                and self.parts.activation.name != "topk")  # topk pairs: a fixed count

    @property
    def row_separable(self) -> bool:
        """Whether the loss is a mean of per-row terms (``sae.parts.separable``), so a step
        may split its batch: the dense loss of whitelisted parts only (the pair path reads
        the host per batch and runs eagerly; TopK / BatchTopK have their own loss)."""
        return (type(self).loss is ComposedDictionary.loss
                and self.hparams.get("decoder", "dense") == "dense"
                and row_separable(self.recipe))

    def loss(self, x: mx.array, y: mx.array, ctx: LossContext):
        # decoder="sparse" (checked at construction, ``sae.parts.sparse.unsupported``): the
        # same loss from the active (token, latent) pairs only; otherwise the dense loss.
        if self.hparams.get("decoder", "dense") == "sparse":
            return sparse_loss(self, x, y, ctx)
        return self.dense_loss(x, y, ctx)

    def dense_loss(self, x: mx.array, y: mx.array, ctx: LossContext):
        """The loss on the dense [batch, width] activation (module docstring, 3)."""
        pre = self.train_pre_acts(x)
        f, stats = self.train_activation(pre)
        recon, mse, y_hat = self.parts.decoder.recon(self, x, y, f)
        sp = self.sparsity(f, pre, ctx)
        aux = self.aux_loss(x, y, pre, f, y_hat, ctx)
        # one reduction over [batch, width] gives both: firings per latent -> fired, and
        # their total / batch -> l0 (exact: integer counts)
        hits = (f > 0).astype(mx.float32).sum(axis=0)
        stats = dict(stats, mse=mse, sparsity=sp, aux=aux, l0=hits.sum() / f.shape[0],
                     fired=hits > 0)
        return recon + ctx.sparsity_coef * sp + aux, stats

    # ---- initialisation, units, export ---------------------------------------------------
    def init_weights(self, key: mx.array, b_dec: mx.array | None = None) -> None:
        self.parts.init.init(self, key, b_dec)

    def folded(self, s_in: float, s_out: float) -> ComposedDictionary:
        if self.apply_b_dec_to_input and abs(s_in - s_out) > 1e-6 * max(s_in, s_out):
            raise ConfigError("an SAE with b_dec applied to its input needs s_in == s_out")
        params = dict(_flat(self.parameters()))
        if self.parts.decoder.tied:  # one matrix cannot carry both scales: untie
            params["W_enc"] = self.W_dec.T
            new = ComposedDictionary(
                self.d_in, self.width, d_out=self.d_out, in_site=self.in_site,
                out_site=self.out_site, skip=self.W_skip is not None,
                apply_b_dec_to_input=self.apply_b_dec_to_input,
                recipe=self.recipe.with_params(decoder={"tied": False}))
        else:
            new = self.clone_empty()
        params["W_enc"] = params["W_enc"] * s_in
        params["W_dec"] = params["W_dec"] / s_out
        params["b_dec"] = params["b_dec"] / s_out
        if self.W_skip is not None:
            params["W_skip"] = params["W_skip"] * (s_in / s_out)
        self.parts.encoder.fold(self, params, s_in)
        new.load_arrays(params)
        return new

    def export_form(self):
        """(W, b, kind, threshold, k) as numpy for ``sae.io`` (module docstring, 6)."""
        lin = self.parts.encoder.linear_form(self)
        if lin is None:
            raise UnknownArchitectureError(
                f"cannot export a {self.parts.encoder.name!r}-encoder dictionary to a "
                "ReLU/TopK/JumpReLU file format (no affine encoder); save it with "
                "sae.save_dictionary instead")
        W, b = np.array(lin[0]), np.array(lin[1])
        return self.parts.activation.export_form(self, W, b)


def _check_decoder(hparams: dict, recipe: Recipe) -> None:
    """``decoder``: absent / "dense", or "sparse" for a recipe the pair path supports."""
    dec = hparams.get("decoder", "dense")
    if dec not in ("dense", "sparse"):
        raise ConfigError(f"decoder must be 'dense' or 'sparse', got {dec!r}")
    if dec == "sparse":
        check_sparse(recipe)


def composed(name_or_recipe, **params) -> Recipe:
    """A recipe by name (``RECIPES``) or from a Recipe, with ``params`` merged per kind."""
    r = Recipe.coerce(name_or_recipe)
    return r.with_params(**params) if params else r


__all__ = ["ComposedDictionary", "composed"]
