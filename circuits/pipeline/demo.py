"""The end-to-end mission on one model: dictionaries -> graph -> circuit -> validation -> figures.

Algorithm (``run_demo``), every artifact written under ``out``:
  1. Train per-layer transcoders (``mlp_in -> mlp_out``) on the model's corpus;
     evaluate them (L0, FVU, dead latents, CE recovered) -> ``dictionaries/``,
     ``dictionary_metrics.csv``.
  2. Build the exact attribution graph of one task prompt, target = the task's
     logit difference -> ``graph/``, ``graph.neuronpedia.json``.
  3. Prune by influence (node 0.8, edge 0.98) -> ``circuit_influence/``, replacement
     and completeness scores; then (``selection="faithful"``, the default) select the
     headline circuit by measured faithfulness (``select_faithful``: the smallest
     influence-ranked candidate with faithfulness in [0.9, 1.1] and complement <= 0.2)
     -> ``circuit/``, ``faithful_curve.csv``. Influence pruning alone overshoots on the
     demo prompt (faithfulness 1.63, complement -0.37), so it is kept for comparison.
  4. Validate by activation patching in the replacement model (counterfactual
     ablation): circuit faithfulness/completeness, a faithfulness curve over the
     influence ranking, and IG, AtP and jump-aware node scores against exact
     patching on several prompts (Pearson r) -> ``validation.json``, CSVs.
  5. Figures and report: circuit DOT/SVG/PNG/PDF, curves, scatter, dashboards of
     the circuit's features, co-activation of circuit features on task prompts,
     ``report.html``.
Library code: progress goes to ``progress(stage, done, total)``; nothing prints.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from circuits.pipeline.dictionaries import DictionarySpec

Progress = Callable[[str, int, int], None]
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs."""

    dictionaries: DictionarySpec = field(default_factory=lambda: DictionarySpec(
        kind="transcoder", arch="topk", width=512, k=12, tokens=3 * 2 ** 17, batch_tokens=1024))
    """Transcoders to train (per layer)."""
    task: str = "ioi"
    """Task supplying the prompt, counterfactual and logit difference."""
    example: int = 0
    """Which task example is drawn as the figure's prompt."""
    agreement_prompts: int = 6
    """Prompts over which IG is compared with exact patching."""
    ig_steps: int = 16
    """Integration steps of IG."""
    node_threshold: float = 0.8
    """Cumulative-influence share of nodes kept."""
    edge_threshold: float = 0.98
    """Cumulative-score share of edges kept."""
    dashboards: bool = True
    """Write feature dashboards for the circuit's features."""
    selection: str = "faithful"
    """Headline circuit: ``faithful`` (smallest measured candidate inside the band, see
    ``circuits.pipeline.faithful_selection``) or ``influence`` (influence pruning only)."""
    band: tuple = (0.9, 1.1)
    """``faithful`` selection: the faithfulness band the circuit must lie in."""
    max_complement: float = 0.2
    """``faithful`` selection: the largest faithfulness its complement may keep."""

    def __post_init__(self) -> None:
        from circuits.errors import ValidationError

        if self.selection not in ("faithful", "influence"):
            raise ValidationError(f"DemoConfig.selection {self.selection!r}: use 'faithful' or 'influence'")


@dataclass
class DemoResult:
    """Headline figures and artifact paths."""

    figures: dict
    """Headline numbers (scores, faithfulness, IG r, timings)."""
    artifacts: dict
    """Name -> path of every artifact written."""


def _task(model, name: str, n: int, seed: int = 0):
    from circuits import tasks

    return tasks.get(name).generate(n, seed, model.tokenizer)


def _example(data, i: int):
    return ([int(t) for t in data.clean[i]], [int(t) for t in data.corrupted[i]],
            int(data.answer[i]), int(data.wrong[i]))


