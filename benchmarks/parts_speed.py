"""Training throughput of dictionaries built from parts (``sae.parts``) against TopK.

Algorithm:
  1. ``arch`` mode (default): random float32 activations [4·batch, d] in an
     ``ArraySource``; every variant (TopK with the decoder ``"auto"`` picks — sparse at
     these shapes —, TopK dense, ReLU, and each new composed architecture: prolu, sqrt_l1,
     lp_anneal, cauchy, deep, ghost_grads, resample) runs ``sae.train`` with the same shapes
     (d=512, m=8192, k=32, batch 2048 by default; steps ``mx.compile``d), timed per step
     through the progress callback (log_every=1); the first ``--warmup`` steps of each
     call are dropped. Rounds interleave the variants so machine load hits all alike.
     Each row: median / min step time, tokens/s and the ratios to TopK's tokens/s
     (the "at least half of TopK" goal): ``vs_topk`` on medians against TopK's faster
     decoder, ``vs_topk_best`` on best steps (least disturbed by a shared machine's load),
     ``vs_topk_dense_best`` against TopK with the dense decoder.
     ghost_grads runs with every latent counted dead after one step (dead_tokens = batch),
     so its auxiliary loss is on in every timed step (its worst case).
  2. ``compare`` mode (``--compare-base DIR``): before/after for the standard classes:
     runs ``benchmarks/sae_train.py`` (TopK and BatchTopK, sparse decoder, SAELens off)
     from the tree at DIR (e.g. a ``git worktree`` of the previous commit) and from this
     tree, alternating, ``--rounds`` times, and records each run's step times.
  3. ``sparse`` mode (``--mode sparse``): the sparse pair loss of composed dictionaries
     (``decoder="sparse"``, ``sae.parts.sparse``) against their dense loss and against
     TopK's sparse decoder, at a trained dictionary's sparsity: each latent's encoder bias
     is set so it fires on L0/m of the tokens (mean L0 = ``--l0`` per token; the deep
     recipe is TopK-activated, k = ``--k``), and lr = 0 keeps it there. One trainer step
     (``make_step``: compiled for dense, uncompiled for the relu-family pair path, whose
     loss reads the active count on the host) is timed per call; ``vs_topk`` /
     ``vs_topk_best`` compare tokens/s with TopK's sparse decoder (median / best step).
  4. Append JSON lines (with load average and environment) to
     ``benchmarks/results/parts_speed.jsonl`` and print them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

# isort: off
import attribution  # noqa: F401  (must come first: loads the optimised BLAS before mlx)
import numpy as np
from attribution import Site
from attribution.perf import environment_record
from sae import ArraySource, TrainConfig, train
# isort: on

NEW = ("prolu", "sqrt_l1", "lp_anneal", "cauchy", "deep", "ghost_grads", "resample")
RESULTS = os.path.join(_HERE, "results", "parts_speed.jsonl")


def _times(src, site, variant: str, args) -> list[float]:
    times: list[float] = []
    last = [0.0]

    def tick(_):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    arch, _, decoder = variant.partition(":")
    kw = dict(decoder=decoder or "auto") if arch in ("topk", "batchtopk") else {}
    if arch == "ghost_grads":
        kw["dead_tokens"] = args.batch  # aux loss on from the second step: its worst case
    cfg = TrainConfig(kind="sae", arch=arch, sites=(site,), width=args.m, k=args.k,
                      batch_tokens=args.batch, total_tokens=args.batch * (args.steps + args.warmup),
                      warmup_steps=10, log_every=1, b_dec_init="mean", **kw)
    last[0] = time.perf_counter()
    train(src, cfg, callback=tick, distributed=False)
    return times[args.warmup:]


def _arch_mode(args) -> list[dict]:
    rng = np.random.default_rng(0)
    site = Site(0, "resid_post")
    src = ArraySource({site: rng.standard_normal((4 * args.batch, args.d)).astype(np.float32)})
    variants = args.variants.split(",")
    times = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            times[v] += _times(src, site, v, args)
    tps = {v: args.batch / statistics.median(t) for v, t in times.items()}
    best = {v: args.batch / min(t) for v, t in times.items()}
    topk = max(tps[v] for v in variants if v.startswith("topk"))
    topk_best = max(best[v] for v in variants if v.startswith("topk"))
    topk_dense = best.get("topk:dense")
    rows = []
    for v, t in times.items():
        rows.append({"benchmark": "parts_speed", "mode": "arch", "variant": v, "d": args.d,
                     "m": args.m, "k": args.k, "batch": args.batch, "steps_timed": len(t),
                     "step_median_s": round(statistics.median(t), 4),
                     "step_min_s": round(min(t), 4), "tokens_per_s_median": round(tps[v], 1),
                     "tokens_per_s_best": round(best[v], 1),
                     "vs_topk": round(tps[v] / topk, 3),
                     "vs_topk_best": round(best[v] / topk_best, 3),
                     "vs_topk_dense_best": round(best[v] / topk_dense, 3) if topk_dense else None})
    return rows


SPARSE_RECIPES = ("relu", "sqrt_l1", "lp_anneal", "cauchy", "prolu", "deep")


def _sparse_step(src_x, variant: str, args):
    """(step function, its positional arguments) for one variant of ``sparse`` mode."""
    import mlx.core as mx

    from sae.train.trainee import build_trainees, make_step

    arch, _, decoder = variant.partition(":")
    site = Site(0, "resid_post")
    cfg = TrainConfig(kind="sae", arch=arch, sites=(site,), width=args.m, k=args.k, lr=0.0,
                      batch_tokens=args.batch, total_tokens=args.batch * 4, b_dec_init="mean",
                      decoder=decoder or "auto")
    x = mx.array(src_x[:args.batch])
    (t,) = build_trainees(cfg, {site: args.d}, {site: src_x[:args.batch]}, mx.random.key(0))
    d = t.dictionary
    if arch not in ("topk", "deep"):  # each latent fires on l0/m of the tokens
        pre = np.array(d.train_pre_acts(x)) - np.array(d.b_enc)
        q = np.quantile(pre, 1 - args.l0 / args.m, axis=0)
        d.b_enc = mx.array(-q.astype(np.float32))
        if arch == "prolu":  # prolu fires where m > max(0, -b): keep the gate the binding side
            d.b_enc = mx.minimum(d.b_enc, 0)
        mx.eval(d.parameters())
    fn = make_step(t)
    coef = mx.array(float(d.default_sparsity_coef))
    return fn, (x, x, mx.array(0.0), coef, mx.array(1.0), False, mx.array(0.5))


def _sparse_mode(args) -> list[dict]:
    import mlx.core as mx

    rng = np.random.default_rng(0)
    src_x = rng.standard_normal((args.batch, args.d)).astype(np.float32)
    variants = ["topk:sparse"] + [f"{r}:{dec}" for r in SPARSE_RECIPES for dec in ("dense", "sparse")]
    if args.variants_sparse:
        variants = args.variants_sparse.split(",")
    times: dict = {v: [] for v in variants}
    l0s: dict = {}
    for _ in range(args.rounds):
        for v in variants:
            fn, a = _sparse_step(src_x, v, args)
            for i in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                out = fn(*a)
                mx.eval(out)
                if i >= args.warmup:
                    times[v].append(time.perf_counter() - t0)
            l0s[v] = float(out["l0"])
    med = {v: args.batch / statistics.median(t) for v, t in times.items()}
    best = {v: args.batch / min(t) for v, t in times.items()}
    rows = []
    for v, t in times.items():
        rows.append({"benchmark": "parts_speed", "mode": "sparse", "variant": v, "d": args.d,
                     "m": args.m, "k": args.k, "l0_target": args.l0, "l0": round(l0s[v], 2),
                     "batch": args.batch, "steps_timed": len(t),
                     "step_median_s": round(statistics.median(t), 4),
                     "step_min_s": round(min(t), 4), "tokens_per_s_median": round(med[v], 1),
                     "tokens_per_s_best": round(best[v], 1),
                     "vs_topk": round(med[v] / med["topk:sparse"], 3) if "topk:sparse" in med else None,
                     "vs_topk_best": round(best[v] / best["topk:sparse"], 3)
                     if "topk:sparse" in best else None})
    return rows


def _compare_mode(args) -> list[dict]:
    trees = {"base": os.path.abspath(args.compare_base), "parts": os.path.dirname(_HERE)}
    rows = []
    for r in range(args.rounds):
        for tag, root in trees.items():
            cmd = [sys.executable, os.path.join(root, "benchmarks", "sae_train.py"), "--peers", "off",
                   "--variants", "topk:sparse,batchtopk:sparse", "--rounds", "1",
                   "--steps", str(args.steps), "--warmup", str(args.warmup)]
            env = dict(os.environ, PYTHONPATH=root)
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            rec = json.loads(out.strip().splitlines()[-1])
            for v in rec["results"]:
                rows.append({"benchmark": "parts_speed", "mode": "compare", "tree": tag, "round": r,
                             "variant": v.get("variant"), "decoder": v.get("decoder"),
                             "step_median_s": v.get("step_median_s"),
                             "step_min_s": v.get("step_min_s"),
                             "tokens_per_s_median": v.get("tokens_per_s_median")})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--m", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", default="topk:auto,topk:dense,relu," + ",".join(NEW))
    p.add_argument("--compare-base", default=None,
                   help="tree of the previous code (compare mode, module docstring 2)")
    p.add_argument("--mode", choices=("arch", "sparse"), default="arch",
                   help="arch: all variants through sae.train; sparse: pair vs dense loss "
                        "at a trained sparsity (module docstring, 3)")
    p.add_argument("--l0", type=float, default=32.0, help="sparse mode: mean active latents per token")
    p.add_argument("--variants-sparse", default=None,
                   help="sparse mode: comma-separated arch:decoder list (default: all)")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args()
    load0 = os.getloadavg()
    if args.compare_base:
        rows = _compare_mode(args)
    else:
        rows = _sparse_mode(args) if args.mode == "sparse" else _arch_mode(args)
    env = {"loadavg_before": [round(v, 2) for v in load0],
           "loadavg_after": [round(v, 2) for v in os.getloadavg()],
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "env": environment_record()}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "a") as f:
        for r in rows:
            r.update(env)
            f.write(json.dumps(r, sort_keys=True) + "\n")
            print(json.dumps({k: v for k, v in r.items() if k != "env"}, sort_keys=True))


if __name__ == "__main__":
    main()
