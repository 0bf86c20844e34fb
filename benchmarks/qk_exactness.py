"""QK attribution exactness: decomposed attention scores against the model's own patterns.

Run from the repo root: ``.venv/bin/python benchmarks/qk_exactness.py``. Algorithm:
  1. Per architecture (``--archs``: the tiny test models, ``--layers`` deep, seeded; or
     ``--published NAME`` for random weights at a published config, ``--layers`` deep):
     random per-layer transcoders (width ``--width``), a seeded ``--tokens``-long prompt.
  2. For every layer, every head and each query position in ``--queries`` (default: the
     last and the middle one), ``qk_attributions`` over every key 0..q.
  3. Errors, per (layer, head, query) row, normalised by max(1, max_k |score|) of the row:
     ``sum_rel_err``: |Σ terms − Σ query marginals| and |Σ terms − Σ key marginals| (the
     three sums of step 5 of the QK algorithm agree); ``pattern_rel_err``: the decomposed
     scores (softcapped where the model caps) against the model's clean attention pattern,
     max_k |(c_k − mean c) − (log p_k − mean log p)| over the visible keys (softmax is
     shift-invariant, so this compares scores up to the row's constant, with the model's
     own kernel as the reference).
  4. One JSON line per architecture (max errors, rows, terms, seconds, environment),
     printed and appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

# isort: off
import attribution  # noqa: F401  (must come first: loads the optimised BLAS before mlx)
import numpy as np
from attribution import load_model
from attribution.attribute.qk import qk_attributions
from attribution.attribute.synthetic import make_config_model, published_config, random_prompt
from attribution.perf import environment_record
from attribution.replacement import ReplacementModel
from attribution.testing_dicts import random_transcoders
from attribution.tiny import EXTRA_ARCHS, TINY_ARCHS, make_tiny_model
# isort: on

_LAYER_KEY = {"gpt2": "n_layer"}


def _model(arch: str, layers: int, root: Path, seed: int, published: bool):
    if published:
        cfg = published_config(arch, **{_LAYER_KEY.get(arch.split("-")[0], "num_hidden_layers"): layers})
        return load_model(make_config_model(cfg, root / arch, seed=seed))
    key = _LAYER_KEY.get(arch, "num_hidden_layers")
    return load_model(make_tiny_model(arch, root / arch, seed=seed, **{key: layers}))


def _row_errors(res) -> tuple[float, float]:
    scores = np.array([r.score for r in res])
    norm = max(1.0, float(np.abs(scores).max()))
    sums = max(max(abs(r.score - r.query_marginals.sum()), abs(r.score - r.key_marginals.sum()))
               for r in res)
    seen = np.array([r.pattern > 0 for r in res])
    c = np.array([r.capped_score for r in res])[seen]
    lp = np.log(np.array([r.pattern for r in res])[seen])
    pat = float(np.abs((c - c.mean()) - (lp - lp.mean())).max())
    return sums / norm, pat / norm


def bench(arch: str, args, root: Path, seed: int, published: bool) -> dict:
    model = _model(arch, args.layers, root, seed, published)
    rm = ReplacementModel(model, random_transcoders(model, args.width, seed=seed + 1))
    tokens = random_prompt(model.vocab_size, args.tokens, seed=seed)
    state = rm.clean(tokens)
    queries = args.queries or [args.tokens - 1, args.tokens // 2]
    sum_err = pat_err = 0.0
    rows = pairs = terms = 0
    t0 = time.perf_counter()
    for layer in range(model.n_layers):
        for q in queries:
            res = qk_attributions(rm, state, layer, q)
            for h in range(model.n_heads):
                row = [r for r in res if r.head == h]
                s, p = _row_errors(row)
                sum_err, pat_err = max(sum_err, s), max(pat_err, p)
                rows += 1
                pairs += len(row)
                terms += sum(len(r.query_nodes) * len(r.key_nodes) for r in row)
    secs = time.perf_counter() - t0
    return {"benchmark": "qk_exactness", "arch": arch, "published": published,
            "n_layers": model.n_layers, "n_heads": model.n_heads, "n_kv_heads": model.n_kv_heads,
            "d_head": model.d_head, "tokens": args.tokens, "queries": queries, "width": args.width,
            "rows": rows, "pairs": pairs, "terms": terms,
            "max_sum_rel_err": float(f"{sum_err:.3g}"), "max_pattern_rel_err": float(f"{pat_err:.3g}"),
            "seconds": round(secs, 3), "ms_per_pair": round(1000 * secs / max(1, pairs), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default=",".join(TINY_ARCHS + EXTRA_ARCHS))
    p.add_argument("--published", default="", help="comma-separated published configs, e.g. gpt2-small")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--tokens", type=int, default=12)
    p.add_argument("--queries", type=lambda s: [int(x) for x in s.split(",")], default=None)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--out", default=os.path.join(_HERE, "results", "qk_exactness.jsonl"))
    args = p.parse_args()
    env = environment_record()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    jobs = [(a, False) for a in args.archs.split(",") if a] + \
           [(a, True) for a in args.published.split(",") if a]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (arch, published) in enumerate(jobs):
            row = {**bench(arch, args, Path(tmp), i, published), "env": env, "time": stamp}
            line = json.dumps(row, sort_keys=True)
            print(line, flush=True)
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
