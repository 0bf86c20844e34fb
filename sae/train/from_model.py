"""Training straight from a model and a corpus, or from an on-disk activation store.

``train_on_model``:
  1. Build a harvesting ``StreamSource`` (tokenise, pack into contexts, capture all
     sites needed by every config in one forward that stops at the deepest site;
     drop BOS and >10x-median-norm tokens; shuffled mixing buffer).
  2. Or, with ``cache_dir``: harvest the whole corpus once into an activation store
     there (``sae.data.store``: sharded safetensors, written in a stream, atomic) and
     train from it; an existing store is reused after checking it was harvested from
     this model (``StoreMismatchError``, a ``CacheMismatchError``, otherwise). A
     directory in the older ``ActivationCache`` format is still read as such.
  3. ``train`` on it. Data parallel: every rank harvests its own documents; with a
     cache, rank 0 writes it while the others wait, then each rank reads its shard files.
``train_on_store``:
  1. Open the store (checked against ``model`` when given) with the sites every config
     needs (a missing site is a ``StoreMismatchError`` naming it and the store's sites).
  2. ``train`` on its shuffled, bounded-memory stream; ``run_info`` defaults to the
     store's content fingerprint, buffer size and outlier factor, so a resume that would
     see other batches is refused, and a resume reads no activation before the
     checkpoint's step except the shuffle buffer's (``sae.data.store``, read step 4).
"""

from __future__ import annotations

from pathlib import Path

from sae.data.cache import ActivationCache, config_hash
from sae.data.cache import SCHEMA as CACHE_SCHEMA
from sae.data.harvest import harvest_source
from sae.data.store import ActivationStore, HarvestConfig, harvest_store
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


def _configs(configs) -> list:
    cfgs = [configs] if isinstance(configs, TrainConfig) else list(configs)
    if not cfgs:
        raise ConfigError("no TrainConfig given")
    return cfgs


def train_on_model(model, texts, configs, *, context_len: int | None = None, batch_size: int = 8,
                   buffer_tokens: int = 2 ** 16, cache_dir=None, outlier_factor: float | None = 10.0,
                   **train_kw) -> TrainResult:
    """Harvest activations from ``model`` on ``texts`` and train ``configs`` on them.

    ``context_len`` defaults to 128 tokens, or the model's context when shorter.
    ``cache_dir``: harvest into an activation store there first (module docstring, step 2)."""
    cfgs = _configs(configs)
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
        return train(source, cfgs, **train_kw)
    cache = Path(cache_dir)
    group = resolve_group(train_kw.get("distributed"))
    lead = group is None or group.rank() == 0
    if lead and not (cache / "manifest.json").exists():
        harvest_store(model, texts, cache, HarvestConfig(sites=tuple(sites), tokens=None,
                                                         context_len=context_len,
                                                         batch_size=batch_size))
    agree([False], group)  # barrier: the store is complete before any rank reads it
    if _schema(cache) == CACHE_SCHEMA:  # a cache written before activation stores existed
        source = ActivationCache(cache, model_id=str(getattr(model, "path", "") or ""),
                                 model_hash=config_hash(getattr(model, "config", {})),
                                 sites=sites, buffer_tokens=buffer_tokens,
                                 outlier_factor=outlier_factor)
        return train(source, cfgs, **train_kw)
    return train_on_store(cache, cfgs, model=model, buffer_tokens=buffer_tokens,
                          outlier_factor=outlier_factor, **train_kw)


def _schema(path: Path):
    import json

    try:
        return json.loads((path / "manifest.json").read_text()).get("schema")
    except (OSError, ValueError, AttributeError):
        return None  # the store reader names the problem


def train_on_store(store, configs, *, model=None, buffer_tokens: int = 2 ** 16,
                   outlier_factor: float | None = 10.0, **train_kw) -> TrainResult:
    """Train ``configs`` on an activation store (a path or an ``ActivationStore``).

    ``model``: when given, the store must have been harvested from it. ``buffer_tokens``
    and ``outlier_factor`` apply when ``store`` is a path. ``train_kw`` go to ``train``
    (checkpoints, resume, callback, ...); see the module docstring."""
    cfgs = _configs(configs)
    sites = needed_sites(cfgs)
    if isinstance(store, ActivationStore):
        if model is not None:
            store.check_model(model)
        missing = [str(s) for s in sites if s not in store.sites]
        if missing:
            from sae.data.store import StoreMismatchError

            raise StoreMismatchError(
                f"activation store {store.path} (as opened) has no {', '.join(missing)}; it "
                f"reads {', '.join(map(str, store.sites))}")
    else:
        store = ActivationStore(store, model=model, sites=sites, buffer_tokens=buffer_tokens,
                                outlier_factor=outlier_factor)
    if train_kw.get("run_info") is None:  # everything besides the configs that picks batches
        train_kw["run_info"] = {"store": store.fingerprint, "buffer_tokens": store.buffer_tokens,
                                "outlier_factor": store.outlier_factor}
    return train(store, cfgs, **train_kw)
