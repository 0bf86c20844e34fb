"""SAE training throughput: tokens/s and fraction of the measured matmul peak.

Algorithm:
  1. Random float32 activations [n_tokens, d] in an ``ArraySource``.
  2. For each variant (TopK dense decoder, TopK sparse decoder, BatchTopK; by
     default d=512, m=16384, k=32, batch 4096), run ``sae.train`` with
     log_every=1 and time each step through the progress callback (which
     follows the step's ``mx.eval``); drop ``--warmup`` steps, take the median.
  3. Model FLOPs per token: dense 10·d·m (encoder fwd 2dm, decoder fwd 2dm,
     backward 6dm); sparse decoder 6·d·m + 6·k·d (decoder work only on k rows).
     Report tokens/s, achieved GFLOP/s (model FLOPs / time) and its fraction
     of the matmul peak measured on the same machine (``attribution.perf``).
  4. Print one JSON line with the BLAS in use.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# benchmarks/attribution.py would shadow the attribution package: drop this script's folder.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

# isort: off
import attribution  # noqa: F401  (must come first: loads the optimised BLAS before mlx)
import numpy as np
from attribution import Site
from attribution.perf import environment_record
from sae import ArraySource, TrainConfig, train
# isort: on


def _time_variant(src, site, arch, decoder, args) -> dict:
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(_):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    cfg = TrainConfig(kind="sae", arch=arch, sites=(site,), width=args.m, k=args.k,
                      batch_tokens=args.batch, total_tokens=args.batch * (args.steps + args.warmup),
                      warmup_steps=10, log_every=1, decoder=decoder, b_dec_init="mean",
                      compile=args.compile)
    last[0] = time.perf_counter()
    train(src, cfg, callback=tick)
    step = statistics.median(times[args.warmup:])
    d, m, k = args.d, args.m, args.k
    flops = (6 * d * m + 6 * k * d) if decoder == "sparse" else 10 * d * m
    return {"arch": arch, "decoder": decoder, "step_s": round(step, 4),
            "step_min_s": round(min(times[args.warmup:]), 4),
            "tokens_per_s": round(args.batch / step, 1),
            "model_gflops": round(flops * args.batch / step / 1e9, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--m", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--variants", default="topk:dense,topk:sparse,batchtopk:dense,matryoshka:dense")
    args = p.parse_args()
    env = environment_record()
    site = Site(0, "resid_post")
    x = np.random.default_rng(0).standard_normal((4 * args.batch, args.d)).astype(np.float32)
    src = ArraySource({site: x})
    results = []
    for v in args.variants.split(","):
        arch, dec = v.split(":")
        r = _time_variant(src, site, arch, dec, args)
        r["peak_fraction"] = round(r["model_gflops"] / env["matmul_peak_gflops"], 3)
        results.append(r)
    print(json.dumps({"benchmark": "sae_train", "d": args.d, "m": args.m, "k": args.k,
                      "batch": args.batch, "compile": args.compile, "results": results, **env}))


if __name__ == "__main__":
    main()
