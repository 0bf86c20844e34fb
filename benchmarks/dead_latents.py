"""Dead latents and BatchTopK's inference L0 on a small synthetic preset (issue 16).

Run from the repo root: ``.venv/bin/python benchmarks/dead_latents.py [--archs ...]``.
Algorithm:
  1. Draw the truth of ``sae.synthetic.cpu_preset`` scaled down by ``--scale-down`` (4:
     d=64, 1,024 features); ``--train-rows`` distinct train rows and ``--eval-rows``
     held-out rows, both scaled to E||x|| = sqrt(d).
  2. For each arch in ``--archs`` train one SAE (width = n_features, ``--steps`` steps of
     ``--batch`` tokens, ``--dead-tokens``, ``--log-every``; other flags as named; eager
     steps for the batch variants), recording every batch threshold the BatchTopK
     activation hands to ``update_stats`` (the trajectory the threshold is estimated from).
  3. Score the held-out rows with ``sae.synthetic.score`` (MCC, F1, FVU, L0, dead = never
     fires on the held-out rows). For the batch variants also report: the saved threshold,
     the batch thresholds at steps 1, 10, 25%, 50%, 100% of the run, the mean of the last
     10% of them, and the L0 / FVU / MCC / F1 of the JumpReLU at the *calibrated* threshold
     (mean batch threshold of the final dictionary over 4 training batches); under
      ``estimators`` each candidate estimator replayed in numpy over the logged batch
     thresholds (rate 0.01, "_x10": 0.1; EMA from the first value at 0.01 = the
     pre-issue-16 saved threshold, EMA from 0 =
     SAELens's, bias-corrected EMA, means of the last 10/20/50%) with its held-out L0;
     ``batch_eval``: batch-level top k over the held-out rows.
  4. Print one JSON line per run and append it (with the load average: shared machine)
     to ``benchmarks/results/dead_latents.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

# isort: off
import attribution  # noqa: F401  (must come first: loads the optimised BLAS before mlx)
import mlx.core as mx
import numpy as np
from attribution import Site
from sae import ArraySource, TrainConfig, train
from sae.ops import batch_topk
from sae.parts import activations as acts
from sae.synthetic import cpu_preset, make_truth, sample, score
# isort: on

SITE = Site(0, "resid_post")
RESULTS = os.path.join(_HERE, "results", "dead_latents.jsonl")


def _record_thresholds(log: list):
    """Wrap BatchTopK.update_stats so every batch threshold is appended to ``log``."""
    orig = acts.BatchTopK.update_stats

    def update_stats(self, d, stats):
        if "batch_threshold" in stats:
            log.append(stats["batch_threshold"])
        return orig(self, d, stats)

    acts.BatchTopK.update_stats = update_stats
    return orig


def ema(thr: np.ndarray, rate: float, start: str) -> float:
    """EMA of ``thr`` from the first value ("first", the old estimator), from 0 ("zero",
    SAELens), or from 0 with Adam's bias correction ("debiased")."""
    m = thr[0] if start == "first" else 0.0
    for i, b in enumerate(thr[1:] if start == "first" else thr):
        m = (1 - rate) * m + rate * b
    if start == "debiased":
        m = m / (1 - (1 - rate) ** len(thr))
    return float(m)


def estimators(thr: np.ndarray, rate: float) -> dict:
    n = len(thr)
    out = {"ema_first": ema(thr, rate, "first"), "ema_zero": ema(thr, rate, "zero"),
           "debiased": ema(thr, rate, "debiased"),
           "debiased_x10": ema(thr, min(1.0, 10 * rate), "debiased"),
           "ema_first_x10": ema(thr, min(1.0, 10 * rate), "first")}
    for frac in (0.1, 0.2, 0.5):
        out[f"mean_last{int(frac * 100)}pct"] = float(thr[-max(1, int(n * frac)):].mean())
    return out


