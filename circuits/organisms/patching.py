"""Exact activation patching of heads, MLPs and head->head / head->MLP paths.

All interventions are exact forward passes (never gradients); the ablation is
counterfactual: a component's activation is replaced by its value on the
corrupted prompt of the same example.

Algorithm:
  1. ``prepare``: per length group of the task data, one clean and one corrupted
     run capture every ``attn_z`` [B,T,H,dh] and ``mlp_out`` [B,T,d]; the clean and
     corrupted metrics are recorded.
  2. Node patching: run the clean prompt with one head's ``attn_z`` (or one
     layer's ``mlp_out``) patched from the corrupted cache; record the metric.
  3. Path patching sender head (l,h) -> receiver: the sender's direct
     contribution changes by delta = (z_corr - z_clean)[:, :, h] @ W_O(l)[h]
     [B,T,d]. Only the receiver sees it:
       - head (l',h'), l' > l: a run with ``Add(resid_pre[l'], delta)`` stopped
         at layer l' gives the receiver's new z; a clean run with only head h' of
         layer l' replaced by it gives the metric;
       - MLP l'' >= l: the same with ``Add(resid_mid[l''], delta)`` and ``mlp_out``;
       - logits: a clean run with delta added to the final residual stream.
     Everything else, including every downstream component, is recomputed.
  4. ``circuit_metric(keep)``: a clean run where every component not in ``keep``
     is patched from the corrupted cache (used by the circuit search).
Metrics are averaged over all examples (weighted by group size).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from collections.abc import Callable, Iterable

import numpy as np

import attribution  # noqa: F401  (optimised BLAS before mlx)
import mlx.core as mx
from attribution import Add, Patch, Replace, Site, run

from circuits.errors import OrganismError
from circuits.tasks.base import TaskBatch, TaskData


@dataclass(frozen=True, order=True)
class Component:
    """A node of the component graph: one attention head or one MLP."""

    layer: int
    """Block index."""
    kind: Literal["head", "mlp"]
    """Attention head or MLP."""
    head: int | None = None
    """Head index (heads only)."""

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}" if self.kind == "head" else f"L{self.layer}.mlp"

    @property
    def site(self) -> Site:
        """The site whose activation is patched."""
        return Site(self.layer, "attn_z" if self.kind == "head" else "mlp_out")

    @classmethod
    def parse(cls, text: str) -> Component:
        """Parse ``L1H3`` or ``L2.mlp``."""
        m = re.fullmatch(r"L(\d+)H(\d+)", text) or re.fullmatch(r"L(\d+)\.mlp", text)
        if not m:
            raise OrganismError(f"cannot parse component {text!r}; write L<layer>H<head> or L<layer>.mlp")
        return cls(int(m.group(1)), "head", int(m.group(2))) if "H" in text else cls(int(m.group(1)), "mlp")


def components(model: Any) -> list[Component]:
    """Every head and MLP of ``model`` in forward order."""
    out: list[Component] = []
    for layer in range(model.n_layers):
        out.extend(Component(layer, "head", h) for h in range(model.n_heads))
        out.append(Component(layer, "mlp"))
    return out


@dataclass
class GroupState:
    """Clean/corrupted caches of one length group."""

    batch: TaskBatch
    clean: dict
    corrupted: dict
    clean_last: mx.array


class Patcher:
    """Exact patching of one model on one task dataset (see module docstring)."""

    def __init__(self, model: Any, data: TaskData, batch_size: int | None = None):
        self.model, self.data = model, data
        self.n = len(data)
        sites = [Site(layer, k) for layer in range(model.n_layers) for k in ("attn_z", "mlp_out")]
        self.groups: list[GroupState] = []
        clean_sum = corr_sum = 0.0
        for b in data.batches(batch_size):
            rc = run(model, b.clean, capture=sites)
            rk = run(model, b.corrupted, capture=sites)
            last = rc.logits[:, -1]
            mx.eval(last, rc.cache, rk.cache)
            self.groups.append(GroupState(b, rc.cache, rk.cache, last))
            clean_sum += float(mx.sum(self._metric(last, b, last)))
            corr_sum += float(mx.sum(self._metric(rk.logits[:, -1], b, last)))
        self.clean_metric, self.corrupted_metric = clean_sum / self.n, corr_sum / self.n

    def _metric(self, last: mx.array, b: TaskBatch, clean_last: mx.array) -> mx.array:
        return self.data.metric(last, b, clean_logits=clean_last)

    def mean_metric(self, interventions: Callable[[GroupState], list]) -> float:
        """Mean metric of clean runs with ``interventions(group)`` applied."""
        total = 0.0
        for g in self.groups:
            logits = run(self.model, g.batch.clean, interventions=interventions(g)).logits
            total += float(mx.sum(self._metric(logits[:, -1], g.batch, g.clean_last)))
        return total / self.n

    def ablate(self, c: Component, g: GroupState) -> Patch:
        """Counterfactual patch of component ``c`` in group ``g``."""
        return Patch(c.site, source=g.corrupted, head=c.head)

    def node_metric(self, c: Component) -> float:
        """Metric with component ``c`` patched from the corrupted run."""
        return self.mean_metric(lambda g: [self.ablate(c, g)])

    def circuit_metric(self, keep: Iterable[Component], all_components: list[Component]) -> float:
        """Metric with every component outside ``keep`` patched from the corrupted run."""
        keep = set(keep)
        drop = [c for c in all_components if c not in keep]
        return self.mean_metric(lambda g: [self.ablate(c, g) for c in drop])

    def _delta(self, g: GroupState, sender: Component) -> mx.array:
        site = sender.site
        dz = (g.corrupted[site] - g.clean[site])[:, :, sender.head, :]  # [B,T,dh]
        return dz @ self.model.W_O(sender.layer)[sender.head]  # [B,T,d]

    def _receiver_value(self, g: GroupState, delta: mx.array, receiver: Component) -> mx.array:
        """Receiver's activation (attn_z or mlp_out) when only it sees ``delta``."""
        read = receiver.site
        into = Site(receiver.layer, "resid_pre" if receiver.kind == "head" else "resid_mid")
        res = run(self.model, g.batch.clean, interventions=[Add(into, delta)], capture=[read],
                  stop_after=read)
        return res.cache[read]

    def path_metrics(self, sender: Component, receivers: list[Component | str]) -> list[float]:
        """Metric for each path sender -> receiver (a Component or "logits")."""
        sums = np.zeros(len(receivers))
        last_layer = Site(self.model.n_layers - 1, "resid_post")
        for g in self.groups:
            delta = self._delta(g, sender)
            values: dict[tuple, mx.array] = {}
            for i, r in enumerate(receivers):
                if r == "logits":
                    ivs = [Add(last_layer, delta)]
                else:
                    key = (r.layer, r.kind)
                    if key not in values:  # one stopped run serves every head of a layer
                        values[key] = self._receiver_value(g, delta, r)
                    ivs = [Replace(r.site, values[key], head=r.head)]
                logits = run(self.model, g.batch.clean, interventions=ivs).logits
                sums[i] += float(mx.sum(self._metric(logits[:, -1], g.batch, g.clean_last)))
        return (sums / self.n).tolist()


def receivers_of(model: Any, sender: Component) -> list[Component | str]:
    """Heads of later layers, MLPs of the same and later layers, then the logits."""
    out: list[Component | str] = []
    for layer in range(sender.layer, model.n_layers):
        if layer > sender.layer:
            out.extend(Component(layer, "head", h) for h in range(model.n_heads))
        out.append(Component(layer, "mlp"))
    out.append("logits")
    return out
