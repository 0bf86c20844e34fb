"""Circuits selected by measured faithfulness: the smallest influence-ranked feature circuit
whose patching-measured faithfulness lies in a band and whose complement is small.

Influence pruning (``circuits.prune.prune``) keeps the nodes that carry most of the logits'
|attribution| mass, blind to sign: the kept circuit can hold mostly the paths that push the
metric one way and overshoot (faithfulness ≫ 1) while its complement, holding the opposing
paths, goes negative. This module measures candidates instead of trusting influence alone.
It lives in ``circuits.pipeline`` beside ``feature_faithfulness``, whose patching it reuses:
``circuits.prune`` is graph arithmetic that never runs a model.

Algorithm (``select_faithful``):
  1. Rank the graph's feature and error nodes by node influence on the logits
     (``circuits.prune.influence``), largest first, ties by node order. Candidate k keeps
     the top k of them plus every token and logit node, and the edges among kept nodes
     (the induced subgraph); its token nodes are those with an edge in it, exactly as
     ``feature_faithfulness`` reads a circuit graph (``circuit_nodes``).
  2. Measure F(M) and F(∅) once, then for each size k of the grid (``sizes``, default
     a geometric grid from 1 to all nodes) faithfulness(k) = (F(C_k) − F(∅)) / (F(M) − F(∅))
     and complement(k) = the same for the complement of C_k, by the activation patching of
     ``circuits.pipeline.feature_faithfulness`` (same ablation, same token and inactive-feature
     rules). Candidates are stacked along the batch axis, ``batch_size`` patched runs per forward.
  3. A candidate *meets* the target when band[0] <= faithfulness <= band[1] and
     complement <= max_complement (|complement| with ``abs_complement``). Take the
     smallest grid size that meets it.
  4. Refine by bisection on k: walk the neighbouring grid sizes a < b from the smallest,
     up to the first grid size that meets the target. Bisect (a, b) when
     - b meets the target (a does not): towards the smallest meeting k in (a, b); a
       midpoint that meets becomes b, one that does not becomes a; or
     - faithfulness jumps across the band between a and b (below it at one, above it at
       the other): for a k inside the band; a midpoint on a's side of the band becomes a,
       otherwise b; once a midpoint meets the target, continue as in the first case.
     Stop at the first pair whose bisection found a meeting k (every smaller pair was
     searched before), when b − a = 1, or when ``max_evaluations`` would be exceeded.
     Bisection assumes faithfulness changes monotonically between a and b; where it does
     not, the answer is still a measured candidate that meets the target, and no smaller
     *measured* candidate does, but an unmeasured smaller k might.
  5. Result: the smallest measured candidate that meets the target (``met=True``); if none
     does, the candidate closest to meeting it (smallest distance of faithfulness to the
     band + max(0, complement − max_complement), |complement| with ``abs_complement``; ties
     to the smaller) with ``met=False`` and the reason. The circuit is a ``PruneResult``
     (method ``faithful``) whose edge scores are influence-pruning's step-3 scores in the
     kept graph.
  6. The curve holds every measured candidate (size, fraction = k / number of feature and
     error nodes, faithfulness, complement). Its MIB areas are those of
     ``circuits.validate.faithfulness``: CPR = Σ trapezoids (p_{i+1} − p_i)(f_i + f_{i+1})/2
     over the measured points sorted by fraction (linear axis, no point added at 0), CMD =
     the same area of |1 − f|. Influence is non-negative, so the signed (CPR) and the
     absolute (CMD) rankings coincide and one curve serves both.

``max_evaluations`` counts patched runs (one prompt row each): 2 for F(M) and F(∅) plus 2
per candidate (circuit and complement). The grid alone must fit in it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from circuits.errors import CircuitsError
from circuits.pipeline.feature_faithfulness import _normalised, _Patcher, circuit_nodes

Progress = Callable[[str, int, int], None]
ABLATIONS = ("counterfactual", "zero")


class FaithfulSelectionError(CircuitsError, ValueError):
    """A bad selection configuration (band, complement bound, sizes, budget, ablation)."""


@dataclass(frozen=True)
class FaithfulSelectionConfig:
    """What counts as a faithful circuit and how many candidates may be measured."""

    band: tuple[float, float] = (0.9, 1.1)
    """[low, high] faithfulness a circuit must reach (low <= high, both finite)."""
    max_complement: float = 0.2
    """Largest faithfulness of the complement (the completeness score; lower is better)."""
    abs_complement: bool = False
    """Bound |complement| instead: a strongly negative complement (the nodes left out push
    the metric below F(∅), i.e. the circuit leaves out opposing paths) then fails too."""
    sizes: tuple[int, ...] | None = None
    """Numbers of kept feature+error nodes to measure (ints >= 0; sizes above the graph's
    count are clipped to it); None: a geometric grid of ``grid_points`` sizes from 1 to all."""
    grid_points: int = 24
    """Points of the default geometric grid (>= 2). Faithfulness along an influence ranking
    is far from monotone (one node can move it by ~1), so a coarse grid can miss small
    circuits that a finer one finds; 24 points cost at most 50 patched runs."""
    refine: bool = True
    """Bisect between neighbouring grid sizes (module docstring, step 4)."""
    ablation: str = "counterfactual"
    """How nodes outside a circuit are ablated: ``counterfactual`` (needs the corrupted
    prompt) or ``zero``, as ``feature_faithfulness``."""
    inactive: str = "live"
    """Features inactive on the clean prompt: ``live`` (recomputed) or ``ablate``."""
    max_evaluations: int = 128
    """Most patched runs in all (module docstring); >= 4."""
    batch_size: int = 8
    """Patched runs stacked into one forward (>= 1); memory grows with it."""

    def __post_init__(self) -> None:
        try:
            lo, hi = (float(x) for x in self.band)
        except (TypeError, ValueError):
            raise FaithfulSelectionError(f"band must be two numbers (low, high), got {self.band!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise FaithfulSelectionError(f"band must be finite with low <= high, got {self.band!r}")
        object.__setattr__(self, "band", (lo, hi))
        if not _is_number(self.max_complement):
            raise FaithfulSelectionError(f"max_complement must be a finite number, got {self.max_complement!r}")
        if not isinstance(self.abs_complement, bool):
            raise FaithfulSelectionError(f"abs_complement must be True or False, got {self.abs_complement!r}")
        if self.sizes is not None:
            if isinstance(self.sizes, (str, bytes)) or not all(_is_count(k) for k in self.sizes) \
                    or len(self.sizes) == 0:
                raise FaithfulSelectionError(f"sizes must be a non-empty sequence of ints >= 0, got {self.sizes!r}")
            object.__setattr__(self, "sizes", tuple(sorted({int(k) for k in self.sizes})))
        if not _is_count(self.grid_points) or self.grid_points < 2:
            raise FaithfulSelectionError(f"grid_points must be an int >= 2, got {self.grid_points!r}")
        if self.ablation not in ABLATIONS:
            raise FaithfulSelectionError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")
        if self.inactive not in ("live", "ablate"):
            raise FaithfulSelectionError(f"inactive must be 'live' or 'ablate', got {self.inactive!r}")
        if not _is_count(self.max_evaluations) or self.max_evaluations < 4:
            raise FaithfulSelectionError(f"max_evaluations must be an int >= 4, got {self.max_evaluations!r}")
        if not _is_count(self.batch_size) or self.batch_size < 1:
            raise FaithfulSelectionError(f"batch_size must be an int >= 1, got {self.batch_size!r}")


def _is_count(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) \
        and math.isfinite(float(x))


@dataclass(frozen=True, eq=False)
class FaithfulSelection:
    """The selected circuit, whether it meets the target, and every measured candidate."""

    circuit: object
    """``PruneResult`` (method ``faithful``): the selected candidate's nodes and the edges among them."""
    met: bool
    """True only if the circuit's measured faithfulness is in the band and its complement <= the bound."""
    reason: str
    """One line: what was met, or why nothing was and which candidate is returned instead."""
    n_kept: int
    """Feature+error nodes in the circuit (k)."""
    faithfulness: float
    """Measured faithfulness of the circuit."""
    completeness: float
    """Measured faithfulness of its complement (lower is better)."""
    curve: pd.DataFrame
    """One row per measured candidate, by size: n_kept, fraction, faithfulness, completeness,
    f_circuit, f_complement, n_tokens, stage (``grid`` or ``bisect``), meets."""
    cpr: float
    """Area under faithfulness vs fraction (module docstring, step 6)."""
    cmd: float
    """Area under |1 − faithfulness| vs fraction."""
    f_full: float
    """F(M)."""
    f_empty: float
    """F(∅)."""
    n_candidates: int
    """Feature and error nodes in the graph (the fraction's denominator)."""
    evaluations: int
    """Patched runs used (prompt rows, including F(M) and F(∅))."""
    forwards: int
    """Batched forward calls used."""
    budget_exhausted: bool
    """Bisection stopped because ``max_evaluations`` was reached."""
    config: FaithfulSelectionConfig = field(default_factory=FaithfulSelectionConfig)
    """The configuration used."""


