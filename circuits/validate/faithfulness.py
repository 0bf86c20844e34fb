"""Faithfulness, completeness and MIB faithfulness curves (CPR, CMD) of component circuits.

Definitions (Sparse Feature Circuits; MIB):
  faithfulness(C) = (F(C) - F(empty)) / (F(M) - F(empty)), F(C) the metric with
  every edge outside C ablated; completeness(C) = faithfulness of the
  complement (lower is better). F(M) == F(empty) raises ``ValidationError``.

Circuits (``faithfulness``) may be given as
  * component names (``["L0.H2", "L1.MLP"]``; also ``L0H2``, ``L1.mlp``, ``EMB``):
    a node circuit, every outgoing edge of a kept node clean. The token embedding
    is kept clean unless ``include_embedding=False`` (default True, the ground
    truth's convention: an ablated embedding corrupts every reader at once, so a
    circuit without it scores about 0 whatever its heads; by the same token the
    complement, which then lacks the embedding, scores about 0 under a
    counterfactual ablation); naming ``EMB`` keeps it either way;
  * edges (``Edge`` objects or ``"L0H1->L1H0"`` strings), an [n_edges] edge mask,
    an [n_nodes] node mask (embedding at index 0, taken as given) or a
    ``ComponentCircuitResult``.
The result records the level and whether the embedding was kept.

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

from circuits.discover.graph import EMBED
from circuits.discover.masking import MaskedModel
from circuits.discover.result import ComponentCircuitResult
from circuits.organisms.patching import Component
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
    level: str = "edge"
    """How C was given: "node" (component names, node mask, node-level result) or "edge"."""
    include_embedding: bool | None = None
    """Node circuits: whether the token embedding's outgoing edges were kept clean in C
    (ablated in the complement). None for edge circuits, whose embed edges are explicit."""

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


def denominator_warning(f_full: float, f_empty: float, rel: float = 0.05, floor: float = 1e-3) -> str | None:
    """A warning when |F(M) − F(∅)| is too small to divide by, else None.

    Faithfulness divides by F(M) − F(∅). When the ablation barely moves the metric
    (under ``rel`` of its size, or under ``floor`` in metric units), float noise and
    tiny effects dominate the ratio, so values like 3.7 or −2 mean nothing."""
    spread = abs(f_full - f_empty)
    if spread < rel * max(abs(f_full), abs(f_empty), floor) or spread < floor:
        return (f"|F(M) − F(∅)| = {spread:.3g} is small next to F(M) = {f_full:.4g}: faithfulness "
                "divides by little more than noise; try another ablation or metric")
    return None


def _is_name(c) -> bool:
    return isinstance(c, (str, Component)) and not (isinstance(c, str) and "->" in c)


def _edge_mask(mm: MaskedModel, circuit,
               include_embedding: bool = True) -> tuple[np.ndarray, str, bool | None]:
    """(edge mask, level, embedding kept) of any accepted circuit form (module docstring)."""
    g = mm.graph
    if isinstance(circuit, ComponentCircuitResult):
        mask = circuit.mask()
        if circuit.level == "node":
            return mask, "node", bool(circuit.scores["in_circuit"].to_numpy()[g.node_id(EMBED)])
        return mask, "edge", None
    if isinstance(circuit, str):  # one name: a common slip for a one-element list
        circuit = [circuit]
    if isinstance(circuit, (list, tuple, set, frozenset)) and all(
            not isinstance(c, (int, float, bool, np.number)) for c in circuit):
        items = list(circuit)
        names = [c for c in items if _is_name(c)]
        if names and len(names) < len(items):
            raise ValidationError("a circuit is either component names (L0.H2, L1.MLP, EMB) or "
                                  f"edges (L0H1->L1H0), not a mix; got {items[:4]}...")
        if not names:
            return g.edges_to_mask(items), "edge", None  # edges or their names
        nodes = g.nodes_mask(names)  # unknown names: one line listing the valid ones
        if include_embedding:
            nodes[g.node_id(EMBED)] = 1.0
        return g.nodes_to_edge_mask(nodes), "node", bool(nodes[g.node_id(EMBED)])
    mask = np.asarray(circuit)
    if mask.shape == (g.n_nodes,) and mask.shape != (g.n_edges,):
        return g.nodes_to_edge_mask(mask.astype(np.float32)), "node", bool(mask[0] > 0)
    if mask.shape != (g.n_edges,):
        raise ValidationError(f"a circuit is component names, a result, a list of edges, or an "
                              f"[n_edges]=[{g.n_edges}] / [n_nodes]=[{g.n_nodes}] mask; "
                              f"got shape {mask.shape}")
    return mask.astype(np.float32), "edge", None


def faithfulness(mm: MaskedModel, circuit, include_embedding: bool = True) -> Faithfulness:
    """Faithfulness and completeness of ``circuit``: component names, a result, an edge
    list, or an edge/node mask (module docstring). ``include_embedding`` applies to
    component names: keep the token embedding clean (default) or ablate it unless named."""
    mask, level, emb = _edge_mask(mm, circuit, include_embedding)
    full, empty = mm.metric(mm.ones()), mm.metric(mm.zeros())
    fc, fk = mm.metric(mask), mm.metric(1.0 - mask)
    return Faithfulness(normalised(fc, empty, full), normalised(fk, empty, full), fc, fk, full,
                        empty, int(mask.sum()), float(mask.mean()), mm.ablation, level, emb)


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
