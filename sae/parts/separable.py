"""Which recipes have a loss that is a mean over rows of per-row terms (row-separable).

For such a loss, the batch loss and its gradients equal the size-weighted mean of the
losses and gradients of any split of the batch into row blocks; ``sae.train`` uses this
to run a step's half-batches on two CPU streams (``TrainConfig.split_batch``).
1. Each part kind lists the registered names known to be row-separable: the activation
   acts on each row alone (not BatchTopK, whose threshold is a statistic of the whole
   batch); the dead-latent part's auxiliary loss is a per-row mean (not AuxK, a ratio of
   batch means). Ghost grads divides each token's term by the norm of the residual
   centred over the batch, but its per-token rescaling to the token's mse multiplies
   the same factor back, so value and gradient do not depend on it (up to the 1e-6
   guards; the split equals the full batch to float rounding, tested). Penalties,
   encoders and decoders are all per-row.
2. A part registered by a user is not in these lists, so its recipe is never split: the
   split must not change what an unknown part computes.
Initialisations and schedules do not enter the loss of a step, so every one qualifies.
"""

from __future__ import annotations

_SEPARABLE = {
    "encoder": ("linear", "deep"),
    "activation": ("relu", "prolu", "jumprelu", "gated", "topk"),
    "penalty": ("none", "l1", "sqrt_l1", "lp", "tanh", "cauchy", "l0_ste"),
    "decoder": ("linear", "matryoshka"),
    "dead": ("none", "resample", "pre_act", "ghost_grads"),
}


def row_separable(recipe) -> bool:
    """True when every loss-bearing part of ``recipe`` (a ``Recipe``) is row-separable."""
    return all(getattr(recipe, kind) in names for kind, names in _SEPARABLE.items())


__all__ = ["row_separable"]