def influence_order(graph) -> tuple[np.ndarray, np.ndarray]:
    """(feature+error node rows by influence descending, ties by row; influence [N])."""
    from circuits.prune import influence

    infl = influence(graph)
    cand = np.flatnonzero(graph.type_mask("feature") | graph.type_mask("error"))
    return cand[np.lexsort((cand, -infl[cand]))], infl


def candidate_mask(graph, order: np.ndarray, k: int) -> np.ndarray:
    """[N] bool: the top ``k`` of ``order`` plus every token and logit node."""
    mask = graph.type_mask("token") | graph.type_mask("logit")
    mask[order[:k]] = True
    return mask


def default_sizes(n: int, points: int) -> tuple[int, ...]:
    """Geometric grid of about ``points`` distinct sizes from 1 to n (just n when n <= 1)."""
    if n <= 1:
        return (n,)
    return tuple(sorted({int(round(x)) for x in np.geomspace(1, n, points)}))


class _Measurer:
    """Measures candidates by size, caching, batching and counting patched runs."""

    def __init__(self, patcher: _Patcher, graph, order, budget: int, batch: int, progress: Progress):
        self.p, self.graph, self.order = patcher, graph, order
        self.budget, self.batch, self.progress = budget, batch, progress
        self.rows: dict[int, dict] = {}
        self.evaluations, self.forwards = 0, 0
        self.f_full, self.f_empty = self._run([patcher.masks(everything=True), patcher.masks()])

    def _run(self, masks: list) -> list[float]:
        out = []
        for i in range(0, len(masks), self.batch):
            out += self.p.values(masks[i:i + self.batch])
            self.forwards += 1
        self.evaluations += len(masks)
        return out

    def affordable(self, n_candidates: int) -> bool:
        return self.evaluations + 2 * n_candidates <= self.budget

    def measure(self, sizes: Sequence[int], stage: str) -> None:
        new = [k for k in dict.fromkeys(sizes) if k not in self.rows]
        masks, meta = [], []
        for k in new:
            feats, errs, toks = circuit_nodes(self.graph.subgraph(candidate_mask(self.graph, self.order, k)))
            masks += [self.p.masks(feats, errs, toks), self.p.masks(feats, errs, toks, invert=True)]
            meta.append((k, len(toks)))
        vals = self._run(masks)
        n = len(self.order)
        for j, (k, n_tok) in enumerate(meta):
            fc, fcomp = vals[2 * j], vals[2 * j + 1]
            self.rows[k] = {"n_kept": k, "fraction": k / n if n else 1.0,
                            "faithfulness": _normalised(fc, self.f_empty, self.f_full),
                            "completeness": _normalised(fcomp, self.f_empty, self.f_full),
                            "f_circuit": fc, "f_complement": fcomp, "n_tokens": n_tok, "stage": stage}
        self.progress("faithful selection", self.evaluations, self.budget)


