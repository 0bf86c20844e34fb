"""Faithfulness, completeness and MIB faithfulness curves (CPR, CMD) of component circuits.

Definitions (Sparse Feature Circuits; MIB):
  faithfulness(C) = (F(C) - F(empty)) / (F(M) - F(empty)), F(C) the metric with
  every edge outside C ablated; completeness(C) = faithfulness of the
  complement (lower is better). F(M) == F(empty) raises ``ValidationError``.

Algorithm (``faithfulness_curve``):
  1. Rank units by signed score (``absolute=False``, for CPR) or by |score|
     (``absolute=True``, for CMD), largest first, stable.
  2. For each fraction p in ``MIB_FRACTIONS`` keep the top round(p * n) units
     (node circuits keep all outgoing edges of a kept node) and measure f(p).
     With ``greedy=True`` (edges) the order is MIB's greedy one: grow from the
     logits, always taking the best edge into an already reached node.
  3. CPR = sum of trapezoids (p_{i+1} - p_i) (f_i + f_{i+1}) / 2 over the signed
     curve; CMD = the same over |1 - f| of the absolute curve: linear x-axis,
     no point added at 0, exactly as MIB's ``evaluate_area_under_curve``.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from circuits.discover.masking import MaskedModel
from circuits.discover.result import ComponentCircuitResult
from circuits.errors import ValidationError

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class Faithfulness:
    """Faithfulness and completeness of one circuit."""

    faithfulness: float
    """(F(C) - F(empty)) / (F(M) - F(empty))."""
    completeness: float
    """The same for the complement of C (lower is better)."""
    f_circuit: float
    """F(C)."""
    f_complement: float
    """F(complement)."""
    f_full: float
    """F(M): every edge clean."""
    f_empty: float
    """F(empty): every edge ablated."""
    n_edges: int
    """Edges in C."""
    fraction: float
    """Edges in C / all edges."""
    ablation: str
    """Ablation used for everything outside C."""

    def to_frame(self) -> pd.DataFrame:
        """One-row table of every field."""
        return pd.DataFrame([self.__dict__])


def normalised(f: float, f_empty: float, f_full: float) -> float:
    """(f - F(empty)) / (F(M) - F(empty)); raises when the denominator is 0."""
    den = f_full - f_empty
    if not np.isfinite(den) or abs(den) <= 1e-12 * max(1.0, abs(f_full)):
        raise ValidationError(
            f"the metric is the same on the full model ({f_full:.6g}) and the fully ablated "
            f"model ({f_empty:.6g}), so faithfulness is undefined; use a task/ablation under "
            "which the model's behaviour changes (e.g. counterfactual ablation)")
    return (f - f_empty) / den


def _edge_mask(mm: MaskedModel, circuit) -> np.ndarray:
    if isinstance(circuit, ComponentCircuitResult):
        return circuit.mask()
    if isinstance(circuit, (list, tuple, set, frozenset)) and all(
            not isinstance(c, (int, float, bool, np.number)) for c in circuit):
        return mm.graph.edges_to_mask(circuit)  # edges or their names
    mask = np.asarray(circuit)
    if mask.shape == (mm.graph.n_nodes,) and mask.shape != (mm.graph.n_edges,):
        return mm.graph.nodes_to_edge_mask(mask.astype(np.float32))
    if mask.shape != (mm.graph.n_edges,):
        raise ValidationError(f"a circuit is a result, a list of edges, or an [n_edges]="
                              f"[{mm.graph.n_edges}] / [n_nodes] mask; got shape {mask.shape}")
    return mask.astype(np.float32)


def faithfulness(mm: MaskedModel, circuit) -> Faithfulness:
    """Faithfulness and completeness of ``circuit`` (result, edge list, or edge/node mask)."""
    mask = _edge_mask(mm, circuit)
    full, empty = mm.metric(mm.ones()), mm.metric(mm.zeros())
    fc, fk = mm.metric(mask), mm.metric(1.0 - mask)
    return Faithfulness(normalised(fc, empty, full), normalised(fk, empty, full), fc, fk, full,
                        empty, int(mask.sum()), float(mask.mean()), mm.ablation)


def area_under(x: Sequence[float], y: Sequence[float]) -> float:
    """Trapezoid area of y over x (linear axis)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def cpr(fractions: Sequence[float], faith: Sequence[float]) -> float:
    """MIB CPR: area under the (signed-ranking) faithfulness curve."""
    return area_under(fractions, faith)


def cmd(fractions: Sequence[float], faith: Sequence[float]) -> float:
    """MIB CMD: area between the (absolute-ranking) faithfulness curve and 1, i.e. of |1 - f|."""
    return area_under(fractions, np.abs(1.0 - np.asarray(faith, float)))


