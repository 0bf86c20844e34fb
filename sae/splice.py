"""Model-level evaluation: CE-loss recovered and KL with a dictionary spliced in.

For each dictionary (one at a time), on token batches [B,T]:
  1. One clean forward captures the input site and gives clean logits.
  2. The prediction y^ = dictionary(x_in) replaces the activation at ``out_site``
     (``attribution.Replace``); for a transcoder reading upstream of its output
     (mlp_in -> mlp_out) the clean input is exactly what the spliced run sees.
  3. The baseline replaces ``out_site`` by zeros ("zero") or by the per-dimension
     mean of the clean activation over the batch ("mean").
  4. CE = mean next-token cross-entropy over positions 0..T-2;
     CE recovered = (CE_baseline - CE_spliced) / (CE_baseline - CE_clean);
     KL = mean over positions of KL(clean || spliced) (and for the baseline).
CLTs are spliced at every target layer at once, each target from clean inputs.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pandas as pd

from sae.arch import CrossLayerTranscoder
from sae.errors import ConfigError


def _ce(logits: mx.array, tokens: mx.array) -> float:
    lp = logits[:, :-1].astype(mx.float32)
    lp = lp - mx.logsumexp(lp, axis=-1, keepdims=True)
    tgt = tokens[:, 1:]
    return float(-mx.take_along_axis(lp, tgt[..., None], axis=-1).mean())


def _kl(clean: mx.array, other: mx.array) -> float:
    p = clean.astype(mx.float32)
    q = other.astype(mx.float32)
    lp = p - mx.logsumexp(p, axis=-1, keepdims=True)
    lq = q - mx.logsumexp(q, axis=-1, keepdims=True)
    return float((mx.exp(lp) * (lp - lq)).sum(-1).mean())


def _predictions(d, cache: dict) -> dict:
    if isinstance(d, CrossLayerTranscoder):
        outs = d([cache[s] for s in d.in_sites])
        return dict(zip(d.out_sites, outs))
    x = cache[d.in_site]
    return {d.out_site: d(x)}


def evaluate_spliced(model, dicts, tokens, baseline: str = "zero", names=None) -> pd.DataFrame:
    """CE clean / spliced / baseline, CE recovered and KL per dictionary (rows)."""
    from attribution import Replace, capture, run

    if baseline not in ("zero", "mean"):
        raise ConfigError(f"baseline must be 'zero' or 'mean', got {baseline!r}")
    items = list(dicts.values()) if isinstance(dicts, dict) else list(dicts)
    names = names or [getattr(d, "arch", "clt") + "/" + str(getattr(d, "in_site", "")) for d in items]
    toks = mx.array(np.asarray(tokens, dtype=np.int32))
    clean_logits = model(toks)
    ce_clean = _ce(clean_logits, toks)
    rows = []
    for name, d in zip(names, items):
        ins = d.in_sites if isinstance(d, CrossLayerTranscoder) else [d.in_site]
        outs = d.out_sites if isinstance(d, CrossLayerTranscoder) else [d.out_site]
        cache = capture(model, toks, list(dict.fromkeys(list(ins) + list(outs))))
        preds = _predictions(d, cache)
        spliced = run(model, toks, interventions=[Replace(s, v) for s, v in preds.items()]).logits
        base_vals = {s: (mx.zeros_like(cache[s]) if baseline == "zero" else
                         mx.broadcast_to(cache[s].reshape(-1, cache[s].shape[-1]).mean(0),
                                         cache[s].shape)) for s in outs}
        base = run(model, toks, interventions=[Replace(s, v) for s, v in base_vals.items()]).logits
        ce_s, ce_b = _ce(spliced, toks), _ce(base, toks)
        den = ce_b - ce_clean
        rows.append({"name": name, "baseline": baseline, "ce_clean": ce_clean, "ce_spliced": ce_s,
                     "ce_baseline": ce_b,
                     "ce_recovered": (ce_b - ce_s) / den if abs(den) > 1e-12 else float("nan"),
                     "kl_spliced": _kl(clean_logits, spliced), "kl_baseline": _kl(clean_logits, base)})
    return pd.DataFrame(rows).set_index("name")
