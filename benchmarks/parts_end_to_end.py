"""Whole training runs of the new ReLU-family recipes against TopK, through ``sae.train``.

``parts_speed.py --mode sparse`` times single steps at a fixed, trained sparsity; this
script times whole runs, early dense steps included, on data with real sparse structure.
Run from the repo root: ``.venv/bin/python benchmarks/parts_end_to_end.py``.
Algorithm:
  1. Generate ``--rows`` rows of ``sae.synthetic.cpu_preset`` (d 256, 4,096 true features,
     true L0 25), scaled to E||x|| = sqrt(d).
  2. For each round, for each variant (TopK k=``--k`` with the decoder "auto" picks; each
     recipe in ``--recipes`` with each decoder setting in ``--decoders`` and each
     ``TrainConfig.split_batch`` in ``--splits`` ("/nosplit" names the off ones), at
     ``--coef``): ``sae.train`` at width ``--m`` for ``--tokens`` tokens in batches of
     ``--batch`` (LR 3e-3); wall time of the call, tokens/s, and the final logged L0 / FVU.
     Rounds interleave the variants so machine load hits all alike. ``--crosscoders``
     adds crosscoders (TopK k=``--k`` / ReLU) over the rows' two halves as two sites: the
     same numbers, width and batch as the SAEs, so the same work up to the layout.
  3. Per variant: median tokens/s over rounds and its ratio to TopK's (``vs_topk``); append
     JSON lines (with load average) to ``benchmarks/results/parts_end_to_end.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

# isort: off
import attribution  # noqa: F401  (must come first: loads the optimised BLAS before mlx)
import numpy as np
from attribution import Site
from sae import ArraySource, TrainConfig, train
from sae.synthetic import cpu_preset, make_truth, sample
# isort: on

SITE = Site(0, "resid_post")
CC_SITES = (Site(0, "resid_post"), Site(1, "resid_post"))
RESULTS = os.path.join(_HERE, "results", "parts_end_to_end.jsonl")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipes", default="sqrt_l1,prolu,cauchy,lp_anneal")
    p.add_argument("--m", type=int, default=4096)
    p.add_argument("--k", type=int, default=25)
    p.add_argument("--coef", type=float, default=None, help="sparsity_coef (None: default)")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=2 ** 19)
    p.add_argument("--rows", type=int, default=2 ** 17)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--decoders", default="dense,sparse",
                   help="decoder settings per recipe (auto / dense / sparse)")
    p.add_argument("--splits", default="on",
                   help="TrainConfig.split_batch settings per recipe: on / off / on,off")
    p.add_argument("--crosscoders", default="",
                   help="crosscoder activations to time (e.g. topk,relu): one dictionary over the "
                        "two halves of each row as two sites")
    args = p.parse_args()
    truth = make_truth(cpu_preset())
    x = np.concatenate([sample(truth, 8192, i, return_codes=False).x
                        for i in range(args.rows // 8192)])
    x *= float(np.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1).mean())
    src = ArraySource({SITE: x})
    half = x.shape[1] // 2  # crosscoders: the same numbers as two sites of d/2
    cc_src = ArraySource({CC_SITES[0]: x[:, :half], CC_SITES[1]: x[:, half:]})
    common = dict(kind="sae", sites=(SITE,), width=args.m, batch_tokens=args.batch,
                  total_tokens=args.tokens, lr=3e-3, log_every=args.tokens // args.batch // 4)
    variants = [("topk", "auto", dict(arch="topk", k=args.k))]
    for r in [r for r in args.recipes.split(",") if r]:
        for dec in [d for d in args.decoders.split(",") if d]:
            for sp in [s for s in args.splits.split(",") if s]:
                variants.append((r if sp == "on" else f"{r}/nosplit", dec,
                                 dict(arch=r, decoder=dec, sparsity_coef=args.coef,
                                      split_batch=sp == "on")))
    for a in [a for a in args.crosscoders.split(",") if a]:
        variants.append((f"crosscoder-{a}", "auto", dict(kind="crosscoder", sites=CC_SITES,
                                                         arch=a, k=args.k)))
    times: dict = {}
    last: dict = {}
    for _ in range(args.rounds):
        for name, dec, kw in variants:
            cfg = TrainConfig(**{**common, **kw})
            t0 = time.perf_counter()
            res = train(cc_src if name.startswith("crosscoder") else src, cfg, distributed=False)
            times.setdefault((name, dec), []).append(time.perf_counter() - t0)
            pairs = getattr(res.dictionaries[0], "uses_pairs", None)  # crosscoders decide
            resolved = cfg.decoder_for(args.m) if pairs is None else ("sparse" if pairs else "dense")
            last[(name, dec)] = (res.history[-1], resolved, cfg.split_batch)
    tps = {v: args.tokens / statistics.median(t) for v, t in times.items()}
    base = tps[("topk", "auto")]
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    for (name, dec), t in times.items():
        h, resolved, split = last[(name, dec)]
        row = {"benchmark": "parts_end_to_end", "arch": name, "decoder": dec,
               "decoder_resolved": resolved, "m": args.m, "d": x.shape[1], "batch": args.batch,
               "tokens": args.tokens, "coef": args.coef,
               "k": args.k if name in ("topk", "crosscoder-topk") else None,
               "split_batch": split,  # the config flag; only row-separable recipes split
               "seconds": [round(v, 2) for v in t], "tokens_per_s": round(tps[(name, dec)]),
               "vs_topk": round(tps[(name, dec)] / base, 3), "final_l0": round(h["l0"], 2),
               "final_fvu": round(h["fvu"], 4),
               "loadavg": [round(v, 2) for v in os.getloadavg()]}
        print(json.dumps(row), flush=True)
        with open(RESULTS, "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
