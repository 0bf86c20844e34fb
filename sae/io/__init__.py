"""Dictionary file formats: ours, SAELens, circuit-tracer (per-layer sets and CLTs).

``sae.io.hooks`` maps the TransformerLens hook names these formats use to Sites;
``sae.io._files`` reads weights once, without a second copy, checking NaN/inf.
"""

from sae.io.circuit_tracer import (
    CircuitTracerConfig,
    SiteMismatchWarning,
    export_circuit_tracer,
    import_circuit_tracer,
    read_config,
)
from sae.io.clt import export_clt, import_clt
from sae.io.detect import FORMATS, dictionary_format, open_dictionaries
from sae.io.hooks import (
    TL_HOOKS,
    HookSite,
    NormFoldError,
    UnsupportedHookError,
    hook_site,
    tl_hook_name,
)
from sae.io.native import (
    IDENTITY_KEY,
    check_model,
    check_sites,
    load_dictionaries,
    load_dictionary,
    save_dictionaries,
    save_dictionary,
)
from sae.io.saelens import SAELENS_ARCHS, export_saelens, import_saelens, read_sparsity

__all__ = ["FORMATS", "IDENTITY_KEY", "SAELENS_ARCHS", "TL_HOOKS", "CircuitTracerConfig", "HookSite",
           "NormFoldError", "SiteMismatchWarning", "UnsupportedHookError", "check_model",
           "check_sites", "dictionary_format", "export_circuit_tracer", "export_clt", "export_saelens", "hook_site",
           "import_circuit_tracer", "import_clt", "import_saelens", "load_dictionaries",
           "load_dictionary", "open_dictionaries", "read_config", "read_sparsity", "save_dictionaries",
           "save_dictionary", "tl_hook_name"]
