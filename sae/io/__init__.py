"""Dictionary file formats: ours, SAELens, circuit-tracer."""

from sae.io.circuit_tracer import (
    export_circuit_tracer, export_clt, import_circuit_tracer, import_clt,
)
from sae.io.native import (
    IDENTITY_KEY, check_model, check_sites, load_dictionaries, load_dictionary, save_dictionaries,
    save_dictionary,
)
from sae.io.saelens import export_saelens, import_saelens, read_sparsity

__all__ = ["IDENTITY_KEY", "check_model", "check_sites", "export_circuit_tracer", "export_clt",
           "export_saelens", "import_circuit_tracer", "import_clt", "import_saelens", "load_dictionaries",
           "load_dictionary", "read_sparsity", "save_dictionaries", "save_dictionary"]
