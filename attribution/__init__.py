"""attribution: model access, replacement models, attribution graphs (bottom layer).

Importing this package first loads an optimised BLAS on Linux (see ``_blas``);
that is the only import-time action in mlx-circuits.
"""

from attribution import _blas

_blas.preload()

from attribution._blas import set_threads as set_blas_threads  # noqa: E402

from attribution.errors import (
    AttributionError,
    ContextLengthError,
    EmptySequenceError,
    InterventionError,
    LayerRangeError,
    ModelNotFoundError,
    NonFiniteError,
    NotAModelError,
    SiteKindError,
    TokenizerNotFoundError,
    TokenRangeError,
    UnsupportedArchitectureError,
    UnsupportedModelTypeError,
    WeightsMismatchError,
)
from attribution.model import (
    Ablate,
    Add,
    Intervention,
    Model,
    Patch,
    Replace,
    RunResult,
    Scale,
    capture,
    frozen,
    intervene,
    load_model,
    run,
    site_grads,
)
from attribution.model.integrity import check_finite, model_identity
from attribution.sites import SITE_KINDS, Site, SiteError

# Replacement models, graph construction and steering pull in pandas/scipy through
# attribution.graph; they load on first access (PEP 562) so `import attribution` stays light.
_LAZY = {
    **dict.fromkeys(
        ("AttributionMethodError", "CleanState", "DictionaryMismatchError", "FeatureIntervention",
         "GenerateResult", "LogitTargetError", "ReplacementModel", "SteerResult", "SteeringError",
         "generate", "steer"), "attribution.replacement"),
    **dict.fromkeys(
        ("GraphConfig", "LogitTarget", "NodeScores", "build_graph", "integrated_gradients",
         "logit_diff", "node_scores"), "attribution.attribute"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attribution' has no attribute {name!r}")


__all__ = [
    "SITE_KINDS",
    "Ablate",
    "Add",
    "AttributionError",
    "AttributionMethodError",
    "CleanState",
    "ContextLengthError",
    "DictionaryMismatchError",
    "EmptySequenceError",
    "FeatureIntervention",
    "GenerateResult",
    "GraphConfig",
    "Intervention",
    "InterventionError",
    "LayerRangeError",
    "LogitTarget",
    "LogitTargetError",
    "Model",
    "ModelNotFoundError",
    "NodeScores",
    "NonFiniteError",
    "NotAModelError",
    "Patch",
    "Replace",
    "ReplacementModel",
    "RunResult",
    "Scale",
    "Site",
    "SiteError",
    "SiteKindError",
    "SteerResult",
    "SteeringError",
    "TokenRangeError",
    "TokenizerNotFoundError",
    "UnsupportedArchitectureError",
    "UnsupportedModelTypeError",
    "WeightsMismatchError",
    "build_graph",
    "capture",
    "check_finite",
    "frozen",
    "generate",
    "integrated_gradients",
    "intervene",
    "load_model",
    "logit_diff",
    "model_identity",
    "node_scores",
    "run",
    "set_blas_threads",
    "site_grads",
    "steer",
]
