"""``GraphConfig``: every knob of graph construction, validated once.

Derive variants with ``dataclasses.replace``; never mutate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from attribution.replacement.errors import AttributionMethodError

METHODS = ("exact", "atp", "ig", "patching", "jump-aware")
"""exact: linear attribution edges (batched VJP); atp: attribution patching;
ig: integrated gradients; patching: exact activation patching; jump-aware: IG (or AtP)
with the top-|score| nodes exactly patched (``jump_aware``)."""
ABLATIONS = ("zero", "mean", "counterfactual")


@dataclass(frozen=True)
class GraphConfig:
    """Graph-construction settings (see ``build_graph``)."""

    batch_size: int = 32
    """Targets per backward pass (exact), or patched nodes / IG steps per forward."""
    max_batch_tokens: int | None = None
    """exact: cap on targets per backward pass × prompt tokens (the batched VJP holds about
    that many d_model-wide rows per write site); long prompts get fewer targets per pass.
    None = ``batch_size`` whatever the prompt length."""
    max_logits: int = 10
    """At most this many top logits become logit nodes."""
    logit_prob_mass: float = 0.95
    """Top logits are taken until their cumulative probability reaches this."""
    max_feature_nodes: int | None = None
    """Cap on feature nodes (exact): processed greedily by influence; None = all active."""
    edges_per_target: int | None = None
    """Keep the top-k |weight| incoming edges per target (None = no top-k)."""
    edge_threshold: float | None = None
    """Keep edges with |weight| >= this (None = no threshold)."""
    max_edges: int | None = 10_000_000
    """exact: refuse (``GraphMemoryError``, before any backward pass) when more edges than
    this could be kept, so a large graph never grows to tens of millions of edges unasked;
    set ``edges_per_target`` / ``max_feature_nodes`` (``GraphConfig.large_model()``) or
    raise it. None = no limit."""
    update_interval: int = 4
    """exact with ``max_feature_nodes``: the partial influence that picks the next features
    is recomputed every ``update_interval`` × ``batch_size`` targets (circuit-tracer's
    ``update_interval``, counted in passes of ``batch_size``)."""
    feature_threshold: float = 0.0
    """A feature is active (a node) when its activation exceeds this in absolute value."""
    unreplaced_mlps: Literal["frozen", "gradient"] = "frozen"
    """MLPs without a transcoder: frozen constants (exact) or live gradients (local only)."""
    ablation: Literal["zero", "mean", "counterfactual"] = "zero"
    """Baseline of the patching methods (recorded in the graph metadata)."""
    ig_steps: int = 16
    """Interpolation steps of integrated gradients (midpoint rule)."""
    feature_edges: bool = False
    """atp / ig / patching: also estimate every feature-to-feature edge (a target's activation
    change when a source is ablated). Free with patching's forwards; atp costs a backward per
    ``batch_size`` targets, ig ``ig_steps`` backwards per source layer and target batch."""
    memory_fraction: float = 0.8
    """Refuse when the estimate exceeds this fraction of available memory."""
    available_memory_bytes: int | None = None
    """Memory to check against (None = MemAvailable now); for tests and shared machines."""
    convention: Literal["ours", "circuit-tracer"] = "ours"
    """Graph conventions (exact graphs): ours, or circuit-tracer's, which prepends BOS to the
    prompt, zeroes position 0 (no feature or error nodes there) and gives token nodes
    W_E[token] only (the positional embedding is a constant)."""
    correct_base: Literal["ig", "atp"] = "ig"
    """jump-aware: the gradient method that scores every node and orders the candidates."""
    correct_top: int | None = None
    """jump-aware: exactly patch this many nodes (largest |base score| first), with no early
    stop; overrides ``correct_fraction`` and ``correct_tolerance``. None = adaptive."""
    correct_fraction: float = 1.0
    """jump-aware: patch at most ceil(this × moved nodes) (moved: the ablated value differs
    from the clean one; the others have no effect). 1.0 = no cap beyond the tolerance."""
    correct_tolerance: float = 0.05
    """jump-aware: stop patching after the first batch whose mean squared correction, times
    the moved nodes still unpatched, is at most this share of the scores' total square
    (about Pearson r >= sqrt(1 - this) with patching); 0 = patch up to the cap."""

    def __post_init__(self) -> None:
        def pos_int(name, v, lo=1):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise AttributionMethodError(f"GraphConfig.{name} must be an int >= {lo}, got {v!r}")

        pos_int("batch_size", self.batch_size)
        pos_int("max_logits", self.max_logits)
        pos_int("ig_steps", self.ig_steps)
        pos_int("update_interval", self.update_interval)
        if self.max_batch_tokens is not None:
            pos_int("max_batch_tokens", self.max_batch_tokens)
        for name in ("max_feature_nodes", "edges_per_target", "available_memory_bytes", "max_edges",
                     "correct_top"):
            if getattr(self, name) is not None:
                pos_int(name, getattr(self, name), 0)
        if not 0 < self.logit_prob_mass <= 1:
            raise AttributionMethodError(f"logit_prob_mass must lie in (0, 1], got {self.logit_prob_mass}")
        if not 0 < self.memory_fraction <= 1:
            raise AttributionMethodError(f"memory_fraction must lie in (0, 1], got {self.memory_fraction}")
        if self.edge_threshold is not None and not self.edge_threshold >= 0:
            raise AttributionMethodError(f"edge_threshold must be >= 0, got {self.edge_threshold}")
        if not self.feature_threshold >= 0:
            raise AttributionMethodError(f"feature_threshold must be >= 0, got {self.feature_threshold}")
        if self.unreplaced_mlps not in ("frozen", "gradient"):
            raise AttributionMethodError(f"unreplaced_mlps {self.unreplaced_mlps!r}; 'frozen' or 'gradient'")
        if self.convention not in ("ours", "circuit-tracer"):
            raise AttributionMethodError(f"convention {self.convention!r}; 'ours' or 'circuit-tracer'")
        for name in ("correct_fraction", "correct_tolerance"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise AttributionMethodError(f"GraphConfig.{name} must be a number in [0, 1], got {v!r}")
        if self.correct_base not in ("ig", "atp"):
            raise AttributionMethodError(f"correct_base {self.correct_base!r}; 'ig' or 'atp'")
        if self.ablation not in ABLATIONS:
            raise AttributionMethodError(f"ablation {self.ablation!r}; one of {ABLATIONS}")

    @classmethod
    def large_model(cls, **overrides) -> GraphConfig:
        """Settings for exact graphs of real models (GPT-2 small to a few billion parameters).

        circuit-tracer's budget: the logits, then the 7,500 most influential features
        (``max_feature_nodes``), chosen by partial influence recomputed every 1,024 targets
        (circuit-tracer's 4 passes of 256; here 16 passes of 64, and each chunk of 1,024 is
        ordered so that a pass's targets share a layer or a prompt prefix); each target
        keeps its 1,024 largest incoming edges (at most ~7.7M edges, about 62 MB; the rest
        is recorded as dropped mass); 64 targets per backward pass, fewer for prompts
        longer than 128 tokens (``max_batch_tokens`` 8,192). ``overrides`` replace any
        field, e.g. ``GraphConfig.large_model(max_feature_nodes=2000)``."""
        base = {"max_feature_nodes": 7500, "edges_per_target": 1024, "batch_size": 64,
                "max_batch_tokens": 8192, "update_interval": 16}
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


__all__ = ["ABLATIONS", "METHODS", "GraphConfig"]
