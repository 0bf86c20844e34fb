"""Attribution graphs from a replacement model: exact linear edges and patching scores.

Submodules (one concept each): ``config`` (GraphConfig), ``targets`` (logit
targets), ``nodes`` (node set and order), ``exact`` (batched-VJP rows),
``patching`` (AtP / IG / exact patching node scores), ``build`` (build_graph),
``qk`` (attention scores split into query-node × key-node terms).
"""

from attribution.attribute.build import ATTRIBUTION_VERSION, build_graph, prompt_tokens
from attribution.attribute.config import ABLATIONS, METHODS, GraphConfig
from attribution.attribute.patching import (
    NodeScores,
    ablated_values,
    integrated_gradients,
    node_scores,
)
from attribution.attribute.qk import (
    BiasNode,
    HeadSplit,
    QKAttribution,
    QKAttributionError,
    edge_qk,
    head_split,
    qk_attribution,
    qk_attributions,
    top_key_attributions,
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
    "BiasNode",
    "METHODS",
    "GraphConfig",
    "HeadSplit",
    "LogitTarget",
    "NodeScores",
    "QKAttribution",
    "QKAttributionError",
    "ResolvedTargets",
    "ablated_values",
    "build_graph",
    "edge_qk",
    "head_split",
    "integrated_gradients",
    "logit_diff",
    "node_scores",
    "prompt_tokens",
    "qk_attribution",
    "qk_attributions",
    "resolve_targets",
    "top_key_attributions",
]