def train_stage(model, cfg: DemoConfig, out: Path, progress: Progress):
    """Step 1: transcoders plus their quality table."""
    from sae import save_dictionaries

    from circuits.pipeline.dictionaries import evaluate_dictionaries, train_dictionaries

    res = train_dictionaries(model, cfg.dictionaries,
                             callback=lambda p: progress("train transcoders", p.step, p.total_steps))
    dicts = dict(zip(res.names, res.dictionaries))
    save_dictionaries(dicts, out / "dictionaries", metadata={"model": str(model.path)}, model=model)
    quality = evaluate_dictionaries(model, {d.in_site: d for d in res.dictionaries})
    quality.to_csv(out / "dictionary_metrics.csv", index=False)
    with open(out / "train_log.jsonl", "w") as f:
        for row in res.history:
            f.write(json.dumps(row, sort_keys=True, default=float) + "\n")
    return res.dictionaries, quality, res.history


def graph_stage(model, dicts, cfg: DemoConfig, out: Path, progress: Progress):
    """Steps 2-3: exact graph, influence-pruned circuit, and the headline circuit.

    Returns (graph, headline circuit, influence circuit, example, selection or None)."""
    from attribution import GraphConfig, build_graph, logit_diff
    from attribution.replacement import ReplacementModel

    from circuits.pipeline.faithful_selection import FaithfulSelectionConfig, select_faithful
    from circuits.prune import prune

    data = _task(model, cfg.task, cfg.example + 1)
    clean, corrupted, good, bad = _example(data, cfg.example)
    graph = build_graph(model, dicts, clean, targets=logit_diff(model, good, bad),
                        config=GraphConfig(batch_size=64),
                        progress=lambda s, d, t: progress("attribution graph", d, t))
    graph.save(out / "graph")
    graph.write_neuronpedia(out / "graph.neuronpedia.json")
    influence = prune(graph, cfg.node_threshold, cfg.edge_threshold)
    influence.graph.save(out / "circuit_influence")
    example = (clean, corrupted, good, bad)
    if cfg.selection == "influence":
        influence.graph.save(out / "circuit")
        return graph, influence, influence, example, None

    def metric(last):
        return last[good] - last[bad]

    sel = select_faithful(ReplacementModel(model, dicts), clean, graph, metric,
                          FaithfulSelectionConfig(band=tuple(cfg.band), max_complement=cfg.max_complement),
                          counterfactual=corrupted,
                          progress=lambda s, d, t: progress("faithful selection", d, t))
    sel.circuit.graph.save(out / "circuit")
    sel.curve.to_csv(out / "faithful_curve.csv", index=False)
    return graph, sel.circuit, influence, example, sel


def validate_stage(model, dicts, graph, circuit, example, cfg: DemoConfig, out: Path, progress: Progress,
                   influence=None):
    """Step 4: patching-measured faithfulness (of the headline circuit and, when it was
    selected by faithfulness, of the influence-pruned one), the curve over the influence
    ranking, and IG / AtP / jump-aware against exact patching."""
    import pandas as pd

    from attribution.replacement import ReplacementModel

    from circuits.pipeline.feature_faithfulness import feature_faithfulness, feature_faithfulness_curve

    clean, corrupted, good, bad = example
    rm = ReplacementModel(model, dicts)

    def metric(last):
        return last[good] - last[bad]

    progress("validate", 0, 3)
    faith = feature_faithfulness(rm, clean, circuit.graph, metric, "counterfactual", corrupted)
    influence = circuit if influence is None else influence
    faith_infl = (faith if influence is circuit else
                  feature_faithfulness(rm, clean, influence.graph, metric, "counterfactual", corrupted))
    infl = np.asarray(influence.node_influence)
    curve = feature_faithfulness_curve(rm, clean, graph, infl, metric, FRACTIONS,
                                       "counterfactual", corrupted)
    curve.to_csv(out / "faithfulness_curve.csv", index=False)
    progress("validate", 1, 3)
    agree = ig_vs_patching(model, dicts, cfg, lambda d, t: progress("IG vs patching", d, t))
    agree.to_csv(out / "ig_vs_patching.csv", index=False)
    progress("validate", 2, 3)
    effects = predicted_effects(model, dicts, cfg)
    effects.to_csv(out / "predicted_vs_measured.csv", index=False)
    progress("validate", 3, 3)
    return faith, faith_infl, curve, agree, effects


