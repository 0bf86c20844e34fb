"""Component-level ``circuits validate``: discover a head/MLP circuit and check it by patching.

Flags (``add_arguments``): ``--method`` eap | eap-ig | exact | acdc, ``--n`` examples,
``--level`` edge | node, ``--qkv`` joint | separate, ``--top-n N`` or ``--threshold X``
(|score| in metric units; not both, not with acdc), ``--acdc-threshold`` (acdc
only), ``--ig-steps`` (eap-ig only), ``--seed`` (task examples and resample
ablation). Without ``--top-n``/``--threshold`` the top 10% of units are selected.

Algorithm (``run_component``):
  1. Check every flag and that the model is covered by the masking core (one line
     naming the flag or the model and the fix), before any model work; ``--top-n``
     must not exceed the units of the model's component graph.
  2. Generate ``--n`` task examples with ``--seed`` (a task file keeps at most its
     rows); build the masked model under ``--ablation`` and ``--qkv``.
  3. Discover with ``--method`` at ``--level``; faithfulness/completeness of the
     selected circuit (the embedding's treatment is recorded).
  4. MIB curves (CPR, CMD) over the ranking; predicted-vs-measured node effects
     for the gradient methods (first 20 examples).
  5. Write ``faithfulness_curve.csv``, ``component_scores.csv``
     (``predicted_vs_measured.csv``), ``component_circuit.json`` (selected nodes
     and edges with scores, model, task, metric, method) and its figure
     ``component_circuit.dot`` / ``.svg`` (``viz.components``; the SVG is skipped,
     and the record says so, when Graphviz is missing) into the staging directory;
     return the record (every setting and the number of examples used).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
import warnings

from circuits.cli._common import CLIError, progress
from circuits.cli.validate_feature import SmallDenominatorWarning
from circuits.validate.faithfulness import denominator_warning

METHODS = ("eap", "eap-ig", "exact", "acdc")
LEVELS = ("edge", "node")
QKV = ("joint", "separate")
CIRCUIT_SCHEMA = "mlx-circuits/component-circuit"
"""``schema`` of ``component_circuit.json``."""


# ------------------------------------------------------------------ flag checks
def int_flag(value: Any, flag: str, minimum: int = 1, what: str = "") -> int:
    """``value`` (a flag's text or a config value) as an int >= ``minimum``; ``CLIError`` if not."""
    about = f" ({what})" if what else ""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        out = int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
    except (TypeError, ValueError):
        raise CLIError(f"{flag} must be an integer >= {minimum}{about}, got {value!r}") from None
    if out < minimum:
        raise CLIError(f"{flag} must be an integer >= {minimum}{about}, got {out}")
    return out


def float_flag(value: Any, flag: str, minimum: float = 0.0, what: str = "",
               strict: bool = False) -> float:
    """``value`` as a finite float >= ``minimum`` (> with ``strict``); ``CLIError`` if not."""
    rel = ">" if strict else ">="
    about = f" ({what})" if what else ""
    try:
        if isinstance(value, bool):
            raise ValueError
        out = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except (TypeError, ValueError):
        raise CLIError(f"{flag} must be a number {rel} {minimum:g}{about}, got {value!r}") from None
    if not math.isfinite(out) or out < minimum or (strict and out == minimum):
        raise CLIError(f"{flag} must be a finite number {rel} {minimum:g}{about}, got {value!r}")
    return out


def check_choices(values: Sequence[str] | None, flag: str, choices: Sequence[str]) -> list[str]:
    """``values`` if each is one of ``choices`` (and there is at least one); ``CLIError`` if not."""
    values = list(values or [])
    if not values:
        raise CLIError(f"{flag} needs at least one of: {', '.join(choices)}")
    bad = [v for v in values if v not in choices]
    if bad:
        raise CLIError(f"{flag}: unknown value {bad[0]!r}; choose from {', '.join(choices)}")
    return values


# ------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ComponentSettings:
    """Every setting of one component validation (recorded in ``validation.json``)."""

    task: str
    """Built-in task name or task file."""
    method: str
    """eap, eap-ig, exact or acdc."""
    ablation: str
    """counterfactual, zero, mean or resample."""
    level: str
    """edge (component-graph edges) or node (heads, MLPs, embed)."""
    qkv: str
    """joint (one input edge per head) or separate (q, k, v edges)."""
    n: int
    """Examples asked for (a task file keeps at most its rows)."""
    top_n: int | None
    """Select the top_n units by |score| (None: not used)."""
    threshold: float | None
    """Select units with |score| >= threshold, metric units (None: not used)."""
    acdc_threshold: float | None
    """ACDC removal threshold tau, metric units (acdc only)."""
    ig_steps: int | None
    """EAP-IG interpolation steps (eap-ig only)."""
    seed: int
    """Seed of the task examples and of the resample ablation."""

    @property
    def selection(self) -> str:
        """How the circuit is chosen, in words."""
        if self.method == "acdc":
            return f"ACDC: units whose removal changes the metric by >= {self.acdc_threshold:g}"
        if self.top_n is not None:
            return f"top {self.top_n} by |score|"
        if self.threshold is not None:
            return f"|score| >= {self.threshold:g}"
        return "top 10% of units by |score|"


def _given(args, name: str):
    return getattr(args, name, None)


def settings_from_args(args) -> ComponentSettings:
    """Check the component flags (module docstring) and return the settings."""
    method = check_choices([args.method], "--method", METHODS)[0]
    ablation = check_choices([args.ablation], "--ablation", ("counterfactual", "zero", "mean", "resample"))[0]
    level = check_choices([args.level], "--level", LEVELS)[0]
    qkv = check_choices([args.qkv], "--qkv", QKV)[0]
    n = int_flag(args.n, "--n", 1, "task examples")
    top_n, thr = _given(args, "top_n"), _given(args, "threshold")
    if top_n is not None and thr is not None:
        raise CLIError("--top-n and --threshold both select the circuit; give one of them")
    if method == "acdc" and (top_n is not None or thr is not None):
        raise CLIError("--top-n/--threshold do not apply to --method acdc, which keeps what it "
                       "could not remove; set --acdc-threshold instead")
    top_n = None if top_n is None else int_flag(top_n, "--top-n", 1, "units to keep")
    thr = None if thr is None else float_flag(thr, "--threshold", 0.0, "|score| in metric units",
                                              strict=True)
    tau, steps = _given(args, "acdc_threshold"), _given(args, "ig_steps")
    if tau is not None and method != "acdc":
        raise CLIError(f"--acdc-threshold applies to --method acdc only (this run uses {method})")
    if steps is not None and method != "eap-ig":
        raise CLIError(f"--ig-steps applies to --method eap-ig only (this run uses {method})")
    tau = (0.05 if tau is None else float_flag(tau, "--acdc-threshold", 0.0, "metric units")) \
        if method == "acdc" else None
    steps = (8 if steps is None else int_flag(steps, "--ig-steps", 1, "interpolation steps")) \
        if method == "eap-ig" else None
    seed = int_flag(args.seed, "--seed", 0)
    return ComponentSettings(str(args.task), method, ablation, level, qkv, n, top_n, thr, tau,
                             steps, seed)


def add_arguments(p) -> None:
    """Flags that only the component level reads (checked in ``settings_from_args``, so a bad
    value is one line naming the flag and the fix)."""
    p.add_argument("--method", default="eap-ig", metavar="METHOD", help="eap, eap-ig (default), exact, acdc")
    p.add_argument("--n", default=50, metavar="N", help="task examples for component validation (default 50)")
    p.add_argument("--level", default="edge", metavar="LEVEL",
                   help="edge (default: component-graph edges) or node (heads, MLPs)")
    p.add_argument("--qkv", default="joint", metavar="MODE",
                   help="head inputs: joint (default, one edge per head) or separate (q, k, v)")
    p.add_argument("--top-n", default=None, metavar="N", help="keep the N units of largest |score|")
    p.add_argument("--threshold", default=None, metavar="X",
                   help="keep units with |score| >= X (metric units; not with --top-n)")
    p.add_argument("--acdc-threshold", default=None, metavar="TAU",
                   help="ACDC removal threshold in metric units (acdc only; default 0.05)")
    p.add_argument("--ig-steps", default=None, metavar="K", help="EAP-IG steps (eap-ig only; default 8)")
    p.add_argument("--seed", default=0, metavar="S", help="seed of the task examples and resample ablation")


# ------------------------------------------------------------------- circuit
def circuit_record(res: Any, faith: Any, settings: ComponentSettings, model: str,
                   n_examples: int) -> dict:
    """The ``component_circuit.json`` record of a discovery result (see ``viz.components``)."""
    from circuits.discover import EMBED, LOGITS, display_name

    df = res.scores[res.scores["in_circuit"]].sort_values("rank")
    if res.level == "edge":
        edges = [{"source": display_name(r.upstream), "target": display_name(r.downstream),
                  "port": r.port or None, "score": float(r.score)} for r in df.itertuples()]
        ends = dict.fromkeys(n for e in edges for n in (e["source"], e["target"]))
        nodes = [{"name": n, "score": None} for n in ends]
    else:
        kept = [display_name(u) for u in df["unit"]]
        nodes = [{"name": n, "score": float(s)} for n, s in zip(kept, df["score"])]
        keep = set(df["unit"]) | {LOGITS}
        pairs = dict.fromkeys((str(e.upstream), str(e.downstream)) for e in res.graph.edges
                              if str(e.upstream) in keep and str(e.downstream) in keep)
        edges = [{"source": display_name(u), "target": display_name(d), "port": None, "score": None}
                 for u, d in pairs]
        if edges:
            nodes.append({"name": display_name(LOGITS), "score": None})
    return {
        "schema": CIRCUIT_SCHEMA, "version": 1, "model": model, "task": settings.task,
        "metric": res.metric, "method": res.method, "ablation": res.ablation, "level": res.level,
        "qkv": settings.qkv, "selection": settings.selection, "n_examples": n_examples,
        "faithfulness": faith.faithfulness, "completeness": faith.completeness,
        "include_embedding": faith.include_embedding, "embed_name": display_name(EMBED),
        "nodes": nodes, "edges": edges,
    }


def _draw(circuit: dict, tmp: Path) -> str | None:
    """Write the .dot and (Graphviz permitting) .svg; returns why the SVG is missing, or None."""
    from viz.components import render_component_circuit
    from viz.errors import GraphvizNotFoundError

    render_component_circuit(circuit, tmp / "component_circuit.dot")
    try:
        render_component_circuit(circuit, tmp / "component_circuit.svg")
    except GraphvizNotFoundError as exc:  # the numbers stand without the figure
        return str(exc)
    return None


# ----------------------------------------------------------------------- run
def run_component(args, model, tmp: Path) -> dict:
    """Module docstring, steps 1-5: the ``validation.json`` record; files into ``tmp``."""
    from circuits import tasks
    from circuits.discover import ComponentGraph, DiscoverConfig, check_model, discover_masked
    from circuits.discover.masking import MaskedModel
    from circuits.validate import faithfulness, faithfulness_curve, predicted_vs_measured

    s = settings_from_args(args)
    check_model(model)
    g = ComponentGraph(model.n_layers, model.n_heads, s.qkv)
    units = g.n_edges if s.level == "edge" else g.n_nodes
    if s.top_n is not None and s.top_n > units:
        raise CLIError(f"--top-n {s.top_n} exceeds the {units} {s.level}s of this model's component "
                       f"graph; give at most {units}")
    data = tasks.get(s.task).generate(s.n, s.seed, model.tokenizer)
    cfg = DiscoverConfig(method=s.method, level=s.level, ablation=s.ablation, qkv=s.qkv,
                         ig_steps=s.ig_steps or 8, tau=0.05 if s.acdc_threshold is None else s.acdc_threshold,
                         top_n=s.top_n, threshold=s.threshold, seed=s.seed)
    mm = MaskedModel(model, data, cfg.ablation, cfg.qkv, cfg.batch_size, cfg.seed, cfg.metric)
    with progress(args, f"discover ({s.method})") as bar:
        res = discover_masked(mm, cfg, on_progress=lambda st, d, t: bar(d, t))
    f = faithfulness(mm, res)
    curve = faithfulness_curve(mm, res)
    curve.table.to_csv(tmp / "faithfulness_curve.csv", index=False)
    res.scores.to_csv(tmp / "component_scores.csv", index=False)
    agree = None
    if s.method in ("eap", "eap-ig"):
        agree = predicted_vs_measured(model, data, s.method, steps=s.ig_steps or 8,
                                      ablation=s.ablation, max_prompts=20, seed=s.seed, qkv=s.qkv)
        agree.table.to_csv(tmp / "predicted_vs_measured.csv", index=False)
    model_name = str(getattr(model, "path", "") or getattr(args, "model", "") or "")
    circuit = circuit_record(res, f, s, model_name, mm.n)
    (tmp / "component_circuit.json").write_text(json.dumps(circuit, indent=1, default=float))
    no_svg = _draw(circuit, tmp)
    warn = denominator_warning(f.f_full, f.f_empty)
    if warn is not None:
        warnings.warn(SmallDenominatorWarning(warn))
    return {**({"warning": warn} if warn else {}), "level": "component", "method": s.method, "ablation": s.ablation, "task": s.task,
            "metric": res.metric, "n_examples": mm.n, "settings": asdict(s),
            "selection": s.selection, "faithfulness": f.faithfulness,
            "completeness": f.completeness, "include_embedding": f.include_embedding,
            "cpr": curve.cpr, "cmd": curve.cmd, "n_selected": int(res.mask().sum()),
            "n_selected_units": int(res.scores["in_circuit"].sum()),
            "ig_vs_patching_r": None if agree is None else agree.pearson,
            "component_circuit": "component_circuit.json",
            "figure": None if no_svg else "component_circuit.svg",
            **({"figure_skipped": no_svg} if no_svg else {})}
