"""Overhead of ``attribution.capture`` over the bare mlx-lm forward.

Algorithm:
  1. Build a random llama model (d=512, 8 layers, vocab 4096 by default) as a
     real mlx-lm directory in a temporary folder and load it with
     ``load_model``.
  2. On one random batch (8 x 128 tokens), time three things, interleaved
     round-robin after a warm-up so machine noise hits them alike, each
     synchronised with ``mx.eval``:
       bare     ``model.module(tokens)`` -> logits
       capture  ``capture(model, tokens, sites)`` with sites = resid_post and
                mlp_out of every layer (stops after the last block, so it
                skips the final norm and unembedding)
       run      ``run(model, tokens, capture=sites)``: same hooks plus the
                full forward to logits (the like-for-like hook overhead)
  3. Also time building the lazy graph without evaluating it (bare vs
     capture): the pure Python cost of the hooks, insensitive to contention.
  4. Print one JSON line: medians and their ratios to bare, the ratios of
     the minima (least disturbed by other jobs on a shared CPU), graph-build
     times, shapes and the BLAS library in use.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# isort: off
import attribution  # noqa: E402  (must come first: loads the optimised BLAS before mlx)
import mlx.core as mx  # noqa: E402
from attribution import Site, capture, load_model, run  # noqa: E402
from attribution.perf import environment_record  # noqa: E402
from attribution.tiny import make_tiny_model  # noqa: E402
# isort: on


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        words = [f"w{i}" for i in range(args.vocab - 4)]  # + 4 special tokens
        path = make_tiny_model(
            "llama", tmp, seed=0, vocab_words=words, hidden_size=args.d_model,
            num_hidden_layers=args.layers, intermediate_size=4 * args.d_model,
            num_attention_heads=args.d_model // 64, num_key_value_heads=args.d_model // 64,
            max_position_embeddings=max(512, args.seq),
        )
        model = load_model(path)
    tokens = mx.random.randint(4, model.vocab_size, (args.batch, args.seq), key=mx.random.key(0))
    tokens = tokens.astype(mx.int32)
    sites = [Site(i, k) for i in range(model.n_layers) for k in ("resid_post", "mlp_out")]

    fns = {
        "bare": lambda: mx.eval(model.module(tokens)),
        "capture": lambda: mx.eval(list(capture(model, tokens, sites).values())),
        "run": lambda: mx.eval([(r := run(model, tokens, capture=sites)).logits, *r.cache.values()]),
    }
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    # Hook cost proper: building the lazy graph without evaluating it (robust to CPU contention).
    build = {
        "bare": statistics.median(_timed(lambda: model.module(tokens)) for _ in range(20)),
        "capture": statistics.median(_timed(lambda: capture(model, tokens, sites)) for _ in range(20)),
    }
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # least disturbed by other jobs on the CPU
    print(json.dumps({
        "benchmark": "capture_overhead",
        "model": {"arch": model.arch, "d_model": model.d_model, "n_layers": model.n_layers,
                  "vocab": model.vocab_size},
        "batch": [args.batch, args.seq], "n_sites": len(sites), "repeats": args.repeats,
        "bare_s": round(med["bare"], 4), "capture_s": round(med["capture"], 4),
        "run_with_capture_s": round(med["run"], 4),
        "capture_ratio": round(med["capture"] / med["bare"], 4),
        "run_ratio": round(med["run"] / med["bare"], 4),
        "capture_ratio_min": round(best["capture"] / best["bare"], 4),
        "run_ratio_min": round(best["run"] / best["bare"], 4),
        "graph_build_ms": {k: round(v * 1e3, 3) for k, v in build.items()},
        **environment_record(),
    }))


if __name__ == "__main__":
    main()
