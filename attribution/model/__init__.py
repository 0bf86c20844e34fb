"""Model access: load mlx-lm models, capture and intervene on typed sites, site gradients.

Submodules (one concept each): ``wrapper`` (Model, load_model), ``tokens``
(token validation), ``arch`` (where sites live per architecture), ``hooks``
(class-swap forward hooks), ``attention`` (hookable attention kernel),
``norms`` (norm identification and freezing), ``interventions`` (edit
types), ``plan`` (sites -> hooks), ``run`` (public forward API).
"""

from attribution.model.interventions import Ablate, Add, Intervention, Patch, Replace, Scale
from attribution.model.run import (
    RunResult,
    capture,
    check_layer,
    check_site,
    frozen,
    intervene,
    run,
    site_grads,
    site_shape,
    to_site,
)
from attribution.model.wrapper import Model, load_model

__all__ = [
    "Ablate", "Add", "Intervention", "Model", "Patch", "Replace", "RunResult", "Scale",
    "capture", "check_layer", "check_site", "frozen", "intervene", "load_model", "run",
    "site_grads", "site_shape", "to_site",
]
