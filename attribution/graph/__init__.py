"""Attribution graphs: typed node keys, the ``Graph`` type, sparsification, files.

Submodules:
- ``keys``: ``FeatureNode``, ``ErrorNode``, ``TokenNode``, ``LogitNode`` and their string forms.
- ``nodes``: the node-table schema.
- ``graph``: ``Graph`` (node table + CSR adjacency ``A[target, source]``).
- ``sparsify``: streamed top-k / threshold sparsification with dropped mass.
- ``io``: ``graph.json`` + ``graph.safetensors`` directories (atomic, never pickle).
- ``neuronpedia``: Neuronpedia JSON export and validator.
- ``memory``: memory estimate for graph construction.

Importing this package does no work beyond importing its modules.
"""

from attribution.graph.errors import (
    GraphError,
    GraphFileError,
    GraphMemoryError,
    GraphSchemaError,
    GraphValidationError,
    NeuronpediaError,
    NodeKeyError,
    SparsifyError,
)
from attribution.graph.graph import GRAPH_SCHEMA, GRAPH_VERSION, Graph
from attribution.graph.io import load_graph, save_graph
from attribution.graph.keys import (
    NODE_TYPES,
    ErrorNode,
    FeatureNode,
    LogitNode,
    NodeKey,
    TokenNode,
    as_key,
    parse_key,
)
from attribution.graph.memory import MemoryEstimate, available_memory_bytes, estimate_memory
from attribution.graph.neuronpedia import (
    neuronpedia_id,
    neuronpedia_ids,
    parse_neuronpedia_id,
    to_neuronpedia,
    validate_neuronpedia,
    write_neuronpedia,
)
from attribution.graph.nodes import NODE_COLUMNS, canonical_order, make_node_table
from attribution.graph.sparsify import SparseRowBuilder, SparseRows, sparsify

__all__ = [
    "GRAPH_SCHEMA",
    "GRAPH_VERSION",
    "NODE_COLUMNS",
    "NODE_TYPES",
    "ErrorNode",
    "FeatureNode",
    "Graph",
    "GraphError",
    "GraphFileError",
    "GraphMemoryError",
    "GraphSchemaError",
    "GraphValidationError",
    "LogitNode",
    "MemoryEstimate",
    "NeuronpediaError",
    "NodeKey",
    "NodeKeyError",
    "SparseRowBuilder",
    "SparseRows",
    "SparsifyError",
    "TokenNode",
    "as_key",
    "available_memory_bytes",
    "canonical_order",
    "estimate_memory",
    "load_graph",
    "make_node_table",
    "neuronpedia_id",
    "neuronpedia_ids",
    "parse_key",
    "parse_neuronpedia_id",
    "save_graph",
    "sparsify",
    "to_neuronpedia",
    "validate_neuronpedia",
    "write_neuronpedia",
]
