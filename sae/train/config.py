"""Training configuration (frozen dataclass, validated in ``__post_init__``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from attribution.sites import Site
from sae.errors import ConfigError, UnknownArchitectureError

Kind = Literal["sae", "transcoder", "skip_transcoder", "clt", "crosscoder"]
Arch = Literal["relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka"]
KINDS = ("sae", "transcoder", "skip_transcoder", "clt", "crosscoder")
_SINGLE = ("sae", "transcoder", "skip_transcoder")  # one input site: relu / recipes may go sparse
ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")


@dataclass(frozen=True)
class TrainConfig:
    """One family of dictionaries (one per site) trained from a shared activation stream."""

    kind: Kind
    """"sae" (reconstruct the site), "transcoder", "skip_transcoder" (adds W_skip x), "clt", or
    "crosscoder" (one dictionary reading and writing all ``sites``; ``sae.arch.crosscoder``)."""
    arch: Arch
    """Architecture: relu, topk, batchtopk, jumprelu, gated or matryoshka (CLT: not gated/matryoshka);
    "composed" with ``recipe``, or a named recipe of ``sae.parts.RECIPES`` (e.g. "prolu")."""
    sites: tuple = ()
    """Input sites (Site or "L3.mlp_in" strings); one dictionary per site (one CLT over all)."""
    targets: tuple | None = None
    """Output sites for transcoders/CLTs, same length as ``sites``; default same layer, ``target_kind``."""
    target_kind: str = "mlp_out"
    """Site kind predicted by transcoders when ``targets`` is None."""
    width: int | None = None
    """Number of latents m (per layer for a CLT); or give ``expansion``."""
    expansion: float | None = None
    """width = round(expansion * d_in) when ``width`` is None."""
    k: int = 32
    """Active latents per token for topk / batchtopk / matryoshka (mean, for batch variants)."""
    total_tokens: int = 2 ** 22
    """Training tokens; steps = total_tokens // batch_tokens."""
    batch_tokens: int = 4096
    """Tokens per optimiser step."""
    lr: float | None = None
    """Adam learning rate; None -> 2e-4 * sqrt(2^14 / width)."""
    warmup_steps: int = 1000
    """Linear LR warm-up steps (capped at 10% of the run)."""
    decay_frac: float = 0.2
    """Fraction of steps at the end over which the LR decays linearly to 0."""
    grad_clip: float = 1.0
    """Global gradient-norm clip per dictionary (0 disables)."""
    adam_betas: tuple = (0.9, 0.999)
    """Adam (beta1, beta2)."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    sparsity_coef: float | None = None
    """L1 / L0 coefficient (relu, jumprelu, gated, CLT); None -> the architecture default."""
    sparsity_warmup_frac: float = 0.05
    """Fraction of steps over which the sparsity coefficient ramps linearly from 0."""
    dead_tokens: int = 10_000_000
    """A latent is dead after this many tokens without firing."""
    k_aux: int | None = None
    """AuxK latents (topk family); None -> d_out // 2."""
    aux_coef: float = 1.0 / 32
    """AuxK coefficient."""
    bandwidth: float = 0.05
    """JumpReLU straight-through kernel width."""
    threshold_init: float = 0.01
    """Initial JumpReLU threshold."""
    l0_form: Literal["step", "tanh"] = "step"
    """JumpReLU L0 penalty: Heaviside step (STE) or Anthropic's tanh."""
    pre_act_coef: float = 3e-6
    """JumpReLU pre-activation loss coefficient."""
    threshold_ema: float = 0.1
    """BatchTopK EMA rate of the inference threshold (a ~10-step window: at 0.01 the early,
    much higher batch thresholds dominate short runs; ``sae.parts.activations.BatchTopK``)."""
    group_fractions: tuple = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 17 / 32)
    """Matryoshka nested group sizes as fractions of the width (sum to 1)."""
    decoder: Literal["auto", "dense", "sparse"] = "auto"
    """Dense matmuls, or only the active (token, latent) pairs forward and backward. TopK /
    BatchTopK: "auto" picks sparse for TopK when width >= 4096 and width >= 96 k, for
    BatchTopK when width >= 8192 and width >= 128 k (crossovers measured on CPU with
    ``benchmarks/sae_train.py``). ReLU and recipes (single-site kinds): "sparse" needs parts
    the pair loss supports (``sae.parts.sparse``: relu / prolu-"relu" / topk activations,
    elementwise penalties; not jumprelu, gated, matryoshka, ghost_grads), else ConfigError;
    its relu-family steps run uncompiled (one host sync per step) and fall back to the dense
    loss while more than 1/160 of the entries are active. "auto" picks sparse only for
    topk-activated recipes (TopK's rule); relu-family recipes stay dense under "auto"."""
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    """How b_dec starts (from the first batch)."""
    normalize: bool = True
    """Scale each site to E||x|| = sqrt(d) during training (folded back on return/save)."""
    resample_every: int | None = None
    """Steps between dead-latent resampling (relu / jumprelu / gated); None disables."""
    seed: int = 0
    """Seed of initialisation and data order."""
    log_every: int = 100
    """Steps between metric syncs (logs, callback, dead-latent check)."""
    compile: bool = True
    """Wrap each step in ``mx.compile`` (fuses the elementwise passes over [batch, width]:
    1.2-1.4x faster steps on Linux CPU; turn off to debug a step eagerly). On CPU it needs a
    C++ compiler (MLX JIT-builds kernels); without one steps run eagerly."""
    fuse_elementwise: bool = True
    """Run the Adam update as one compiled elementwise kernel per tensor (needs a C++ compiler;
    falls back to eager ops without one)."""
    split_batch: bool = True
    """On CPU, run each step as two half-batches on two CPU streams with single-threaded
    BLAS in each, when every dictionary of the run has a row-separable loss
    (``sae.parts.separable``: the ReLU family, JumpReLU, gated, ProLU, deep, ...) and a
    batch of at least ``sae.train.trainer.SPLIT_MIN_ENTRIES`` [batch, width] entries. Same
    gradients up to float rounding (``sae.train.trainee.split_value_and_grad``); dense
    steps measured 1.09-1.15x faster on 2 cores (d 256, m 4096, batch 4096), because MLX's
    elementwise kernels are single-threaded. Off: one stream."""
    name: str | None = None
    """Label of this config in sweeps (defaults to kind-arch)."""
    recipe: object = None
    """A ``sae.parts.Recipe`` (or its dict / JSON form) for ``arch="composed"``: the dictionary
    is built from interchangeable parts. With arch set to a named recipe (``sae.parts.RECIPES``,
    e.g. "prolu") and recipe None, that recipe is used. None for the six standard classes."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UnknownArchitectureError(f"unknown kind {self.kind!r}; expected one of {KINDS}")
        _resolve_recipe(self)
        if self.arch not in ARCHS and self.arch != "composed":
            raise UnknownArchitectureError(f"unknown architecture {self.arch!r}; expected {ARCHS}, "
                                           "'composed' or a named recipe (sae.parts.RECIPES)")
        if self.arch == "composed" and self.kind not in ("sae", "transcoder", "skip_transcoder"):
            raise ConfigError(f"composed dictionaries are single-site (sae, transcoder, "
                              f"skip_transcoder), not kind={self.kind!r}")
        if self.kind == "clt" and self.arch in ("gated", "matryoshka"):
            raise ConfigError(f"CLTs support relu, jumprelu, topk, batchtopk; not {self.arch}")
        sites = tuple(Site.parse(s) for s in self.sites)
        if not sites:
            raise ConfigError("TrainConfig.sites is empty")
        object.__setattr__(self, "sites", sites)
        if self.targets is not None:
            tg = tuple(Site.parse(s) for s in self.targets)
            if len(tg) != len(sites):
                raise ConfigError("targets must have one site per input site")
            object.__setattr__(self, "targets", tg)
        if self.kind == "crosscoder":
            _check_crosscoder(self)
        if self.width is None and self.expansion is None:
            raise ConfigError("give width or expansion")
        # counts: integers (bool is not a count), each with its lower bound; checked before
        # any arithmetic so a wrong type never surfaces as a TypeError / ZeroDivisionError
        for name, low in (("width", 1), ("k", 1), ("total_tokens", 1), ("batch_tokens", 1),
                          ("log_every", 1), ("dead_tokens", 1), ("warmup_steps", 0), ("seed", 0),
                          ("resample_every", 1), ("k_aux", 1)):
            v = getattr(self, name)
            if v is None and name in ("width", "resample_every", "k_aux"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")
        for name in ("expansion", "lr"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not 0 <= v < math.inf or (name == "expansion" and v == 0)):
                raise ConfigError(f"{name} must be a finite number {'>= 0' if name == 'lr' else '> 0'}, "
                                  f"got {v!r}")
        if self.width is not None and self.arch in ("topk", "batchtopk", "matryoshka") \
                and self.kind != "clt" and self.k > self.width:
            raise ConfigError(f"k={self.k} exceeds width={self.width}")
        if self.total_tokens < self.batch_tokens:
            raise ConfigError(f"total_tokens={self.total_tokens} is below batch_tokens="
                              f"{self.batch_tokens}: not one step; raise total_tokens")
        if not 0 <= self.decay_frac <= 1 or not 0 <= self.sparsity_warmup_frac <= 1:
            raise ConfigError("decay_frac and sparsity_warmup_frac must lie in [0, 1]")
        if self.decoder not in ("auto", "dense", "sparse"):
            raise ConfigError(f"decoder must be auto, dense or sparse, got {self.decoder!r}")
        if self.decoder == "sparse" and self.arch not in ("topk", "batchtopk"):
            _check_sparse_recipe(self)
        object.__setattr__(self, "group_fractions", tuple(self.group_fractions))
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))

    @property
    def steps(self) -> int:
        """Optimiser steps."""
        return self.total_tokens // self.batch_tokens

    @property
    def label(self) -> str:
        """Name used in logs and result keys."""
        if self.name:
            return self.name
        return f"{self.kind}-{self.recipe.name if self.arch == 'composed' else self.arch}"

    def width_for(self, d_in: int) -> int:
        """Latent count for an input of width d_in; checks k <= width."""
        m = self.width if self.width is not None else max(1, round(self.expansion * d_in))
        if self.arch in ("topk", "batchtopk", "matryoshka") and self.k > m * (
                len(self.sites) if self.kind == "clt" else 1):
            raise ConfigError(f"k={self.k} exceeds width={m}")
        return m

    def lr_for(self, width: int) -> float:
        """The configured LR, or 2e-4 * sqrt(2^14 / width)."""
        return self.lr if self.lr is not None else 2e-4 * math.sqrt(2 ** 14 / width)

    def target_sites(self) -> tuple:
        """Output site per input site."""
        if self.kind in ("sae", "crosscoder"):
            return self.sites
        if self.targets is not None:
            return self.targets
        return tuple(Site(s.layer, self.target_kind) for s in self.sites)  # type: ignore[arg-type]

    def decoder_for(self, width: int) -> str:
        """Resolve ``decoder="auto"`` for a given width."""
        if self.decoder != "auto":
            return self.decoder
        if self.arch == "topk":
            return "sparse" if width >= 4096 and width >= 96 * self.k else "dense"
        if self.arch == "batchtopk":
            return "sparse" if width >= 8192 and width >= 128 * self.k else "dense"
        if self.arch == "composed" and self.kind in _SINGLE and self.recipe.activation == "topk":
            from sae.parts.sparse import unsupported

            k = self.recipe.params_for("activation").get("k", 32)
            if unsupported(self.recipe) is None and width >= 4096 and width >= 96 * k:
                return "sparse"  # TopK's pairs: a fixed count, no host sync, compiled
        return "dense"

    def dict_kwargs(self, width: int) -> dict:
        """Architecture hyperparameters passed to the dictionary constructor."""
        if self.arch == "composed":
            kw = {"recipe": self.recipe}
            if self.decoder_for(width) == "sparse":
                kw["decoder"] = "sparse"
            return kw
        if self.arch == "relu" and self.kind in _SINGLE and self.decoder_for(width) == "sparse":
            return {"decoder": "sparse"}
        if self.kind == "crosscoder":
            return dict(activation=self.arch, k=self.k, k_aux=self.k_aux, aux_coef=self.aux_coef,
                        threshold_ema=self.threshold_ema)
        if self.arch in ("topk", "batchtopk", "matryoshka"):
            kw = dict(k=self.k, k_aux=self.k_aux, aux_coef=self.aux_coef)
            if self.arch in ("topk", "batchtopk"):
                kw["decoder"] = self.decoder_for(width)
            if self.arch != "topk":
                kw["threshold_ema"] = self.threshold_ema
            if self.arch == "matryoshka":
                kw["group_fractions"] = list(self.group_fractions)
            return kw
        if self.arch == "jumprelu":
            return dict(bandwidth=self.bandwidth, threshold_init=self.threshold_init,
                        l0_form=self.l0_form, pre_act_coef=self.pre_act_coef)
        return {}


def _check_sparse_recipe(c: TrainConfig) -> None:
    """decoder="sparse" beyond TopK / BatchTopK: a single-site relu or composed dictionary
    whose parts the sparse pair loss supports (``sae.parts.sparse.unsupported``)."""
    if c.arch not in ("relu", "composed") or c.kind not in _SINGLE:
        raise ConfigError(f"the sparse decoder needs arch topk, batchtopk, relu or a supported "
                          f"recipe on a single-site kind (got arch={c.arch!r}, kind={c.kind!r}); "
                          "use decoder='dense' or 'auto'")
    from sae.parts import RECIPES
    from sae.parts.sparse import check_sparse

    check_sparse(c.recipe if c.arch == "composed" else RECIPES["relu"])


def _check_crosscoder(c: TrainConfig) -> None:
    """A crosscoder reads and writes >= 2 sites with relu / topk / batchtopk, dense."""
    if c.arch not in ("relu", "topk", "batchtopk"):
        raise ConfigError(f"crosscoders support relu, topk, batchtopk; not {c.arch}")
    if len(c.sites) < 2:
        raise ConfigError(f"a crosscoder reads at least 2 sites, got {len(c.sites)}; "
                          "list more sites, or train an SAE (kind 'sae')")
    if len(set(c.sites)) != len(c.sites):
        raise ConfigError("crosscoder sites repeat; list each site once")
    if c.targets is not None and tuple(c.targets) != tuple(c.sites):
        raise ConfigError("a crosscoder reconstructs its own sites; leave targets=None")
    if c.decoder == "sparse":
        raise ConfigError("crosscoders use the dense decoder; set decoder='auto' or 'dense'")
    if c.resample_every is not None:
        raise ConfigError("dead-latent resampling is not implemented for crosscoders; "
                          "set resample_every=None (topk / batchtopk use AuxK)")


def _resolve_recipe(c: TrainConfig) -> None:
    """arch = a named recipe -> arch "composed" with that recipe; coerce dict/JSON recipes.

    A recipe whose activation is topk / batchtopk and that sets no k takes ``c.k``."""
    if c.recipe is None and c.arch in ARCHS:
        return
    from sae.parts import RECIPES, Recipe  # parts import mlx; only when a recipe is in play

    if c.recipe is None:
        if c.arch == "composed":
            raise ConfigError("arch='composed' needs recipe= (a sae.parts.Recipe, its dict, or "
                              "a name in sae.parts.RECIPES)")
        if c.arch not in RECIPES:
            return  # the unknown-architecture error follows
        recipe = RECIPES[c.arch]
    else:
        if c.arch != "composed":
            raise ConfigError(f"recipe= goes with arch='composed', not arch={c.arch!r}")
        recipe = Recipe.coerce(c.recipe)
    if recipe.activation in ("topk", "batchtopk") and "k" not in recipe.params_for("activation"):
        recipe = recipe.with_params(activation={"k": c.k})
    object.__setattr__(c, "arch", "composed")
    object.__setattr__(c, "recipe", recipe)