def predicted_effects(model, dicts, cfg: DemoConfig) -> "pd.DataFrame":
    """Graph-predicted vs patching-measured effects of the top feature nodes on several prompts."""
    import pandas as pd

    from circuits.validate.feature_agreement import feature_effects

    data = _task(model, cfg.task, cfg.agreement_prompts, seed=11)
    frames = [feature_effects(model, dicts, c, g, b, top_n=15, prompt=i)
              for i, (c, _, g, b) in enumerate(_example(data, i) for i in range(len(data)))]
    return pd.concat(frames, ignore_index=True)


def ig_vs_patching(model, dicts, cfg: DemoConfig, progress) -> "pd.DataFrame":
    """IG, AtP and exact-patching node scores (counterfactual) on several task prompts."""
    from circuits.validate.node_scores import node_score_agreement

    data = _task(model, cfg.task, cfg.agreement_prompts, seed=11)
    res = node_score_agreement(model, dicts, data, n_prompts=cfg.agreement_prompts,
                               methods=("ig", "atp", "jump-aware"), ig_steps=cfg.ig_steps,
                               on_progress=progress)
    return res.table


def _pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def describe_features(model, dicts, graph, n: int = 3) -> dict:
    """Short labels for feature nodes: the tokens each feature's decoder promotes most."""
    from sae.features import logit_effects

    by_layer = {d.out_site.layer: d for d in dicts}
    out = {}
    nodes = graph.nodes[graph.nodes["type"] == "feature"]
    for layer, group in nodes.groupby("layer"):
        d = by_layer[int(layer)]
        idx = sorted(set(int(f) for f in group["feature"]))
        top = logit_effects(model, np.asarray(d.W_dec)[idx], n=n)
        words = {i: " ".join(model.tokenizer.convert_ids_to_tokens([int(t) for t in top.promoted_ids[j]]))
                 for j, i in enumerate(idx)}
        for key, f in zip(group["key"], group["feature"]):
            out[key] = "+" + words[int(f)]
    return out


def figures_stage(model, dicts, graph, circuit, faith, curve, agree, quality, history,
                  cfg: DemoConfig, out: Path, progress: Progress, effects=None,
                  selection_rows=None) -> dict:
    """Step 5: figures, dashboards, co-activation, report. Returns name -> path."""
    import pandas as pd

    from viz.dot import to_dot
    from viz.style import CircuitStyle
    from viz.plots import faithfulness_curves, predicted_vs_measured
    from viz.render import render
    from viz.report import standard_sections, write_report

    arts = {}
    desc = describe_features(model, dicts, circuit.graph)
    # The figure states what the circuit was chosen by and what patching measured.
    how = "chosen by faithfulness" if cfg.selection == "faithful" else "influence-pruned"
    title = (f"{cfg.task} circuit, {how}: faithfulness {faith.faithfulness:.3f}, "
             f"complement {faith.completeness:.3f}")
    dot = to_dot(circuit, style=CircuitStyle(max_edges=120, title=title), descriptions=desc)
    (out / "circuit.dot").write_text(dot)
    for ext in ("svg", "png", "pdf"):
        arts[f"circuit.{ext}"] = str(render(dot, out / f"circuit.{ext}"))
    cdf = curve.assign(method="influence ranking", pct=curve["fraction"] * 100)
    fig_curve = faithfulness_curves(cdf[["method", "pct", "faithfulness"]],
                                    title="Feature-circuit faithfulness (counterfactual patching)",
                                    xlabel="graph nodes kept, by influence (%)",
                                    path=out / "faithfulness_curve.svg")
    fig_scatter = predicted_vs_measured(agree["ig"], agree["patching"],
                                        title="IG node scores vs exact patching",
                                        path=out / "ig_vs_patching.svg")
    arts.update({"faithfulness_curve.svg": str(out / "faithfulness_curve.svg"),
                 "ig_vs_patching.svg": str(out / "ig_vs_patching.svg")})
    if effects is not None and len(effects):
        predicted_vs_measured(effects["predicted_total"], effects["measured_iterative"],
                              title="Graph-predicted vs measured feature ablation (iterative)",
                              xlabel="predicted by the graph (total effect)",
                              ylabel="measured by patching", path=out / "graph_vs_patching.svg")
        arts["graph_vs_patching.svg"] = str(out / "graph_vs_patching.svg")
    progress("figures", 1, 3)
    links, co_fig = feature_pages(model, dicts, circuit, cfg, out, arts) if cfg.dashboards else ({}, None)
    progress("figures", 2, 3)
    tables = {"Dictionary quality": scalar_table(quality),
              "Graph scores": pd.DataFrame([{"graph": k, **getattr(circuit.scores, k)._asdict()}
                                            for k in ("full", "pruned", "merged")]),
              "Validation (activation patching, counterfactual)": pd.DataFrame([asdict(faith)])}
    if selection_rows:
        tables["Circuit selection (faithfulness and complement measured by patching)"] = pd.DataFrame(selection_rows)
    if effects is not None and len(effects):
        from circuits.validate.feature_agreement import agreement_summary

        tables["Graph-predicted vs measured feature effects"] = agreement_summary(effects)
    sections = standard_sections(circuit=out / "circuit.svg", tables=tables, faithfulness=fig_curve,
                                 scatter=fig_scatter, coactivation=co_fig, dashboards=links,
                                 ablation="counterfactual")
    write_report(out / "report.html", sections, title=f"mlx-circuits: {cfg.task} on {Path(str(model.path)).name}")
    arts["report.html"] = str(out / "report.html")
    progress("figures", 3, 3)
    return arts


