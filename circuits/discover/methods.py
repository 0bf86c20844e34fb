"""Edge and node scores on the masking core: EAP, EAP-IG, exact patching, ACDC.

Every score estimates F(mask = 1) - F(unit removed), in metric units, where F is
the task metric (-KL for the KL metric, so larger always means "supports the
clean behaviour") and a unit is one edge (level "edge") or all outgoing edges of
one node (level "node"; node mask m_u sets a_ud = m_u for every reader d).

Algorithm:
  1. EAP: dF/da at a = 1 (one backward). Since input_d depends on a_ud through
     a_ud * (out_u - abl_u), this is grad_input_d . (clean_u - ablated_u), i.e.
     attribution patching; removing the unit changes F by about -dF/da.
  2. EAP-IG: the mean of dF/da over a = t * 1 at the midpoints t = (i + 1/2)/k,
     i < k (``ig_path``: from 0, all ablated, to 1, clean). The scores of all
     edges sum to F(1) - F(0) as k grows (IG completeness). Node scores are
     the sums of their outgoing edges' scores (chain rule through m_u).
  3. Exact: F(1) - F(1 with the unit's edges at 0), one forward per unit.
  4. ACDC: start from a = 1; visit downstream nodes in reverse topological order
     (logits, then layers from last to first, MLP before heads), and each one's
     incoming edges from the latest upstream to embed; set the edge to 0 and keep
     it removed when the metric change is below tau (|dF| for logit-difference
     style metrics, the KL increase for KL, as in ACDC). The score of an edge is
     F(before) - F(after) at its visit. Node level visits nodes latest first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from circuits.discover.masking import MaskedModel
from circuits.errors import DiscoveryError

Progress = Callable[[str, int, int], None]


def _quiet(*_a) -> None:
    return None


def _to_level(mm: MaskedModel, edge_values: np.ndarray, level: str) -> np.ndarray:
    if level == "edge":
        return edge_values
    return np.bincount(mm.graph.edge_upstream, weights=edge_values, minlength=mm.graph.n_nodes)


def eap(mm: MaskedModel, level: str = "edge") -> np.ndarray:
    """Attribution patching: dF/da at the clean mask, per edge or node."""
    _, grad = mm.metric_and_grad(mm.ones())
    return _to_level(mm, grad, level)


def integrated_gradients(mm: MaskedModel, start: np.ndarray, end: np.ndarray, steps: int,
                         on_progress: Progress = _quiet) -> np.ndarray:
    """(end - start) * mean_t dF/da(start + t (end - start)) at k midpoints, per edge."""
    if steps < 1:
        raise DiscoveryError(f"integrated gradients needs steps >= 1, got {steps}")
    start, end = np.asarray(start, np.float32), np.asarray(end, np.float32)
    total = np.zeros(mm.graph.n_edges)
    for i in range(steps):
        t = (i + 0.5) / steps
        _, g = mm.metric_and_grad(start + t * (end - start))
        total += g
        on_progress("eap-ig", i + 1, steps)
    return (end - start) * total / steps


def eap_ig(mm: MaskedModel, level: str = "edge", steps: int = 8,
           on_progress: Progress = _quiet) -> np.ndarray:
    """EAP-IG on the mask path from all-ablated to clean, per edge or node."""
    return _to_level(mm, integrated_gradients(mm, mm.zeros(), mm.ones(), steps, on_progress), level)


def _unit_mask(mm: MaskedModel, level: str, unit: int) -> np.ndarray:
    mask = mm.ones()
    if level == "edge":
        mask[unit] = 0.0
    else:
        mask[mm.graph.edge_upstream == unit] = 0.0
    return mask


def exact(mm: MaskedModel, level: str = "edge", on_progress: Progress = _quiet) -> np.ndarray:
    """Exact patching: F(1) - F(unit removed), one forward per edge or node."""
    full = mm.metric(mm.ones())
    n = mm.graph.n_edges if level == "edge" else mm.graph.n_nodes
    out = np.zeros(n)
    for u in range(n):
        out[u] = full - mm.metric(_unit_mask(mm, level, u))
        on_progress("exact", u + 1, n)
    return out


def acdc_order(mm: MaskedModel, level: str) -> list[int]:
    """Units in ACDC's visiting order (reverse topological, see module docstring)."""
    if level == "node":
        return list(range(mm.graph.n_nodes - 1, -1, -1))
    g = mm.graph
    groups = [g.logit_index[::-1]]
    for layer in range(g.n_layers - 1, -1, -1):
        groups.append(g.mlp_index[layer][::-1])
        cols = g.head_index[layer]
        for c in range(cols.shape[1] - 1, -1, -1):
            groups.append(cols[::-1, c])
    return [int(e) for grp in groups for e in grp]


def acdc(mm: MaskedModel, level: str = "edge", tau: float = 0.05, rule: str | None = None,
         on_progress: Progress = _quiet) -> tuple[np.ndarray, np.ndarray]:
    """Greedy ACDC; returns (scores, kept) per edge or node."""
    if tau < 0:
        raise DiscoveryError(f"ACDC threshold tau must be >= 0, got {tau}")
    rule = rule or ("signed" if mm.data.metric_kind == "kl" else "abs")
    if rule not in ("abs", "signed"):
        raise DiscoveryError(f"ACDC rule must be 'abs' or 'signed', got {rule!r}")
    order = acdc_order(mm, level)
    mask = mm.ones()
    current = mm.metric(mask)
    scores = np.zeros(len(order))
    kept = np.ones(len(order), dtype=bool)
    for i, u in enumerate(order):
        trial = mask.copy()
        if level == "edge":
            trial[u] = 0.0
        else:
            trial[mm.graph.edge_upstream == u] = 0.0
        f = mm.metric(trial)
        change = current - f  # > 0: removing the unit hurts
        scores[u] = change
        if (abs(change) if rule == "abs" else change) < tau:
            mask, current, kept[u] = trial, f, False
        on_progress("acdc", i + 1, len(order))
    return scores, kept
