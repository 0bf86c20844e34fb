"""Validation of component circuits: faithfulness, completeness, MIB curves (CPR/CMD),
predicted-vs-measured agreement and bootstrap stability (DESIGN.md B5, C).

Every function takes a ``circuits.discover.MaskedModel`` (or a model and task data)
so the ablation used outside the circuit is the one recorded on the results.
``faithfulness`` takes a circuit as component names (``["L0.H2", "L1.MLP"]``; the
token embedding kept clean unless ``include_embedding=False``, recorded on the
result), edges, masks or a discovery result.
"""

from __future__ import annotations

from circuits.validate.agreement import (
    Agreement,
    measured_node_effects,
    predicted_vs_measured,
)
from circuits.validate.faithfulness import (
    MIB_FRACTIONS,
    Curve,
    Faithfulness,
    area_under,
    cmd,
    cpr,
    faithfulness,
    faithfulness_curve,
    normalised,
    smallest_faithful,
)
from circuits.validate.node_scores import NodeScoreAgreement, node_score_agreement
from circuits.validate.stability import Stability, jaccard, stability

__all__ = [
    "MIB_FRACTIONS", "Agreement", "Curve", "Faithfulness", "NodeScoreAgreement", "Stability",
    "area_under", "cmd", "cpr", "faithfulness", "faithfulness_curve", "jaccard",
    "measured_node_effects", "node_score_agreement", "normalised", "predicted_vs_measured",
    "smallest_faithful", "stability",
]
