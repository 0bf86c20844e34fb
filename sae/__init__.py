"""sae: sparse dictionaries (SAEs, transcoders, CLTs): training, evaluation, statistics.

Public API:
  1. Architectures: ``Dictionary`` (base) and ``ReLUDictionary``, ``TopKDictionary``,
     ``BatchTopKDictionary``, ``JumpReLUDictionary``, ``GatedDictionary``,
     ``MatryoshkaDictionary``, ``CrossLayerTranscoder``; ``architecture(name)``.
     Parts: ``ComposedDictionary`` built from a ``Recipe`` of registered parts
     (``sae.parts``; named recipes in ``RECIPES``, new parts with ``register``).
  2. Training: ``TrainConfig``, ``train(source, configs, ...) -> TrainResult``.
  3. Data: ``ArraySource``, ``StreamSource``, ``ActivationCache``/``write_cache``, ``harvest``.
  4. Evaluation: ``evaluate(dicts, source) -> pandas.DataFrame``.
  5. Formats: ``save_dictionary``/``load_dictionary``, ``save_dictionaries``/``load_dictionaries``,
     ``export_saelens``/``import_saelens``, ``export_circuit_tracer``/``import_circuit_tracer``,
     ``export_clt``/``import_clt``.
Errors live in ``sae.errors``.
"""

import attribution as _attribution  # noqa: F401  (loads the optimised BLAS before mlx on Linux)


from sae.arch import (  # noqa: E402
    ARCHITECTURES, BatchTopKDictionary, CrossLayerTranscoder, GatedDictionary, JumpReLUDictionary,
    MatryoshkaDictionary, ReLUDictionary, TopKDictionary, architecture,
)
from sae.data import ActivationCache, ArraySource, StreamSource, harvest_source, write_cache  # noqa: E402
from sae.dictionary import Dictionary  # noqa: E402
from sae.parts import RECIPES, ComposedDictionary, Recipe  # noqa: E402
from sae.errors import (  # noqa: E402
    CacheMismatchError, ConfigError, EmptyDatasetError, FormatError, NonFiniteError, SAEError,
    ShapeMismatchError, UnknownArchitectureError,
)
from sae.evaluate import evaluate  # noqa: E402
from sae.io import (  # noqa: E402
    export_circuit_tracer, export_clt, export_saelens, import_circuit_tracer, import_clt,
    import_saelens, load_dictionaries, load_dictionary, open_dictionaries, save_dictionaries,
    save_dictionary,
)
from sae.splice import evaluate_spliced  # noqa: E402
from sae.train import TrainConfig, TrainProgress, TrainResult, train, train_on_model  # noqa: E402

__all__ = [
    "ARCHITECTURES", "ActivationCache", "ArraySource", "BatchTopKDictionary", "CacheMismatchError",
    "ComposedDictionary", "ConfigError", "CrossLayerTranscoder", "RECIPES", "Recipe", "Dictionary", "EmptyDatasetError", "FormatError",
    "GatedDictionary", "JumpReLUDictionary", "MatryoshkaDictionary", "NonFiniteError",
    "ReLUDictionary", "SAEError", "ShapeMismatchError", "StreamSource", "TopKDictionary",
    "TrainConfig", "TrainProgress", "TrainResult", "UnknownArchitectureError", "architecture",
    "evaluate", "evaluate_spliced", "export_circuit_tracer", "export_clt", "export_saelens",
    "harvest_source", "import_circuit_tracer", "import_clt", "import_saelens", "load_dictionaries",
    "load_dictionary", "open_dictionaries", "save_dictionaries", "save_dictionary", "train", "train_on_model",
    "write_cache",
]
