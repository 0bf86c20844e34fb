"""Dictionary quality against synthetic ground truth (``sae.synthetic``): ours vs SAELens.

Run from the repo root: ``.venv/bin/python benchmarks/synthetic_quality.py`` (ours only) or
``.venv-peers/bin/python benchmarks/synthetic_quality.py`` (adds SAELens's BatchTopK).
Algorithm:
  1. Draw the truth of ``sae.synthetic.cpu_preset`` (d=256, 4,096 features, L0 25, Zipf,
     correlated firing, 64 parents × 4 children); generate ``--train-rows`` distinct train
     rows (batches 0..) and ``--eval-rows`` held-out rows (a far batch index), both scaled by
     s = sqrt(d) / E||x|| (the true codes are scaled by s too, so magnitudes stay comparable).
  2. For each arch in ``--archs`` (topk, batchtopk, matryoshka): ``sae.train`` at width
     ``--m`` (default = n_features), k = ``--k`` (25), ``--total-tokens`` tokens in batches
     of ``--batch``, LR ``--lr`` (3e-3: at this short budget our long-run default, 4e-4 at
     m=4096, ends barely above the random-decoder MCC); time it.
  3. If sae_lens imports: its ``BatchTopKTrainingSAE`` and ``MatryoshkaBatchTopKTrainingSAE``
     (``--saelens-archs``; library defaults, Matryoshka with our group bounds) stepped by its
     ``SAETrainer.step`` on the very batches our source yields, same LR schedule.
  Each dictionary is evaluated in two forms on the held-out rows (``eval`` column):
  "threshold", the inference JumpReLU each library saves (EMA threshold), and "batch",
  batch-level top k over the evaluation batch (the training activation).
  4. Score every dictionary with ``sae.synthetic.score`` on the held-out rows (MCC, F1,
     uniqueness, shrinkage, absorption, dead = silent on all of them, FVU), and count
     ``dead_long``: the fraction of latents silent, in the threshold form, on
     ``--dead-rows`` further held-out rows (generator batches 2e6, 2e6 + 1, ...; the
     window a dead latent is judged on, like a training dead counter: on 16,384 rows
     latents with rare real features read as dead); with sae_lens also its own
     ``mean_correlation_coefficient`` and ``feature_uniqueness`` on the same decoders.
     ``mcc_random_decoder`` is the chance level (a Gaussian decoder of the same width).
  5. Print one JSON line per dictionary and append them to
     ``benchmarks/results/synthetic_quality.jsonl``.
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
from circuits.sweep.metrics import dead_fraction
from sae import ArraySource, TrainConfig, train
from sae.arch import MatryoshkaDictionary
from sae.ops import batch_topk
from sae.synthetic import cpu_preset, make_truth, mcc, sample, score
# isort: on

SITE = Site(0, "resid_post")
RESULTS = os.path.join(_HERE, "results", "synthetic_quality.jsonl")


def _saelens_scores(decoder: np.ndarray, features: np.ndarray) -> dict:
    try:
        import torch
        from sae_lens.synthetic.evals import feature_uniqueness, mean_correlation_coefficient
    except ImportError:
        return {}
    dec = torch.from_numpy(np.array(decoder, np.float32))
    feat = torch.from_numpy(np.array(features, np.float32))
    return {"saelens_mcc": round(mean_correlation_coefficient(feat, dec), 5),
            "saelens_uniqueness": round(feature_uniqueness(dec, feat), 5)}


def run_saelens(arch, batches, args, steps, warm, decay, lr, x_eval, threads, group_bounds,
                x_dead=None):
    """Train SAELens's BatchTopK or Matryoshka BatchTopK (library defaults) on our batches.

    Returns (W_dec, {eval form: activations in raw-decoder units}, {form: x_hat}, seconds,
    dead_long: fraction of latents silent in the threshold form on every row of ``x_dead``).
    Forms: "threshold" is the inference JumpReLU SAELens saves (its EMA ``topk_threshold``
    on decoder-norm-scaled pre-activations); "batch" is batch-level top k over the
    evaluation batch (the training activation)."""
    import torch
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.training.sae_trainer import SAETrainer

    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    common = dict(d_in=x_eval.shape[1], d_sae=args.m, k=args.k, dtype="float32", device="cpu")
    if arch == "matryoshka":
        sl = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
            matryoshka_widths=list(group_bounds), **common))
    else:
        sl = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))
    tr = SAETrainer(SAETrainerConfig(
        total_training_samples=steps * args.batch, train_batch_size_samples=args.batch, lr=lr,
        lr_end=lr, lr_warm_up_steps=warm, lr_decay_steps=decay,
        dead_feature_window=args.dead_tokens // args.batch, device="cpu"), sl, iter(()))
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.step(torch.from_numpy(next(batches)))
    secs = time.perf_counter() - t0
    acts, recons = {}, {}
    with torch.no_grad():
        x = torch.from_numpy(x_eval)
        w = sl.W_dec.detach()
        norm = w.norm(dim=-1)
        rescale = bool(getattr(sl.cfg, "rescale_acts_by_decoder_norm", False))
        f_batch = sl.encode(x)  # batch-level top k over this batch, in scaled units
        pre = sl.process_sae_in(x) @ sl.W_enc + sl.b_enc
        scaled = pre.relu() * (norm if rescale else 1)
        f_thr = scaled * (scaled > sl.topk_threshold)
        for form, f in (("batch", f_batch), ("threshold", f_thr)):
            recons[form] = sl.decode(f).numpy()
            acts[form] = (f / norm).numpy() if rescale else f.numpy()
        dead_long = None
        if x_dead is not None:
            fired = torch.zeros(args.m, dtype=torch.bool)
            for i in range(0, len(x_dead), 8192):
                xc = torch.from_numpy(x_dead[i:i + 8192])
                sc = (sl.process_sae_in(xc) @ sl.W_enc + sl.b_enc).relu() * (norm if rescale else 1)
                fired |= (sc > sl.topk_threshold).any(0)
            dead_long = round(1.0 - fired.float().mean().item(), 6)
    return w.numpy(), acts, recons, secs, dead_long


def _group_bounds(cfg, d: int, m: int) -> list[int]:
    """Matryoshka prefix ends of our config (SAELens's ``matryoshka_widths``)."""
    return MatryoshkaDictionary(d, m, k=cfg.k, group_fractions=list(cfg.group_fractions)).group_bounds


def _our_forms(d, x_eval: np.ndarray, k: int) -> dict:
    """Our activations on the held-out rows: the saved inference form ("threshold": the
    JumpReLU with the EMA threshold for the batch variants, per-row top k for TopK) and,
    for the batch variants, batch-level top k over the evaluation batch ("batch")."""
    x = mx.array(x_eval)
    forms = {"threshold": np.array(d.encode(x))}
    if d.arch in ("batchtopk", "matryoshka"):
        forms["batch"] = np.array(batch_topk(d.pre_acts(x), k)[0])
    return forms


def emit(row: dict) -> None:
    """Print one JSON line and append it to the results file (rows survive an interrupted run)."""
    row = {**row, "loadavg": [round(v, 2) for v in os.getloadavg()]}
    print(json.dumps(row), flush=True)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", default="topk,batchtopk,matryoshka")
    p.add_argument("--m", type=int, default=None, help="width (default: n_features)")
    p.add_argument("--k", type=int, default=25)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--train-rows", type=int, default=2 ** 18, help="distinct train rows")
    p.add_argument("--total-tokens", type=int, default=2 ** 20, help="training budget (each)")
    p.add_argument("--eval-rows", type=int, default=2 ** 14)
    p.add_argument("--dead-rows", type=int, default=2 ** 18,
                   help="further held-out rows for dead_long (threshold form)")
    p.add_argument("--dead-tokens", type=int, default=2 ** 18)
    p.add_argument("--lr", type=float, default=3e-3,
                   help="both libraries; 3e-3 suits the short budget (ours' default 4e-4 at "
                        "m=4096 stays near chance MCC after 2^20 tokens)")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--no-saelens", action="store_true")
    p.add_argument("--saelens-archs", default="batchtopk,matryoshka",
                   help="SAELens trainers run on the same batches (batchtopk, matryoshka)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale-down", type=int, default=1,
                   help="divide d and n_features by this (quick smoke runs)")
    args = p.parse_args()
    c = cpu_preset()
    if args.scale_down > 1:
        c = cpu_preset(d=c.d // args.scale_down, n_features=c.n_features // args.scale_down,
                       n_parents=c.n_parents // args.scale_down)
    args.m = args.m or c.n_features
    truth = make_truth(c)
    t0 = time.perf_counter()
    chunks = [sample(truth, min(8192, args.train_rows - i), i // 8192, return_codes=False).x
              for i in range(0, args.train_rows, 8192)]
    x_tr = np.concatenate(chunks)
    ev = sample(truth, args.eval_rows, 10 ** 6)
    x_dead = np.concatenate([sample(truth, min(8192, args.dead_rows - i), 2 * 10 ** 6 + i // 8192,
                                    return_codes=False).x for i in range(0, args.dead_rows, 8192)])
    gen_s = time.perf_counter() - t0
    s = float(np.sqrt(c.d) / np.linalg.norm(x_tr, axis=1).mean())
    x_tr, x_ev, codes, x_dead = x_tr * s, ev.x * s, ev.codes * s, x_dead * s
    pairs = truth.hierarchy_pairs
    # Chance level: a Gaussian random decoder of the same width.
    rand = np.random.default_rng(args.seed).standard_normal((args.m, c.d))
    common = {"benchmark": "synthetic_quality", "preset": "cpu", "d": c.d,
              "n_features": c.n_features, "true_l0": c.mean_l0, "m": args.m, "k": args.k,
              "batch": args.batch, "total_tokens": args.total_tokens,
              "train_rows": args.train_rows, "eval_rows": args.eval_rows,
              "dead_rows": args.dead_rows,
              "scale_down": args.scale_down,
              "generate_s": round(gen_s, 1),
              "mcc_random_decoder": round(mcc(truth.directions, rand), 5)}
    rows = []
    src = ArraySource({SITE: x_tr})
    for arch in [a for a in args.archs.split(",") if a]:
        cfg = TrainConfig(kind="sae", arch=arch, sites=(SITE,), width=args.m, k=args.k,
                          batch_tokens=args.batch, total_tokens=args.total_tokens, lr=args.lr,
                          dead_tokens=args.dead_tokens, seed=args.seed, log_every=10 ** 9)
        t0 = time.perf_counter()
        d = train(src, cfg, distributed=False).dictionaries[0]
        secs = time.perf_counter() - t0
        w = np.array(d.W_dec)
        dl = round(dead_fraction(d, x_dead), 6)  # inference form, as the sweeps count
        for form, f in _our_forms(d, x_ev, args.k).items():
            x_hat = np.array(d.decode(mx.array(f)))
            r = score(w, truth.directions, f, codes, x=x_ev, x_hat=x_hat, hierarchy_pairs=pairs)
            rows.append({**common, "library": "ours", "arch": arch, "eval": form, **r.summary(),
                         **_saelens_scores(w, truth.directions), "train_s": round(secs, 1),
                         "steps": cfg.steps, "lr": cfg.lr_for(args.m),
                         "dead_long": dl if form == "threshold" else None})
            emit(rows[-1])
    if not args.no_saelens:
        try:
            import sae_lens
        except ImportError:
            sae_lens = None
        sl_archs = [a for a in args.saelens_archs.split(",") if a] if sae_lens is not None else []
        for arch in sl_archs:
            cfg = TrainConfig(kind="sae", arch=arch, sites=(SITE,), width=args.m, k=args.k,
                              batch_tokens=args.batch, total_tokens=args.total_tokens,
                              lr=args.lr)
            steps, lr = cfg.steps, cfg.lr_for(args.m)
            warm, decay = min(cfg.warmup_steps, max(1, steps // 10)), int(steps * cfg.decay_frac)
            # the very batches (same order) our trainer consumed
            batches = (b[SITE] for b in src.batches(args.batch, args.seed))
            bounds = _group_bounds(cfg, c.d, args.m)
            w, acts, recons, secs, dl = run_saelens(arch, batches, args, steps, warm, decay, lr,
                                                    x_ev, args.torch_threads, bounds, x_dead)
            for form in ("threshold", "batch"):
                r = score(w, truth.directions, acts[form], codes, x=x_ev, x_hat=recons[form],
                          hierarchy_pairs=pairs)
                rows.append({**common, "library": "saelens", "arch": arch, "eval": form,
                             **r.summary(), **_saelens_scores(w, truth.directions),
                             "train_s": round(secs, 1), "steps": steps, "lr": lr,
                             "torch_threads": args.torch_threads,
                             "dead_long": dl if form == "threshold" else None,
                             "sae_lens": sae_lens.__version__})
                emit(rows[-1])


if __name__ == "__main__":
    main()
