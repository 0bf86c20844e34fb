"""Train and evaluate dictionaries on a model: the library side of ``circuits train/evaluate``.

Algorithm (``train_dictionaries``):
  1. Parse sites (``L*.mlp_in`` expands to every layer) and build one
     ``TrainConfig`` (kind, arch, width, k, token budget, seed).
  2. Draw the corpus (file, task, or the organism's mixture) and call
     ``sae.train_on_model``: one forward per batch feeds every site.
  3. Return the ``TrainResult``; the caller saves with ``sae.save_dictionaries``.

``evaluate_dictionaries`` harvests held-out activations (another seed), runs
``sae.evaluate`` (L0, FVU, cosine, bias, dead/dense) and ``sae.evaluate_spliced``
(CE recovered, KL) and joins them into one DataFrame row per dictionary.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

from attribution.sites import parse_sites
from circuits.pipeline.corpus import corpus_texts


@dataclass(frozen=True)
class DictionarySpec:
    """What to train."""

    sites: str = "L*.mlp_in"
    """Comma list of input sites; ``L*.kind`` expands to every layer."""
    kind: str = "transcoder"
    """sae, transcoder, skip_transcoder or clt."""
    arch: str = "batchtopk"
    """relu, topk, batchtopk, jumprelu, gated or matryoshka."""
    width: int = 1024
    """Latents per dictionary."""
    k: int = 16
    """Active latents per token (TopK family)."""
    tokens: int = 2 ** 18
    """Training token budget."""
    batch_tokens: int = 2048
    """Tokens per optimisation step."""
    seed: int = 0
    """Seed of initialisation and data order."""
    corpus: str | None = None
    """File path, ``task:NAME`` or None for the organism's own mixture."""
    n_docs: int = 6000
    """Documents drawn from a generated corpus."""


def train_config(spec: DictionarySpec, n_layers: int):
    """The ``sae.TrainConfig`` for ``spec``."""
    from sae import TrainConfig

    sites = tuple(parse_sites(spec.sites, n_layers))
    steps = max(1, spec.tokens // spec.batch_tokens)
    return TrainConfig(kind=spec.kind, arch=spec.arch, sites=sites, width=spec.width, k=spec.k,
                       total_tokens=spec.tokens, batch_tokens=spec.batch_tokens,
                       warmup_steps=min(1000, max(1, steps // 20)), seed=spec.seed,
                       log_every=max(1, steps // 50))


def train_dictionaries(model, spec: DictionarySpec, callback=None):
    """Train per-site dictionaries on ``model``; returns ``sae.TrainResult``."""
    from sae import train_on_model

    cfg = train_config(spec, model.n_layers)
    texts = corpus_texts(model, spec.corpus, spec.n_docs, seed=spec.seed + 1)
    return train_on_model(model, texts, [cfg], context_len=min(64, model.max_context or 64),
                          batch_size=16, callback=callback)


def evaluate_dictionaries(model, dicts: dict, corpus: str | None = None, n_docs: int = 2000,
                          seed: int = 12345, ce_baseline: str = "zero"):
    """One DataFrame row per dictionary: reconstruction metrics plus CE recovered / KL."""
    import mlx.core as mx
    import numpy as np
    import pandas as pd

    from sae import evaluate, evaluate_spliced
    from sae.data.harvest import harvest, pack_tokens

    texts = list(corpus_texts(model, corpus, n_docs, seed=seed))
    sites = sorted({s for d in dicts.values() for s in _sites(d)}, key=lambda s: s.order)
    arrays: dict = {}
    for chunk in harvest(model, texts, sites, context_len=min(64, model.max_context or 64)):
        for s, a in chunk.items():
            arrays.setdefault(s, []).append(np.asarray(a))
    acts = {s: mx.array(np.concatenate(v)) for s, v in arrays.items()}
    recon = evaluate(dicts, acts, n_tokens=min(len(next(iter(acts.values()))), 2 ** 14))
    ctx = min(64, model.max_context or 64)
    tokens = mx.array(np.stack(list(islice(pack_tokens(model, texts, ctx), 32))))
    spliced = evaluate_spliced(model, dicts, tokens, baseline=ce_baseline)
    recon = recon.rename_axis("name").reset_index()
    recon["name"] = [str(k) for k in dicts]
    extra = spliced.drop(columns=[c for c in spliced.columns if c in recon.columns])
    return pd.concat([recon, extra.reset_index(drop=True)], axis=1)


def _sites(d) -> list:
    if hasattr(d, "in_sites"):
        return [*d.in_sites, *d.out_sites]
    return [s for s in (d.in_site, d.out_site) if s is not None]
