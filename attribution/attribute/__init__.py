"""Attribution graphs from a replacement model: exact linear edges and patching scores.

Submodules (one concept each): ``config`` (GraphConfig), ``targets`` (logit
targets), ``nodes`` (node set and order), ``exact`` (batched-VJP rows),
``patching`` (AtP / IG / exact patching node scores), ``build`` (build_graph).
"""

from attribution.attribute.build import ATTRIBUTION_VERSION, build_graph, prompt_tokens
from attribution.attribute.config import ABLATIONS, METHODS, GraphConfig
from attribution.attribute.patching import (
    NodeScores,
    ablated_values,
    integrated_gradients,
    node_scores,
)
from attribution.attribute.targets import (
    LogitTarget,
    ResolvedTargets,
    logit_diff,
    resolve_targets,
)

__all__ = [
    "ABLATIONS",
    "ATTRIBUTION_VERSION",
    "METHODS",
    "GraphConfig",
    "LogitTarget",
    "NodeScores",
    "ResolvedTargets",
    "ablated_values",
    "build_graph",
    "integrated_gradients",
    "logit_diff",
    "node_scores",
    "prompt_tokens",
    "resolve_targets",
]