def _side(f: float, band: tuple[float, float]) -> int:
    return -1 if f < band[0] else (1 if f > band[1] else 0)


def _complement(row: dict, cfg: FaithfulSelectionConfig) -> float:
    return abs(row["completeness"]) if cfg.abs_complement else row["completeness"]


def _violation(row: dict, cfg: FaithfulSelectionConfig) -> float:
    lo, hi = cfg.band
    f = row["faithfulness"]
    return max(lo - f, 0.0, f - hi) + max(0.0, _complement(row, cfg) - cfg.max_complement)


def _bisect(m: _Measurer, a: int, b: int, meets, band) -> bool:
    """Step 4 on (a, b); returns True when it stopped for lack of budget."""
    while b - a > 1:
        if not m.affordable(1):
            return True
        mid = (a + b) // 2
        m.measure([mid], "bisect")
        r = m.rows[mid]
        if meets(r):
            b = mid
        elif meets(m.rows[b]) or _side(r["faithfulness"], band) == _side(m.rows[a]["faithfulness"], band):
            a = mid
        else:
            b = mid
    return False


def select_faithful(rm, tokens, graph, metric, config: FaithfulSelectionConfig = FaithfulSelectionConfig(),
                    *, counterfactual=None, progress: Progress = lambda s, d, t: None) -> FaithfulSelection:
    """The smallest influence-ranked feature circuit meeting ``config``'s band and complement
    bound, by measured faithfulness (module docstring). ``metric(last_logits) -> scalar``."""
    from circuits.prune.influence_prune import edge_influence_scores
    from circuits.prune.result import build_result
    from circuits.validate.faithfulness import cmd, cpr

    if not isinstance(config, FaithfulSelectionConfig):
        raise FaithfulSelectionError(f"config must be a FaithfulSelectionConfig, got {type(config).__name__}")
    cfg = config
    order, infl = influence_order(graph)
    n = len(order)
    sizes = default_sizes(n, cfg.grid_points) if cfg.sizes is None else tuple(sorted({min(k, n) for k in cfg.sizes}))
    need = 2 + 2 * len(sizes)
    if need > cfg.max_evaluations:
        raise FaithfulSelectionError(
            f"the {len(sizes)} grid sizes need {need} patched runs but max_evaluations is {cfg.max_evaluations}")
    try:
        patcher = _Patcher(rm, tokens, metric, cfg.ablation, counterfactual, cfg.inactive)
    except CircuitsError as e:
        raise FaithfulSelectionError(str(e)) from None
    m = _Measurer(patcher, graph, order, cfg.max_evaluations, cfg.batch_size, progress)
    m.measure(sizes, "grid")

    def meets(r: dict) -> bool:
        return cfg.band[0] <= r["faithfulness"] <= cfg.band[1] and _complement(r, cfg) <= cfg.max_complement

    exhausted = False
    if cfg.refine:
        for a, b in zip(sizes, sizes[1:]):
            if meets(m.rows[a]):
                break
            sa, sb = (_side(m.rows[k]["faithfulness"], cfg.band) for k in (a, b))
            if meets(m.rows[b]) or sa * sb == -1:  # b meets, or faithfulness jumps over the band
                exhausted = _bisect(m, a, b, meets, cfg.band)
                if exhausted or any(meets(m.rows[k]) for k in m.rows if k <= b):
                    break

    curve = pd.DataFrame(sorted(m.rows.values(), key=lambda r: r["n_kept"]))
    curve["meets"] = [meets(r) for r in curve.to_dict("records")]
    lo, hi = cfg.band
    comp = "|complement|" if cfg.abs_complement else "complement"
    target = f"faithfulness in [{lo:g}, {hi:g}] and {comp} <= {cfg.max_complement:g}"
    meeting = [r for r in curve.to_dict("records") if r["meets"]]
    if meeting:
        best, met = meeting[0], True
        reason = (f"smallest measured candidate with {target}: {best['n_kept']} of {n} feature/error nodes "
                  f"(faithfulness {best['faithfulness']:.3g}, complement {best['completeness']:.3g})")
    else:
        best = min(curve.to_dict("records"), key=lambda r: (_violation(r, cfg), r["n_kept"]))
        met = False
        reason = (f"no measured candidate has {target}; returning the closest, {best['n_kept']} of {n} "
                  f"feature/error nodes (faithfulness {best['faithfulness']:.3g}, "
                  f"complement {best['completeness']:.3g})")
        if exhausted:
            reason += f"; max_evaluations ({cfg.max_evaluations}) ran out during bisection"
    k = int(best["n_kept"])
    node_mask = candidate_mask(graph, order, k)
    src, tgt, _ = graph.edge_arrays()
    edge_keep = node_mask[src] & node_mask[tgt]
    params = {"band": list(cfg.band), "max_complement": float(cfg.max_complement),
              "abs_complement": cfg.abs_complement, "n_kept": k,
              "ablation": cfg.ablation, "met": met, "faithfulness": float(best["faithfulness"]),
              "completeness": float(best["completeness"])}
    circuit = build_result(graph, node_mask, edge_keep, edge_influence_scores(graph, node_mask), infl,
                           "faithful", params)
    fr, fa = curve["fraction"].to_numpy(), curve["faithfulness"].to_numpy()
    return FaithfulSelection(circuit, met, reason, k, float(best["faithfulness"]), float(best["completeness"]),
                             curve, cpr(fr, fa), cmd(fr, fa), m.f_full, m.f_empty, n, m.evaluations,
                             m.forwards, exhausted, cfg)


__all__ = [
    "FaithfulSelection",
    "FaithfulSelectionConfig",
    "FaithfulSelectionError",
    "candidate_mask",
    "default_sizes",
    "influence_order",
    "select_faithful",
]
