"""Per-run metrics of a sweep: the library's evaluations, gathered into one flat record.

Algorithm (``run_metrics``), for the dictionary a run trained (raw units):
  1. Reconstruction (both sources): ``sae.evaluate.evaluate`` on the held-out rows gives
     L0 (mean active latents per row), FVU (Σ‖x − x̂‖² / Σ‖x − x̄‖²) and the dead fraction
     (latents that fire on none of the held-out rows). Synthetic data: ``dead_frac`` is
     counted instead over the spec's ``dead_rows`` further held-out rows (a long window;
     ``DataSpec.dead_rows``), and the fraction silent on the scored rows is kept as
     ``silent_eval_frac`` (rare latents fall in it without being dead).
  2. Synthetic data: ``sae.synthetic.score`` against the true features on the same rows:
     MCC, F1 (and precision, recall) over the one-to-one matching, uniqueness, shrinkage
     and feature absorption (hierarchy pairs).
  3. Model data: ``circuits.pipeline.dictionaries.evaluate_dictionaries`` (what
     ``circuits evaluate`` runs): the metrics of step 1 plus CE recovered (zero-ablation
     baseline) and the KL divergence of the spliced model, on held-out documents (with the
     clean / spliced / baseline CEs and ``ce_note`` per site); ``dead_frac`` is counted
     over every harvested training token of the site (the long window; the held-out
     documents are few), the held-out count kept as ``silent_eval_frac``. With
     several sites, the run's value is the mean over its dictionaries (each site is also
     kept under ``per_site``).
  4. Training speed: tokens trained in this process / seconds of ``sae.train``
     (a resumed run counts only the steps it ran itself).
Non-finite values are recorded as null (JSON has no NaN).
"""

from __future__ import annotations

import math

import numpy as np

SYNTHETIC_KEYS = ("mcc", "f1", "precision", "recall", "uniqueness", "shrinkage", "absorption")
"""Metrics taken from ``sae.synthetic.score``."""
MODEL_KEYS = ("ce_recovered", "kl_spliced")
"""Metrics taken from ``evaluate_dictionaries``."""


def _num(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def synthetic_metrics(d, data) -> dict:
    """Steps 1–2 for one dictionary on the held-out synthetic rows of ``data`` (SweepData)."""
    import mlx.core as mx

    from sae.evaluate import evaluate
    from sae.synthetic import score

    b = data.eval_batch
    rec = evaluate([d], {d.in_site: b.x}, n_tokens=len(b.x)).iloc[0]
    f = d.encode(mx.array(b.x))
    x_hat = d.decode(f)
    s = score(np.array(d.W_dec), data.truth.directions, np.array(f), b.codes, x=b.x,
              x_hat=np.array(x_hat), hierarchy_pairs=data.truth.hierarchy_pairs)
    out = {"l0": _num(rec["l0"]), "fvu": _num(rec["fvu"]),
           "dead_frac": dead_fraction(d, data.dead_rows),
           "silent_eval_frac": _num(rec["dead_frac"])}
    out.update({k: _num(getattr(s, k)) for k in SYNTHETIC_KEYS})
    return out


def dead_fraction(d, rows: np.ndarray, chunk: int = 8192) -> float:
    """Fraction of ``d``'s latents that fire (are non-zero) on none of ``rows``, encoded in
    chunks (the whole [rows, width] code matrix is never held)."""
    import mlx.core as mx

    fired = mx.zeros((d.width,), dtype=mx.bool_)
    for i in range(0, len(rows), chunk):
        fired = fired | (d.encode(mx.array(rows[i:i + chunk])) != 0).any(0)
        mx.eval(fired)
    return float(1.0 - np.array(fired).mean())


def model_metrics(dicts: dict, data) -> dict:
    """Step 3: {metric: mean over the run's dictionaries, "per_site": {name: {...}}}."""
    from circuits.pipeline.dictionaries import evaluate_dictionaries

    df = evaluate_dictionaries(data.model, dicts, corpus=data.spec.corpus,
                               n_docs=data.spec.eval_docs)
    keys = ("l0", "fvu", "dead_frac", "silent_eval_frac", *MODEL_KEYS)
    extra = ("ce_clean", "ce_spliced", "ce_baseline")
    per = {}
    for r in df.to_dict("records"):
        name = str(r["name"])
        # the long window: silent on every harvested training token of the dictionary's site
        # (the held-out documents are few; their count is kept as silent_eval_frac)
        d = dicts[name]
        r = dict(r, silent_eval_frac=r.get("dead_frac"),
                 dead_frac=dead_fraction(d, data.source.arrays[d.in_site]))
        per[name] = {**{k: _num(r.get(k)) for k in (*keys, *extra)},
                     "ce_note": str(r.get("ce_note", ""))}
    out = {}
    for k in keys:
        vals = [v[k] for v in per.values() if v[k] is not None]
        out[k] = float(np.mean(vals)) if vals else None
    out["per_site"] = per
    # why a CE recovered is outside [0, 1], when it is (circuits.pipeline.dictionaries.ce_note)
    out["ce_note"] = "; ".join(sorted({v["ce_note"] for v in per.values() if v["ce_note"]}))
    return out


def run_metrics(dicts: dict, data, tokens_trained: int, train_s: float) -> dict:
    """Every metric of one finished run (module docstring)."""
    if data.spec.source == "synthetic":
        (d,) = dicts.values()
        out = synthetic_metrics(d, data)
    else:
        out = model_metrics(dicts, data)
    out["tokens_per_s"] = _num(tokens_trained / train_s) if train_s > 0 and tokens_trained else None
    out["train_s"] = round(float(train_s), 3)
    return out
