"""SAE quality on a real model's activations: ours vs SAELens at equal tokens and equal L0.

Run in .venv-peers (``bash benchmarks/setup_peers.sh``), from the repo root:
``.venv-peers/bin/python benchmarks/sae_quality.py``. Algorithm:
  1. Load the shipped ``ioi`` organism; draw documents from its own training corpus
     (``circuits.organisms.corpus``), pack them into contexts of 64 tokens and capture
     ``--site`` (default L1.resid_post); drop position 0 and BOS. Train tokens use corpus
     seed 1, held-out evaluation tokens seed 2.
  2. Scale every activation by s = sqrt(d) / E||x|| (from the train set), the same input
     for both libraries (our trainer's own normalisation then sees E||x|| = sqrt(d)).
  3. Ours: ``sae.train`` TopK (width m, k) on an ``ArraySource``; SAELens: its
     ``TopKTrainingSAE`` (library defaults: decoder init norm 0.1, rescale by decoder
     norm, AuxK coefficient 1, b_dec zeros) stepped by its ``SAETrainer.step`` on the very
     batches our source yields, in the same order. Shared: k, width, batch, total
     tokens, LR, linear warm-up, linear decay to 0 over the last 20%, dead window.
  4. Evaluate both on the held-out tokens: FVU = sum||x - x^||^2 / sum||x - mean||^2,
     L0, and dead latents = fraction of latents that never fire on the held-out set.
  5. Print one JSON line.
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
from attribution import Site, capture, load_model
from sae import ArraySource, TrainConfig, train
# isort: on

CTX = 64


def harvest(model, site: Site, n_tokens: int, seed: int) -> np.ndarray:
    """[n_tokens, d] activations at ``site`` over the organism's own corpus."""
    from circuits import organisms
    from circuits.organisms.corpus import CorpusSampler

    sampler = CorpusSampler(organisms.RECIPES["ioi"], model.tokenizer, seed)
    bos = sampler.bos
    stream: list[int] = []
    out, have = [], 0
    while have < n_tokens:
        while len(stream) < 256 * CTX:
            stream.extend(int(t) for t in sampler.document())
        toks = np.asarray(stream[:256 * CTX], np.int32).reshape(256, CTX)
        stream = stream[256 * CTX:]
        acts = np.array(capture(model, mx.array(toks), [site])[site].astype(mx.float32))
        keep = np.ones(toks.shape, bool)
        keep[:, 0] = False
        if bos is not None:
            keep &= toks != bos
        a = acts.reshape(-1, acts.shape[-1])[keep.reshape(-1)]
        out.append(a)
        have += a.shape[0]
    return np.concatenate(out)[:n_tokens]


def metrics(x: np.ndarray, x_hat: np.ndarray, f: np.ndarray) -> dict:
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    fired = (f > 0).any(0)
    return {"fvu": round(fvu, 5), "l0": round(float((f > 0).sum(1).mean()), 3),
            "dead_frac": round(float(1 - fired.mean()), 5), "dead": int((~fired).sum())}


def run_saelens(batches, args, steps: int, warm: int, decay: int, lr: float, x_eval, threads):
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    sl = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x_eval.shape[1], d_sae=args.m, k=args.k,
                                               dtype="float32", device="cpu"))
    tr = SAETrainer(SAETrainerConfig(
        total_training_samples=steps * args.batch, train_batch_size_samples=args.batch, lr=lr,
        lr_end=lr, lr_warm_up_steps=warm, lr_decay_steps=decay,
        dead_feature_window=args.dead_tokens // args.batch, device="cpu"), sl, iter(()))
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.step(torch.from_numpy(next(batches)))
    secs = time.perf_counter() - t0
    with torch.no_grad():
        xe = torch.from_numpy(x_eval)
        f = sl.encode(xe)
        x_hat = sl.decode(f)
    return metrics(x_eval, x_hat.numpy(), f.numpy()), secs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--site", default="L1.resid_post")
    p.add_argument("--m", type=int, default=2048)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--train-tokens", type=int, default=2 ** 20, help="distinct train tokens")
    p.add_argument("--total-tokens", type=int, default=2 ** 21, help="training budget (both)")
    p.add_argument("--eval-tokens", type=int, default=2 ** 16)
    p.add_argument("--dead-tokens", type=int, default=2 ** 18,
                   help="tokens without firing before a latent counts as dead in training (AuxK)")
    p.add_argument("--lr", type=float, default=None, help="default: ours, 2e-4*sqrt(2^14/m)")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from circuits import organisms

    site = Site.parse(args.site)
    model = load_model(organisms.path("ioi"))
    t0 = time.perf_counter()
    x_tr, x_ev = harvest(model, site, args.train_tokens, 1), harvest(model, site, args.eval_tokens, 2)
    harvest_s = time.perf_counter() - t0
    scale = np.sqrt(x_tr.shape[1]) / np.linalg.norm(x_tr, axis=1).mean()
    x_tr, x_ev = (x_tr * scale).astype(np.float32), (x_ev * scale).astype(np.float32)
    cfg = TrainConfig(kind="sae", arch="topk", sites=(site,), width=args.m, k=args.k,
                      batch_tokens=args.batch, total_tokens=args.total_tokens, lr=args.lr,
                      dead_tokens=args.dead_tokens, seed=args.seed, log_every=10 ** 9)
    steps, lr = cfg.steps, cfg.lr_for(args.m)
    warm, decay = min(cfg.warmup_steps, max(1, steps // 10)), int(steps * cfg.decay_frac)
    src = ArraySource({site: x_tr})

    t0 = time.perf_counter()
    d = train(src, cfg, distributed=False).dictionaries[0]
    ours_s = time.perf_counter() - t0
    f = np.array(d.encode(mx.array(x_ev)))
    ours = metrics(x_ev, np.array(d(mx.array(x_ev))), f)

    batches = (b[site] for b in src.batches(args.batch, args.seed))  # ours' exact order
    theirs, theirs_s = run_saelens(batches, args, steps, warm, decay, lr, x_ev, args.torch_threads)
    import sae_lens
    print(json.dumps({
        "benchmark": "sae_quality", "organism": "ioi", "site": str(site), "d": int(x_tr.shape[1]),
        "m": args.m, "k": args.k, "batch": args.batch, "steps": steps,
        "total_tokens": steps * args.batch, "distinct_train_tokens": int(x_tr.shape[0]),
        "eval_tokens": int(x_ev.shape[0]), "lr": lr, "warmup_steps": warm, "decay_steps": decay,
        "dead_tokens": args.dead_tokens, "harvest_s": round(harvest_s, 1),
        "ours": {**ours, "train_s": round(ours_s, 1)},
        "saelens": {**theirs, "train_s": round(theirs_s, 1), "torch_threads": args.torch_threads},
        "fvu_ours_minus_saelens": round(ours["fvu"] - theirs["fvu"], 5),
        "sae_lens": sae_lens.__version__, "loadavg": [round(v, 2) for v in os.getloadavg()]}))


if __name__ == "__main__":
    main()
