"""Many prompts: aggregate attribution graphs, diff graphs or aggregates, find supernodes.

- ``aggregate`` (``aggregate.py``): position-free (or aligned) node keys, presence, mean and
  std of activation, influence and edge weights over prompts; ``Aggregate.filter``,
  ``to_graph``, ``to_dot``, ``save``/``load``.
- ``diff`` (``diff.py``): nodes and edges only in A, only in B, deltas of shared ones,
  Jaccard indices and the correlation of shared edge weights.
- ``find_supernodes``, ``collapse`` (``supernodes.py``): agglomerative clustering of features
  by decoder direction, attribution profile and co-activation, with a bootstrap stability
  check; exact collapse of a graph into supernodes.
"""

from circuits.multi.aggregate import Aggregate, AggregateConfig, aggregate, aggregate_key
from circuits.multi.diff import DiffConfig, DiffSummary, GraphDiff, diff
from circuits.multi.errors import MultiError
from circuits.multi.supernodes import (
    SupernodeConfig, SupernodeGraph, Supernodes, adjusted_rand_index, collapse, decoder_vectors, find_supernodes,
)

__all__ = ["Aggregate", "AggregateConfig", "DiffConfig", "DiffSummary", "GraphDiff", "MultiError", "SupernodeConfig",
           "SupernodeGraph", "Supernodes", "adjusted_rand_index", "aggregate", "aggregate_key", "collapse",
           "decoder_vectors", "diff", "find_supernodes"]
