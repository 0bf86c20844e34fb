"""viz: Graphviz circuit figures, dashboards, reports and plots.

Reads graphs (``attribution.graph``), plain DataFrames, dicts and arrays; never imports
``sae`` or ``circuits``. Importing does no work: matplotlib is imported inside the
plotting functions and Graphviz ``dot`` runs only in ``viz.render``.

- ``dot``: ``to_dot`` (circuit -> DOT text); ``component``: ``component_to_dot``.
- ``supernodes``: ``auto_supernodes`` (grouping by cosine); ``style``: ``CircuitStyle``.
- ``render``: ``render`` / ``render_svg`` / ``run_dot`` (the only caller of ``dot``).
- ``plots`` and ``feature_plots``: matplotlib figures; ``dashboard``: feature pages;
  ``report``: one self-contained HTML report.
"""

import attribution as _attribution  # noqa: F401  (loads the optimised BLAS before mlx on Linux)
from viz.component import component_to_dot
from viz.dashboard import check_record, feature_page, index_page, token_heatmap_html, write_dashboards
from viz.dot import to_dot
from viz.errors import GraphvizNotFoundError, RenderError, SchemaError, VizError
from viz.feature_plots import coactivation_heatmap, log_density_histogram, token_heatmap_figure, training_curves
from viz.plots import (
    EDGE_PCTS,
    area_scores,
    faithfulness_curves,
    l0_fvu_pareto,
    pareto_mask,
    predicted_vs_measured,
    save_figure,
)
from viz.render import render, render_svg, run_dot
from viz.report import Links, Section, Svg, report_html, standard_sections, write_report
from viz.style import CircuitStyle
from viz.supernodes import AutoSupernodes, auto_supernodes

__all__ = [
    "EDGE_PCTS", "AutoSupernodes", "CircuitStyle", "GraphvizNotFoundError", "Links", "RenderError",
    "SchemaError", "Section", "Svg", "VizError", "area_scores", "auto_supernodes", "check_record",
    "coactivation_heatmap", "component_to_dot", "faithfulness_curves", "feature_page", "index_page",
    "l0_fvu_pareto", "log_density_histogram", "pareto_mask", "predicted_vs_measured", "render",
    "render_svg", "report_html", "run_dot", "save_figure", "standard_sections", "to_dot",
    "token_heatmap_figure", "token_heatmap_html", "training_curves", "write_dashboards", "write_report",
]
