"""Training straight from a model and a corpus.

1. Build a harvesting ``StreamSource`` (tokenise, pack into contexts, capture all
   sites needed by every config in one forward that stops at the deepest site;
   drop BOS and >10x-median-norm tokens; shuffled mixing buffer).
2. Optionally write / reuse an on-disk activation cache keyed by the model's
   path and config hash (a cache for another model raises CacheMismatchError).
3. ``train`` on it. Data parallel: every rank harvests its own documents; with a
   cache, rank 0 writes it while the others wait, then each rank reads its shard files.
"""

from __future__ import annotations

from pathlib import Path

from sae.data.cache import ActivationCache, config_hash, write_cache
from sae.data.harvest import harvest, harvest_source
from sae.errors import ConfigError
from sae.train.config import TrainConfig
from sae.train.distributed import agree, resolve_group
from sae.train.trainer import TrainResult, train


def needed_sites(configs) -> list:
    """Every input and target site of the configs, in forward order."""
    sites = set()
    for c in configs:
        sites.update(c.sites)
        sites.update(c.target_sites())
    return sorted(sites, key=lambda s: s.order)


def train_on_model(model, texts, configs, *, context_len: int | None = None, batch_size: int = 8,
                   buffer_tokens: int = 2 ** 16, cache_dir=None, outlier_factor: float | None = 10.0,
                   **train_kw) -> TrainResult:
    """Harvest activations from ``model`` on ``texts`` and train ``configs`` on them.

    ``context_len`` defaults to 128 tokens, or the model's context when shorter."""
    cfgs = [configs] if isinstance(configs, TrainConfig) else list(configs)
    if not cfgs:
        raise ConfigError("no TrainConfig given")
    max_ctx = getattr(model, "max_context", None)
    if context_len is None:
        context_len = min(128, max_ctx) if max_ctx else 128
    elif max_ctx and context_len > max_ctx:
        raise ConfigError(f"context_len={context_len} exceeds the model's context of {max_ctx} "
                          f"tokens; pass context_len<={max_ctx}")
    sites = needed_sites(cfgs)
    for s in sites:
        s.check(model.n_layers)
    if cache_dir is None:
        source = harvest_source(model, texts, sites, context_len=context_len,
                                batch_size=batch_size, buffer_tokens=buffer_tokens,
                                outlier_factor=outlier_factor)
    else:
        model_id = str(getattr(model, "path", "") or "")
        h = config_hash(getattr(model, "config", {}))
        group = resolve_group(train_kw.get("distributed"))
        lead = group is None or group.rank() == 0
        if lead and not (Path(cache_dir) / "manifest.json").exists():
            write_cache(cache_dir, harvest(model, texts, sites, context_len=context_len,
                                           batch_size=batch_size),
                        model_id=model_id, model_hash=h, dims={s: model.d_model for s in sites})
        agree([False], group)  # barrier: the cache is complete before any rank reads it
        source = ActivationCache(cache_dir, model_id=model_id, model_hash=h, sites=sites,
                                 buffer_tokens=buffer_tokens, outlier_factor=outlier_factor)
    return train(source, cfgs, **train_kw)
