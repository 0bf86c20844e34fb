"""circuits: tasks, organisms, pruning, discovery, validation, benchmarks, pipeline and CLI."""

import attribution as _attribution  # noqa: F401  (loads the optimised BLAS before mlx on Linux)
