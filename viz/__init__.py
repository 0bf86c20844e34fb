"""viz: Graphviz circuit figures, dashboards, reports and plots."""

import attribution as _attribution  # noqa: F401  (loads the optimised BLAS before mlx on Linux)
