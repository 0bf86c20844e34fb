"""Dashboard records: ``FeatureStats`` -> the plain dicts ``viz.dashboard`` documents.

For each requested feature (``feature_records``):
  1. feature, site, density, mean_activation, max_activation from the stats.
  2. histogram: the shared log-spaced bins trimmed to the span the feature occupies; an
     underflow bin [0, first edge) and an overflow bin [last edge, max] are added when
     they hold counts, so every firing activation is counted exactly once.
  3. top_examples / quantile_examples: window tokens as strings (padding dropped) with
     the feature's activations, each token spaced as it reads in a text
     (``tokens.vocab_strings``: " man", not "man", for a word-level tokenizer); empty
     reservoir slots and empty bins are skipped.
  4. logit_effects: [[token string, effect], ...]; neighbours: [{"feature", "cosine"}].
  5. label: from ``labels`` when given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from sae.features.errors import FeatureIndexError
from sae.features.examples import Examples
from sae.features.stats import FeatureStats
from sae.features.stream import PAD
from sae.features.tokens import vocab_strings




def _tok(vocab: Sequence[str], i: int) -> str:
    return vocab[i] if 0 <= i < len(vocab) else f"<{i}>"


def _example(ex: Examples, row: int, slot: int, vocab) -> dict:
    toks = ex.tokens[row, slot]
    ok = toks != PAD
    return {"tokens": [_tok(vocab, int(t)) for t in toks[ok]],
            "activations": [float(a) for a in ex.acts[row, slot][ok]]}


def _examples(ex: Examples, row: int, vocab, limit: int | None) -> list[dict]:
    slots = np.nonzero(np.isfinite(ex.values[row]))[0][:limit]
    return [_example(ex, row, int(s), vocab) for s in slots]


def _histogram(stats: FeatureStats, f: int) -> dict | None:
    counts, edges = stats.hist_counts[f], stats.hist_edges
    nz = np.nonzero(counts)[0]
    under, over = int(stats.underflow[f]), int(stats.overflow[f])
    if nz.size == 0 and under == 0 and over == 0:
        return None
    lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)
    c, e = [int(x) for x in counts[lo:hi]], [float(x) for x in edges[lo:hi + 1]]
    if under:
        c, e = [under] + c, [0.0] + (e or [float(edges[0])])
    if over:
        e = e or [float(edges[-1])]
        c, e = c + [over], e + [max(float(stats.max_activation[f]), e[-1])]
    return {"counts": c, "edges": e}


def _quantiles(stats: FeatureStats, f: int, vocab, limit: int | None) -> list[dict]:
    q = stats.quantiles
    if q is None:
        return []
    nb = q.edges.shape[1] - 1
    out = []
    for b in range(nb):
        exs = _examples(q.examples, f * nb + b, vocab, limit)
        if exs:
            lo, hi = q.edges[f, b], q.edges[f, b + 1]
            out.append({"name": f"q{100 * b // nb}-{100 * (b + 1) // nb} ({lo:.3g}–{hi:.3g})", "examples": exs})
    return out


def _logits(stats: FeatureStats, f: int, vocab) -> dict | None:
    lg = stats.logits
    if lg is None:
        return None
    return {"promoted": [[_tok(vocab, int(i)), float(v)] for i, v in zip(lg.promoted_ids[f], lg.promoted[f])],
            "suppressed": [[_tok(vocab, int(i)), float(v)] for i, v in zip(lg.suppressed_ids[f], lg.suppressed[f])]}


def feature_records(stats: FeatureStats, vocab, features: Sequence[int] | None = None,
                    labels: Mapping[int, str] | Callable[[int], str] | None = None,
                    n_top: int | None = None, n_quantile: int | None = None) -> list[dict]:
    """One ``viz.dashboard`` record per feature (steps 1-5).

    ``vocab``: token strings indexed by id, or a model (``vocab_strings`` is applied);
    ``features``: ids to include (default all); ``n_top`` / ``n_quantile`` cap the examples.
    """
    if hasattr(vocab, "to_str_tokens"):
        vocab = vocab_strings(vocab)
    ids = range(stats.width) if features is None else list(features)
    out = []
    for f in ids:
        if not 0 <= int(f) < stats.width:
            raise FeatureIndexError(f"feature {f} is out of range (the stats cover {stats.width} features)")
        f = int(f)
        rec = {"feature": f, "site": str(stats.site), "density": float(stats.density[f]),
               "mean_activation": float(stats.mean_activation[f]), "max_activation": float(stats.max_activation[f]),
               "top_examples": _examples(stats.top, f, vocab, n_top),
               "quantile_examples": _quantiles(stats, f, vocab, n_quantile)}
        hist = _histogram(stats, f)
        if hist is not None:
            rec["histogram"] = hist
        eff = _logits(stats, f, vocab)
        if eff is not None:
            rec["logit_effects"] = eff
        if stats.geometry is not None and stats.geometry.neighbour_ids.shape[1]:
            g = stats.geometry
            rec["neighbours"] = [{"feature": int(i), "cosine": float(c)}
                                 for i, c in zip(g.neighbour_ids[f], g.neighbour_cos[f])]
        if labels is not None:
            rec["label"] = labels(f) if callable(labels) else str(labels.get(f, ""))
        out.append(rec)
    return out
