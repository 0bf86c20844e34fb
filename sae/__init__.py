"""sae: sparse dictionaries (SAEs, transcoders, CLTs): training, evaluation, statistics."""

import attribution as _attribution  # noqa: F401  (loads the optimised BLAS before mlx on Linux)
