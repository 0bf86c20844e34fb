"""Time feature statistics (dashboards) and co-activation for one layer of a model.

Algorithm:
  1. Model: the shipped ``ioi`` organism when present (``--model`` overrides), else a tiny
     random llama with d=128 built in a temporary folder. Dictionary: a TopK SAE (k=32)
     of width 2048 at ``L{layer}.resid_post`` with the transpose initialisation (random,
     untrained; its firing pattern is what the statistics pay for).
  2. Data: ~``--tokens`` tokens of random sentences over the tokenizer's vocabulary,
     packed into contexts of the model's length.
  3. Time, each once, on the same data:
       latents      the forward + encode stream alone (the floor)
       stats        ``feature_stats`` (two passes: moments + top-k, then quantile samples;
                    plus logit effects and decoder geometry)
       records      ``feature_records`` for every feature
       coact        ``coactivation`` over the dataset (pairs with count >= 5, BH)
       report       ``coactivation_report`` on 16 features over 200 prompts
  4. Print one JSON line with wall and CPU seconds of each, sizes, the 1-minute load
     average and ``attribution.perf.environment_record()``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Run as a script, this folder is sys.path[0]; a sibling named like a package (benchmarks/
# attribution.py) would shadow it, so drop the folder from the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

# isort: off
import attribution  # noqa: F401  (must come first: loads the optimised BLAS before mlx)
import sae  # noqa: F401
import mlx.core as mx
import numpy as np
from attribution import Site, load_model
from attribution.perf import environment_record
from attribution.tiny import make_tiny_model
from sae.arch import TopKDictionary
from sae.features import (
    CoactivationConfig, FeatureStatsConfig, StreamConfig, coactivation, coactivation_report,
    feature_records, feature_stats, iter_latents,
)
# isort: on

IOI = Path(__file__).resolve().parents[1] / "circuits" / "organisms" / "shipped" / "ioi"


def _model(path: str | None, tmp: str):
    if path:
        return load_model(path), path
    if (IOI / "config.json").exists():
        return load_model(IOI), "organism:ioi"
    p = make_tiny_model("llama", Path(tmp) / "llama", seed=0, hidden_size=128, intermediate_size=256,
                        max_position_embeddings=128)
    return load_model(p), "tiny-llama-d128"


def _texts(model, n_tokens: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = [w for w in model.to_str_tokens(list(range(model.vocab_size))) if w.strip() and "<" not in w]
    return [" ".join(rng.choice(words, 100)) for _ in range(n_tokens // 100 + 1)]


CPU: dict = {}


def _timed(fn, name: str):
    """(result, wall seconds); CPU seconds of this process (all threads) go to CPU[name]:
    on a shared machine wall time includes waiting for other jobs, CPU time does not."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    CPU[name] = round(time.process_time() - c0, 2)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model directory (default: ioi organism or tiny llama)")
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=32, help="contexts per forward")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, name = _model(args.model, tmp)
        layer = min(args.layer, model.n_layers - 1)
        site = Site(layer, "resid_post")
        d = TopKDictionary(model.d_model, args.width, k=args.k, in_site=site)
        d.init_weights(mx.random.key(0))
        mx.eval(d.parameters())
        texts = _texts(model, args.tokens)
        ctx = min(128, model.max_context or 128)
        stream = StreamConfig(context_len=ctx, batch_size=args.batch, max_tokens=args.tokens)
        _, t_lat = _timed(lambda: sum(b.mask.sum() for b in iter_latents(model, {0: d}, texts, stream)), "latents")
        st, t_stats = _timed(lambda: feature_stats(model, d, texts, FeatureStatsConfig(stream=stream)), "feature_stats")
        _, t_rec = _timed(lambda: feature_records(st, model), "records")
        co, t_co = _timed(lambda: coactivation(model, d, texts, CoactivationConfig(stream=stream, min_count=5)), "coactivation")
        live = np.argsort(-st.count)[:16]
        prompts = [" ".join(t.split()[:40]) for t in texts[:200]]
        rep_cfg = CoactivationConfig(stream=StreamConfig(pack=False, batch_size=args.batch))
        _, t_rep = _timed(lambda: coactivation_report(model, {site: d}, [(site, int(f)) for f in live],
                                                      prompts, rep_cfg), "report")
    rec = {"benchmark": "features", "model": name, "site": str(site), "d_model": model.d_model,
           "width": args.width, "k": args.k, "tokens": int(st.n_tokens), "contexts": int(st.n_contexts),
           "latents_s": round(t_lat, 2), "feature_stats_s": round(t_stats, 2),
           "records_s": round(t_rec, 2), "coactivation_s": round(t_co, 2),
           "coactivation_pairs": len(co.pairs), "coactivation_significant": int(co.pairs["significant"].sum()),
           "report_s": round(t_rep, 2), "stats_tokens_per_s": round(st.n_tokens / t_stats),
           "coactivation_tokens_per_s": round(co.n_tokens / t_co)}
    rec.update({f"{k}_cpu_s": v for k, v in CPU.items()})
    rec["load_avg_1m"] = round(os.getloadavg()[0], 2)
    rec.update(environment_record())
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