def scalar_table(df):
    """The columns of ``df`` that hold one scalar per row (drops per-latent arrays), rounded."""
    def is_array(v):
        return (isinstance(v, str) and v.lstrip().startswith("[")) or (
            hasattr(v, "__len__") and not isinstance(v, str))

    keep = [c for c in df.columns if not df[c].map(is_array).any()]
    return df[keep].round(4)


def feature_pages(model, dicts, circuit, cfg: DemoConfig, out: Path, arts: dict):
    """Dashboards of the circuit's features and their co-activation on task prompts."""
    from sae.features import (
        FeatureStatsConfig, coactivation_matrix, coactivation_report, feature_records, feature_stats,
    )
    from viz.dashboard import write_dashboards
    from viz.feature_plots import coactivation_heatmap

    from circuits.pipeline.corpus import corpus_texts

    nodes = circuit.graph.nodes[circuit.graph.nodes["type"] == "feature"]
    by_layer = {d.out_site.layer: d for d in dicts}
    texts = list(corpus_texts(model, None, 1500, seed=21))
    records, feats = [], []
    for layer, group in nodes.groupby("layer"):
        d = by_layer[int(layer)]
        idx = sorted(set(int(f) for f in group["feature"]))
        stats = feature_stats(model, d, texts, FeatureStatsConfig(top_k=12))
        records += feature_records(stats, model, features=idx)
        feats += [(d.in_site, i) for i in idx]
    if not records:
        return {}, None
    write_dashboards(records, out / "dashboards", title="Circuit features")
    arts["dashboards/index.html"] = str(out / "dashboards" / "index.html")
    prompts = [np.asarray(p) for p in _task(model, cfg.task, 200, seed=5).clean]
    rep = coactivation_report(model, {d.in_site: d for d in dicts}, feats, prompts)
    rep.pairs.to_csv(out / "coactivation_pairs.csv", index=False)
    arts["coactivation_pairs.csv"] = str(out / "coactivation_pairs.csv")
    fig = None
    if len(feats) > 1:
        mat = coactivation_matrix(rep, "jaccard")
        fig = coactivation_heatmap(mat.to_numpy(), list(mat.index), title="Circuit-feature co-activation (Jaccard)")
    return {"index of circuit features": "dashboards/index.html"}, fig


