"""Activation sources, caches and harvesting from models."""

from sae.data.cache import ActivationCache, config_hash, write_cache
from sae.data.harvest import harvest, harvest_source, pack_tokens, read_texts
from sae.data.source import ActivationSource, ArraySource, StreamSource, drop_outliers

__all__ = ["ActivationCache", "ActivationSource", "ArraySource", "StreamSource", "config_hash",
           "drop_outliers", "harvest", "harvest_source", "pack_tokens", "read_texts",
           "write_cache"]
