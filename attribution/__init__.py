"""attribution: model access, replacement models, attribution graphs (bottom layer).

Importing this package first loads an optimised BLAS on Linux (see ``_blas``);
that is the only import-time action in mlx-circuits.
"""

from attribution import _blas

_blas.preload()

from attribution.sites import SITE_KINDS, Site, SiteError  # noqa: E402
from attribution.errors import (  # noqa: E402
    AttributionError, ContextLengthError, EmptySequenceError, InterventionError,
    LayerRangeError, ModelNotFoundError, NotAModelError, SiteKindError, TokenRangeError,
    UnsupportedArchitectureError,
)
from attribution.model import (  # noqa: E402
    Ablate, Add, Intervention, Model, Patch, Replace, RunResult, Scale, capture, frozen,
    intervene, load_model, run, site_grads,
)

__all__ = [
    "SITE_KINDS", "Site", "SiteError",
    "AttributionError", "ContextLengthError", "EmptySequenceError", "InterventionError",
    "LayerRangeError", "ModelNotFoundError", "NotAModelError", "SiteKindError",
    "TokenRangeError", "UnsupportedArchitectureError",
    "Ablate", "Add", "Intervention", "Model", "Patch", "Replace", "RunResult", "Scale",
    "capture", "frozen", "intervene", "load_model", "run", "site_grads",
]