@dataclass(frozen=True)
class Curve:
    """A faithfulness curve and its MIB areas."""

    table: pd.DataFrame
    """Rows: fraction, n_units, f, faithfulness, ranking (signed/absolute), ablation."""
    cpr: float
    """Area under the signed-ranking curve."""
    cmd: float
    """Area of |1 - f| under the absolute-ranking curve."""


def greedy_order(graph: Any, key: np.ndarray) -> np.ndarray:
    """Edges in the order of MIB's greedy selection: start from the logits and repeatedly
    take the highest-``key`` edge whose downstream node is already reached (its upstream
    becomes reached), so every prefix is connected to the logits."""
    heap: list = []
    reached: set = set()

    def reach(node) -> None:
        if node in reached:
            return
        reached.add(node)
        for e in inputs_of.get(node, ()):
            heapq.heappush(heap, (-key[e], e))

    inputs_of: dict = {}
    for i, e in enumerate(graph.edges):
        inputs_of.setdefault(e.downstream, []).append(i)
    reach("logits")
    out: list[int] = []
    while heap:
        _, e = heapq.heappop(heap)
        out.append(e)
        reach(graph.edges[e].upstream)
    return np.asarray(out, dtype=int)


def _curve(mm: MaskedModel, scores: np.ndarray, level: str, fractions, absolute: bool,
           full: float, empty: float, greedy: bool = False) -> list[tuple]:
    key = np.abs(scores) if absolute else scores
    if greedy and level == "edge":
        order = greedy_order(mm.graph, key)
    else:
        order = np.argsort(-key, kind="stable")
    rows = []
    for p in fractions:
        k = round(p * len(scores))
        keep = np.zeros(len(scores), dtype=np.float32)
        keep[order[:k]] = 1.0
        mask = keep if level == "edge" else mm.graph.nodes_to_edge_mask(keep)
        f = mm.metric(mask)
        rows.append((p, k, f, normalised(f, empty, full), "absolute" if absolute else "signed"))
    return rows


def faithfulness_curve(mm: MaskedModel, scores, level: str = "edge",
                       fractions: Sequence[float] = MIB_FRACTIONS, greedy: bool = False) -> Curve:
    """Signed and absolute faithfulness curves, CPR and CMD (module docstring).

    ``greedy`` (edge level): rank by ``greedy_order`` instead of plain top-k.
    """
    if isinstance(scores, ComponentCircuitResult):
        level, scores = scores.level, scores.values
    scores = np.asarray(scores, dtype=np.float64)
    n = mm.graph.n_edges if level == "edge" else mm.graph.n_nodes
    if scores.shape != (n,):
        raise ValidationError(f"need one score per {level} ({n}), got shape {scores.shape}")
    fr = [float(p) for p in fractions]
    if not fr or any(not 0 < p <= 1 for p in fr) or sorted(fr) != fr:
        raise ValidationError(f"fractions must be increasing values in (0, 1], got {fractions}")
    full, empty = mm.metric(mm.ones()), mm.metric(mm.zeros())
    rows = (_curve(mm, scores, level, fr, False, full, empty, greedy)
            + _curve(mm, scores, level, fr, True, full, empty, greedy))
    df = pd.DataFrame(rows, columns=["fraction", "n_units", "f", "faithfulness", "ranking"])
    df["ablation"], df["level"] = mm.ablation, level
    signed = df[df.ranking == "signed"]["faithfulness"].to_numpy()
    absolute = df[df.ranking == "absolute"]["faithfulness"].to_numpy()
    return Curve(df, cpr(fr, signed), cmd(fr, absolute))


def smallest_faithful(mm: MaskedModel, scores, threshold: float = 0.8,
                      level: str = "edge") -> tuple[int, float]:
    """(k, faithfulness): the fewest top-|score| units reaching ``threshold`` faithfulness.

    Binary search over k, so it assumes faithfulness grows with k (true of good
    rankings; the returned k is then exact, otherwise a local answer).
    """
    if not 0 < threshold <= 1:
        raise ValidationError(f"threshold must lie in (0, 1], got {threshold}")
    if isinstance(scores, ComponentCircuitResult):
        level, scores = scores.level, scores.values
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValidationError("cannot rank an empty score vector")
    order = np.argsort(-np.abs(scores), kind="stable")
    full, empty = mm.metric(mm.ones()), mm.metric(mm.zeros())

    def faith(k: int) -> float:
        keep = np.zeros(len(scores), dtype=np.float32)
        keep[order[:k]] = 1.0
        mask = keep if level == "edge" else mm.graph.nodes_to_edge_mask(keep)
        return normalised(mm.metric(mask), empty, full)

    lo, hi = 0, len(scores)
    f_hi = faith(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        f = faith(mid)
        if f >= threshold:
            hi, f_hi = mid, f
        else:
            lo = mid
    return hi, f_hi
