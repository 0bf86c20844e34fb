"""Activation sources, caches, on-disk stores and harvesting from models."""

from sae.data.cache import ActivationCache, config_hash, write_cache
from sae.data.harvest import harvest, harvest_source, pack_tokens, read_texts
from sae.data.source import ActivationSource, ArraySource, StreamSource, drop_outliers
from sae.data.store import (
    ActivationStore,
    HarvestConfig,
    HarvestProgress,
    StoreMismatchError,
    harvest_store,
    read_manifest,
)

__all__ = ["ActivationCache", "ActivationSource", "ActivationStore", "ArraySource",
           "HarvestConfig", "HarvestProgress", "StoreMismatchError", "StreamSource",
           "config_hash", "drop_outliers", "harvest", "harvest_source", "harvest_store",
           "pack_tokens", "read_manifest", "read_texts", "write_cache"]
