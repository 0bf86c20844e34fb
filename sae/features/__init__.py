"""sae.features: per-feature statistics, examples, co-activation and dashboard records.

Public API:
  1. ``feature_stats(model, dictionary, dataset, FeatureStatsConfig()) -> FeatureStats``:
     density, mean/max activation, histogram, top-k and quantile-sampled examples,
     logit effects, decoder neighbours and opposing directions (``stats``, ``examples``,
     ``geometry``).
  2. ``feature_records(stats, vocab_or_model) -> list[dict]`` for ``viz.dashboard``;
     token strings spaced as in a text (``token_strings``, ``vocab_strings``).
  3. ``top_features(model, dictionary, text)`` and ``feature_examples(...)`` (``text``).
  4. ``coactivation(...)`` over a dataset and ``coactivation_report(...)`` for circuit
     features, with ``benjamini_hochberg`` and one-sided Fisher tests (``coactivation``,
     ``report``, ``significance``).
Nothing runs at import; submodules import ``mlx`` only inside functions that need it.
"""

from sae.features.coactivation import (
    Coactivation,
    CoactivationConfig,
    PairAccumulator,
    coactivation,
    coactivation_from_batches,
)
from sae.features.errors import (
    DictionaryModelMismatchError,
    EmptyDatasetError,
    FeatureIndexError,
    TruncationWarning,
)
from sae.features.examples import Examples, QuantileSampler, TopKTracker
from sae.features.geometry import (
    DecoderGeometry,
    TopTokens,
    decoder_geometry,
    logit_effects,
)
from sae.features.records import feature_records
from sae.features.report import (
    CoactivationReport,
    coactivation_matrix,
    coactivation_report,
    report_tables,
    write_csv,
    write_report_csv,
)
from sae.features.significance import benjamini_hochberg, fisher_greater, fisher_less
from sae.features.stats import (
    FeatureStats,
    FeatureStatsConfig,
    QuantileExamples,
    feature_stats,
)
from sae.features.stream import (
    LatentBatch,
    StreamConfig,
    check_dictionary,
    iter_latents,
)
from sae.features.text import check_feature, feature_examples, top_features
from sae.features.tokens import token_strings, vocab_strings

__all__ = [
    "Coactivation", "CoactivationConfig", "CoactivationReport", "DecoderGeometry",
    "DictionaryModelMismatchError", "EmptyDatasetError", "Examples", "FeatureIndexError",
    "FeatureStats", "FeatureStatsConfig", "LatentBatch", "PairAccumulator", "QuantileExamples",
    "QuantileSampler", "StreamConfig", "TopKTracker", "TopTokens", "TruncationWarning",
    "benjamini_hochberg", "check_dictionary", "check_feature", "coactivation",
    "coactivation_from_batches", "coactivation_matrix", "coactivation_report", "decoder_geometry",
    "feature_examples", "feature_records", "feature_stats", "fisher_greater", "fisher_less",
    "iter_latents", "logit_effects", "report_tables", "token_strings", "top_features", "vocab_strings", "write_csv",
    "write_report_csv",
]