def _score(d, w, truth, f, codes, x_ev, pairs) -> dict:
    x_hat = np.array(d.decode(mx.array(f)))
    r = score(w, truth.directions, f, codes, x=x_ev, x_hat=x_hat, hierarchy_pairs=pairs).summary()
    return {k: r[k] for k in ("mcc", "f1", "fvu", "l0", "dead", "n_dead")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", default="batchtopk")
    p.add_argument("--k", type=int, default=25)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=96)
    p.add_argument("--train-rows", type=int, default=2 ** 17)
    p.add_argument("--eval-rows", type=int, default=2 ** 13)
    p.add_argument("--dead-tokens", type=int, default=None, help="default: TrainConfig's")
    p.add_argument("--log-every", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--coef", type=float, default=None, help="sparsity coef (relu/jumprelu/gated)")
    p.add_argument("--aux-coef", type=float, default=None)
    p.add_argument("--threshold-ema", type=float, default=None)
    p.add_argument("--resample-every", type=int, default=None)
    p.add_argument("--scale-down", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    args = p.parse_args()
    c = cpu_preset()
    if args.scale_down > 1:
        c = cpu_preset(d=c.d // args.scale_down, n_features=c.n_features // args.scale_down,
                       n_parents=c.n_parents // args.scale_down)
    truth = make_truth(c)
    x_tr = np.concatenate([sample(truth, min(8192, args.train_rows - i), i // 8192,
                                  return_codes=False).x
                           for i in range(0, args.train_rows, 8192)])
    ev = sample(truth, args.eval_rows, 10 ** 6)
    s = float(np.sqrt(c.d) / np.linalg.norm(x_tr, axis=1).mean())
    x_tr, x_ev, codes = x_tr * s, ev.x * s, ev.codes * s
    pairs = truth.hierarchy_pairs
    src = ArraySource({SITE: x_tr})
    for arch in [a for a in args.archs.split(",") if a]:
        kw = dict(kind="sae", arch=arch, sites=(SITE,), width=c.n_features, k=args.k,
                  batch_tokens=args.batch, total_tokens=args.steps * args.batch, lr=args.lr,
                  seed=args.seed, log_every=args.log_every,
                  # eager steps only where the batch thresholds are recorded (a compiled
                  # step would hand update_stats tracers)
                  compile=arch not in ("batchtopk", "matryoshka"))
        for name, v in (("dead_tokens", args.dead_tokens), ("sparsity_coef", args.coef),
                        ("aux_coef", args.aux_coef), ("threshold_ema", args.threshold_ema),
                        ("resample_every", args.resample_every)):
            if v is not None:
                kw[name] = v
        cfg = TrainConfig(**kw)
        log: list = []
        orig = _record_thresholds(log)
        t0 = time.perf_counter()
        try:
            d = train(src, cfg, distributed=False).dictionaries[0]
        finally:
            acts.BatchTopK.update_stats = orig
        secs = time.perf_counter() - t0
        w = np.array(d.W_dec)
        row = {"benchmark": "dead_latents", "tag": args.tag, "arch": arch, "d": c.d,
               "m": c.n_features, "k": args.k, "steps": cfg.steps, "batch": args.batch,
               "dead_tokens": cfg.dead_tokens, "log_every": cfg.log_every, "lr": args.lr,
               "aux_coef": cfg.aux_coef, "threshold_ema": cfg.threshold_ema,
               "sparsity_coef": args.coef, "resample_every": args.resample_every,
               "seed": args.seed, "train_s": round(secs, 1)}
        x = mx.array(x_ev)
        row.update(_score(d, w, truth, np.array(d.encode(x)), codes, x_ev, pairs))
        if arch in ("batchtopk", "matryoshka"):
            thr = np.array([float(v) for v in log])
            n = len(thr)
            row["threshold"] = round(float(np.array(d.threshold)), 5)
            row["batch_thr_at"] = {str(i): round(float(thr[i - 1]), 5)
                                   for i in sorted({1, 10, max(1, n // 4), max(1, n // 2), n})}
            row["batch_thr_last10pct"] = round(float(thr[-max(1, n // 10):].mean()), 5)
            # calibrated: the final dictionary's own batch threshold on training batches
            rows = [mx.array(x_tr[i * args.batch:(i + 1) * args.batch]) for i in range(4)]
            cal = np.mean([float(batch_topk(d.pre_acts(r), args.k)[1]) for r in rows])
            row["threshold_calibrated"] = round(float(cal), 5)
            pre = np.array(d.pre_acts(x))
            f_cal = pre * (pre > cal)
            row["calibrated"] = _score(d, w, truth, f_cal, codes, x_ev, pairs)
            # each estimator of the inference threshold, replayed over the logged batch
            # thresholds (numpy), and the held-out L0 of its JumpReLU
            row["estimators_rate"] = 0.01
            row["estimators"] = {name: {"threshold": round(float(v), 5),
                                        "l0": round(float((pre > v).sum(1).mean()), 3)}
                                 for name, v in estimators(thr, 0.01).items()}
            row["batch_eval"] = _score(d, w, truth, np.array(batch_topk(mx.array(pre), args.k)[0]),
                                       codes, x_ev, pairs)
        row["loadavg"] = [round(v, 2) for v in os.getloadavg()]
        print(json.dumps(row), flush=True)
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
