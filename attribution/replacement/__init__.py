"""The replacement model: dictionaries spliced into an mlx-lm model with error terms.

Submodules (one concept each): ``errors``, ``units`` (dictionaries -> validated
per-layer units), ``forward`` (one hooked forward), ``model``
(``ReplacementModel`` and its clean state), ``linear`` (the linearised
forward of DESIGN B4), ``spliced`` (the unfrozen spliced forward),
``steering`` (feature interventions and steered generation).
"""

from attribution.replacement.errors import (
    AttributionMethodError,
    DictionaryMismatchError,
    LogitTargetError,
    SteeringError,
)
from attribution.replacement.linear import LinearOut, linear_forward, write_sites
from attribution.replacement.model import CleanState, ReplacementModel
from attribution.replacement.spliced import SplicedOut, spliced_forward
from attribution.replacement.steering import (
    FeatureIntervention,
    GenerateResult,
    SteerResult,
    generate,
    steer,
)
from attribution.replacement.units import Unit, make_units

__all__ = [
    "AttributionMethodError", "CleanState", "DictionaryMismatchError", "FeatureIntervention",
    "GenerateResult", "LinearOut", "LogitTargetError", "ReplacementModel", "SplicedOut",
    "SteerResult", "SteeringError", "Unit", "generate", "linear_forward", "make_units",
    "spliced_forward", "steer", "write_sites",
]