def run_demo(out: Path, model_path: str | None = None, cfg: DemoConfig = DemoConfig(),
             progress: Progress = lambda s, d, t: None) -> DemoResult:
    """Run steps 1-5 into ``out`` (see the module docstring)."""
    from attribution import load_model

    from circuits.organisms import SHIPPED

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(model_path or SHIPPED / "ioi")
    t = {}
    t0 = time.perf_counter()
    dicts, quality, history = train_stage(model, cfg, out, progress)
    t["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph, circuit, influence, example, sel = graph_stage(model, dicts, cfg, out, progress)
    t["graph_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    faith, faith_infl, curve, agree, effects = validate_stage(model, dicts, graph, circuit, example, cfg, out,
                                                              progress, influence)
    rows = [{"circuit": "influence pruning (node 0.8, edge 0.98)", "nodes": int(influence.node_mask.sum()),
             "faithfulness": faith_infl.faithfulness, "complement": faith_infl.completeness}]
    if sel is not None:
        rows.append({"circuit": f"faithful selection (band {cfg.band[0]}-{cfg.band[1]}, complement <= "
                                f"{cfg.max_complement}; headline)", "nodes": int(circuit.node_mask.sum()),
                     "faithfulness": faith.faithfulness, "complement": faith.completeness})
    t["validate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    arts = figures_stage(model, dicts, graph, circuit, faith, curve, agree, quality, history,
                         cfg, out, progress, effects, rows)
    t["figures_s"] = time.perf_counter() - t0
    s = circuit.scores
    figures = {
        "model": str(model.path),
        "prompt": model.tokenizer.decode(example[0], skip_special_tokens=True),
        "answer": model.to_str_tokens([example[2]])[0], "wrong": model.to_str_tokens([example[3]])[0],
        "graph_nodes": len(graph.nodes), "graph_edges": int(graph.adjacency.nnz),
        "circuit_nodes": int(circuit.node_mask.sum()), "circuit_edges": int(circuit.graph.adjacency.nnz),
        "replacement_full": s.full.replacement, "completeness_full": s.full.completeness,
        "replacement_pruned": s.pruned.replacement, "completeness_pruned": s.pruned.completeness,
        "faithfulness": faith.faithfulness, "completeness_patching": faith.completeness,
        "selection": cfg.selection, "selection_met": None if sel is None else bool(sel.met),
        "selection_reason": None if sel is None else sel.reason,
        "influence_circuit_nodes": int(influence.node_mask.sum()),
        "influence_faithfulness": faith_infl.faithfulness, "influence_complement": faith_infl.completeness,
        "jump_aware_vs_patching_r": _pearson(agree["jump-aware"], agree["patching"]),
        "ig_vs_patching_r": _pearson(agree["ig"], agree["patching"]),
        "atp_vs_patching_r": _pearson(agree["atp"], agree["patching"]),
        "graph_vs_patching_r_constrained": _pearson(effects["predicted_direct"], effects["measured_constrained"]),
        "graph_vs_patching_r_iterative": _pearson(effects["predicted_total"], effects["measured_iterative"]),
        "fvu_mean": float(quality["fvu"].mean()) if "fvu" in quality else float("nan"),
        "ce_recovered_mean": float(quality["ce_recovered"].mean()) if "ce_recovered" in quality else float("nan"),
        **{k: round(v, 1) for k, v in t.items()},
    }
    (out / "validation.json").write_text(json.dumps({"figures": figures, "faithfulness": asdict(faith)},
                                                    indent=2, sort_keys=True, default=float))
    arts.update({"dictionaries": str(out / "dictionaries"), "graph": str(out / "graph"),
                 "circuit": str(out / "circuit"), "circuit_influence": str(out / "circuit_influence"),
                 "validation.json": str(out / "validation.json")})
    if sel is not None:
        arts["faithful_curve.csv"] = str(out / "faithful_curve.csv")
    return DemoResult(figures, arts)
