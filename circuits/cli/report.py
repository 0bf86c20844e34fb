"""``circuits report``: one offline HTML report from a run directory.

Reads whatever a run left in ``--run`` (``circuit/`` or ``circuit.svg``,
``dictionary_metrics.csv``, ``validation.json``, ``faithfulness_curve.csv``,
``ig_vs_patching.csv``, ``benchmark.csv``, ``dashboards/``) and writes
``report.html`` with the sections it can fill.
"""

from __future__ import annotations

import json
from pathlib import Path

from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="write a self-contained HTML report from a run directory")
    p.add_argument("--run", type=Path, default=Path("out"), help="directory of a demo/CLI run")
    p.add_argument("--out", type=Path, default=None, help="report path (default RUN/report.html)")
    p.add_argument("--config", type=Path, default=None, help="TOML or JSON options file")


def collect_sections(run: Path):
    import pandas as pd

    from circuits.pipeline.demo import scalar_table
    from viz.plots import faithfulness_curves, predicted_vs_measured
    from viz.report import standard_sections

    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist; run `circuits demo` first")
    circuit = run / "circuit.svg" if (run / "circuit.svg").exists() else None
    if circuit is None and (run / "circuit" / "graph.json").exists():
        from attribution.graph import Graph

        circuit = Graph.load(run / "circuit")
    tables = {}
    for name, title in (("dictionary_metrics.csv", "Dictionary quality"),
                        ("benchmark.csv", "Benchmark"), ("bench/benchmark.csv", "Benchmark")):
        if (run / name).exists():
            tables[title] = scalar_table(pd.read_csv(run / name))
    if (run / "validation.json").exists():
        v = json.loads((run / "validation.json").read_text())
        fig = v.get("figures", v)
        tables["Validation"] = pd.DataFrame({"figure": list(fig), "value": [str(x) for x in fig.values()]})
    faith = scatter = None
    if (run / "faithfulness_curve.csv").exists():
        c = pd.read_csv(run / "faithfulness_curve.csv")
        c = c.assign(method="influence ranking", pct=c["fraction"] * 100)
        faith = faithfulness_curves(c[["method", "pct", "faithfulness"]],
                                    title="Feature-circuit faithfulness (counterfactual patching)",
                                    xlabel="graph nodes kept, by influence (%)")
    if (run / "ig_vs_patching.csv").exists():
        a = pd.read_csv(run / "ig_vs_patching.csv")
        scatter = predicted_vs_measured(a["ig"], a["patching"], title="IG vs exact patching")
    links = {"feature dashboards": "dashboards/index.html"} if (run / "dashboards" / "index.html").exists() else None
    if not (circuit is not None or tables or faith is not None):
        raise FileNotFoundError(f"{run} holds no circuit, tables or curves to report")
    return standard_sections(circuit=circuit, tables=tables, faithfulness=faith, scatter=scatter,
                             dashboards=links, ablation="counterfactual")


def run(args) -> int:
    from viz.report import write_report

    out = args.out or args.run / "report.html"
    write_report(out, collect_sections(args.run), title=f"mlx-circuits report: {args.run}")
    emit(args, {"report": str(out)}, [f"wrote {out}"])
    return 0
