"""Turn (site, transform) requests into one hook installation on a model.

Hook points per site kind (``LayerHandles`` says which module is which):
  resid_pre    pre-hook on the block (its input)
  resid_post   post-hook on the block (its output)
  attn_out     post-hook on attention, or on Gemma's post_attention_layernorm
  mlp_in       pre-hook on the MLP
  mlp_out      post-hook on the MLP, or on Gemma's post_feedforward_layernorm
  attn_z       pre-hook on the output projection, viewed as [B,T,H,dh]
  attn_pattern pattern hook inside the swapped attention kernel [B,H,Tq,Tk]
  resid_mid    read: pre-hook on the MLP's pre-norm (its input is resid_mid);
               edit: resid_mid = resid_pre + attn_out, so an edit f is applied
               as attn_out + (f(mid) - mid) with resid_pre stashed by a
               block pre-hook.

Algorithm (``Plan``):
  1. ``edit(site, fn)`` / ``read(site, fn)`` attach transforms in call order
     (edits before reads, so reads see the edited activation).
  2. Pattern requests (and freezing) mark the layer's attention module; the
     Python modules of marked attention classes get the kernel swap, inline
     attention (gemma2) gets its explicit override.
  3. ``freeze()`` overrides every probed norm with its frozen form and stops
     gradients through every attention pattern.
  4. ``with plan:`` installs the kernel swap then the hooks, and removes both
     in reverse order on exit (also on exceptions).
"""

from __future__ import annotations

from contextlib import ExitStack

from attribution.errors import UnsupportedArchitectureError
from attribution.model.arch import PARALLEL_RESIDUAL_ARCHS, require
from attribution.model.attention import INLINE_ATTENTION, SdpaSwap, uses_sdpa
from attribution.model.hooks import Hooks, base_class
from attribution.model.norms import frozen_override, norm_form
from attribution.sites import Site


class Plan:
    """One set of hooks (edits, reads, freezing) for one model."""

    def __init__(self, model) -> None:
        self.model = model
        self.hooks = Hooks()
        self._pattern_attn: dict[int, object] = {}
        self._stash_layers: dict[int, list] = {}
        self._late: list = []
        self._stack: ExitStack | None = None
        self.fired: set = set()
        """ids of the edits that ran (filled by the edit functions of ``run``)."""

    # ---------------------------------------------------------------- attach
    def edit(self, site: Site, fn) -> None:
        """Attach an activation-changing transform at ``site``."""
        if site.kind == "resid_mid":
            self._edit_resid_mid(site.layer, fn)
        else:
            self._attach(site, fn)

    def read(self, site: Site, fn) -> None:
        """Attach a reading transform (returns its input) at ``site``."""
        if site.kind == "resid_mid":
            self._check_sequential(site)
            self.hooks.add_pre(require(self.model.layers[site.layer], "pre_mlp_norm", site), fn)
        else:
            self._attach(site, fn)

    def _attach(self, site: Site, fn) -> None:
        h = self.model.layers[site.layer]
        kind = site.kind
        if kind == "resid_pre":
            self.hooks.add_pre(h.block, fn)
        elif kind == "resid_post":
            self.hooks.add_post(h.block, fn)
        elif kind == "attn_out":
            self.hooks.add_post(require(h, "attn_out_point", site), fn)
        elif kind == "mlp_in":
            self.hooks.add_pre(require(h, "mlp", site), fn)
        elif kind == "mlp_out":
            self.hooks.add_post(require(h, "mlp_out_point", site), fn)
        elif kind == "attn_z":
            per_head = _per_head(fn, self.model.n_heads, self.model.d_head)
            self.hooks.add_pre(require(h, "out_proj", site), per_head)
        elif kind == "attn_pattern":
            self._mark_pattern(require(h, "attn", site))
            self.hooks.add_pattern(h.attn, fn)
        else:  # pragma: no cover - Site validates kinds
            raise UnsupportedArchitectureError(f"no hook point for {site}")

    def _check_sequential(self, site: Site) -> None:
        cfg = self.model.config
        if cfg.get("use_parallel_residual") or self.model.arch in PARALLEL_RESIDUAL_ARCHS:
            raise UnsupportedArchitectureError(
                f"{site}: {self.model.arch} adds attention and MLP to the residual in parallel, "
                "so resid_mid does not exist; use resid_pre/attn_out/mlp_out instead"
            )

    def _edit_resid_mid(self, layer: int, fn) -> None:
        h = self.model.layers[layer]
        site = Site(layer, "resid_mid")
        self._check_sequential(site)
        require(h, "attn_out_point", site)
        cell: list = self._stash_layers.get(layer)
        if cell is None:
            cell = self._stash_layers[layer] = [None]

            def stash(x, cell=cell):
                cell[0] = x
                return x

            # Added last (see install) so the stash sees resid_pre after its edits.
            self._late.append((h.block, stash))

        def through_attn_out(a, cell=cell):
            mid = cell[0] + a
            return a + (fn(mid) - mid)

        self.hooks.add_post(h.attn_out_point, through_attn_out)

    def _mark_pattern(self, attn) -> None:
        if id(attn) in self._pattern_attn:
            return
        self._pattern_attn[id(attn)] = attn
        if not uses_sdpa(attn):
            name = base_class(attn).__module__
            override = INLINE_ATTENTION.get(name)
            if override is None:
                raise UnsupportedArchitectureError(
                    f"attention in {name} computes its softmax inline and has no pattern hook; "
                    "add an explicit re-implementation to attribution/model/attention.py"
                )
            self.hooks.add_override(attn, override)

    # ---------------------------------------------------------------- freeze
    def freeze(self) -> None:
        """Stop gradients through every norm scale and every attention pattern."""
        for module, form in norm_forms(self.model):
            self.hooks.add_override(module, frozen_override(form))
        for h in self.model.layers:
            attn = require(h, "attn", "freezing attention patterns")
            self._mark_pattern(attn)
            self.hooks.freeze_pattern(attn)

    # --------------------------------------------------------------- install
    def __enter__(self) -> "Plan":
        for block, stash in self._late:
            self.hooks.add_pre(block, stash)
        self._late = []
        with ExitStack() as stack:
            if self._pattern_attn:
                names = sorted({base_class(a).__module__ for a in self._pattern_attn.values()})
                stack.enter_context(SdpaSwap(names))
            stack.enter_context(self.hooks)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        for cell in self._stash_layers.values():
            cell[0] = None  # drop the stashed activation: no state survives the call
        if stack is not None:
            stack.close()


def _per_head(fn, n_heads: int, d_head: int):
    def on_heads(x):
        b, t, _ = x.shape
        return fn(x.reshape(b, t, n_heads, d_head)).reshape(b, t, n_heads * d_head)

    return on_heads


def norm_forms(model) -> list[tuple[object, str]]:
    """Every normalisation module of the model with its probed form (cached on the wrapper)."""
    cached = getattr(model, "_norm_forms", None)
    if cached is not None:
        return cached
    found = []
    for name, module in model.module.named_modules():
        form = norm_form(module)
        if form is not None:
            found.append((module, form))
        elif "norm" in base_class(module).__name__.lower() and "norm" in name.lower():
            raise UnsupportedArchitectureError(
                f"cannot identify the normalisation formula of {name} "
                f"({base_class(module).__name__}) to freeze it; add its form to "
                "attribution/model/norms.py"
            )
    model._norm_forms = found
    return found
