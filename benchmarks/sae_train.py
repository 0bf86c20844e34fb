"""SAE training throughput: tokens/s, fraction of the measured matmul peak, and SAELens.

Algorithm:
  1. Random float32 activations [4·batch, d] in an ``ArraySource`` (the same rows feed
     SAELens as torch tensors).
  2. Ours: each variant (default TopK and BatchTopK, each with the sparse and the dense
     decoder; d=512, m=16384, k=32, batch 4096; steps ``mx.compile``d) runs ``sae.train`` with log_every=1; each step is timed
     through the progress callback (which follows the step's ``mx.eval``); the first
     ``--warmup`` steps of every call are dropped.
  3. SAELens (when importable, e.g. in .venv-peers; ``--peers off`` skips it): its own
     ``TopKTrainingSAE`` / ``BatchTopKTrainingSAE`` driven by its own ``SAETrainer.step``
     (training_forward_pass with AuxK machinery, dead-neuron bookkeeping, backward,
     clip_grad_norm 1.0, torch Adam, LR scheduler) on the same batches; each timed step is
     one ``trainer.step(batch)`` call (synchronous on CPU). Trainers are built and warmed
     up once, before the rounds. torch runs at each of ``--torch-threads`` (default 1 and 2:
     on a loaded 2-core machine torch's OpenMP spin-waits make 2 threads far slower);
     the ratios use SAELens's faster setting.
  4. Rounds interleave every variant (``--rounds``), so load on the shared machine hits all
     alike; per variant report min and median step time over all rounds.
  5. Model FLOPs per token: dense 10·d·m (encoder fwd 2dm, decoder fwd 2dm, backward 6dm);
     sparse 2·d·m + 10·k·d (only the encoder matmul is dense). The dense fraction is the
     peak-fraction goal; the sparse path does a fifth of the work, so its fraction is low. Fraction of the
     MLX matmul peak (``attribution.perf``, measured before and after; the higher is used).
  6. Both libraries run in one process under the same allocator settings
     (``attribution.allocator.keep_freed_memory``, which ``sae.train`` applies itself).
  7. Print one JSON line: every figure, ratios ours/SAELens (median and min), load average.
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
sys.path.insert(0, os.path.dirname(_HERE))

# isort: off
import attribution  # noqa: F401  (must come first: loads the optimised BLAS before mlx)
import numpy as np
from attribution import Site
from attribution.allocator import keep_freed_memory
from attribution.perf import environment_record, matmul_gflops
from sae import ArraySource, TrainConfig, train
# isort: on


def _flops_per_token(d: int, m: int, k: int, decoder: str) -> int:
    return 2 * d * m + 10 * k * d if decoder == "sparse" else 10 * d * m


def _ours_round(src, site, arch, decoder, args) -> list[float]:
    """Step times of one ``train`` call (warm-up steps dropped)."""
    times: list[float] = []
    last = [0.0]

    def tick(_):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    cfg = TrainConfig(kind="sae", arch=arch, sites=(site,), width=args.m, k=args.k,
                      batch_tokens=args.batch, total_tokens=args.batch * (args.steps + args.warmup),
                      warmup_steps=10, log_every=1, decoder=decoder, b_dec_init="mean",
                      compile=args.compile)
    last[0] = time.perf_counter()
    train(src, cfg, callback=tick, distributed=False)
    return times[args.warmup:]


class _SAELens:
    """A SAELens trainer (its own SAE class and step) on a fixed cycle of batches."""

    def __init__(self, arch: str, x: np.ndarray, args):
        import torch
        from sae_lens import (
            BatchTopKTrainingSAE,
            BatchTopKTrainingSAEConfig,
            TopKTrainingSAE,
            TopKTrainingSAEConfig,
        )
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

        torch.manual_seed(0)
        kw = {"d_in": args.d, "d_sae": args.m, "k": args.k, "dtype": "float32", "device": "cpu"}
        sae = (TopKTrainingSAE(TopKTrainingSAEConfig(**kw)) if arch == "topk" else
               BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**kw)))
        tcfg = SAETrainerConfig(total_training_samples=args.batch * 10 ** 6,
                                train_batch_size_samples=args.batch, lr=2e-4, lr_end=2e-5,
                                device="cpu")
        self.trainer = SAETrainer(tcfg, sae, data_provider=iter(()))
        self.batches = [torch.from_numpy(x[i:i + args.batch].copy())
                        for i in range(0, x.shape[0], args.batch)]
        self.i = 0
        self.round(args.warmup)  # first steps allocate and warm caches

    def round(self, n: int, threads: int | None = None) -> list[float]:
        import torch
        if threads:
            torch.set_num_threads(threads)
        times = []
        for _ in range(n):
            b = self.batches[self.i % len(self.batches)]
            self.i += 1
            t0 = time.perf_counter()
            self.trainer.step(b)
            times.append(time.perf_counter() - t0)
        return times


def _summary(name, times, args, decoder, peak) -> dict:
    med, best = statistics.median(times), min(times)
    fl = _flops_per_token(args.d, args.m, args.k, decoder)
    return {"variant": name, "decoder": decoder, "steps_timed": len(times),
            "step_median_s": round(med, 4), "step_min_s": round(best, 4),
            "tokens_per_s_median": round(args.batch / med, 1),
            "tokens_per_s_best": round(args.batch / best, 1),
            "flops_per_token": fl, "gflops_median": round(fl * args.batch / med / 1e9, 1),
            "peak_fraction_median": round(fl * args.batch / med / 1e9 / peak, 3),
            "peak_fraction_best": round(fl * args.batch / best / 1e9 / peak, 3)}


def _peers_available(mode: str) -> bool:
    if mode == "off":
        return False
    try:
        import sae_lens  # noqa: F401
        import torch  # noqa: F401
        return True
    except ImportError:
        if mode == "on":
            raise
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--m", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="run our steps eagerly (default: mx.compile, the library default)")
    p.add_argument("--variants", default="topk:sparse,topk:dense,batchtopk:sparse,batchtopk:dense")
    p.add_argument("--torch-threads", default="1,2", help="SAELens runs at each of these")
    p.add_argument("--peers", choices=("auto", "on", "off"), default="auto",
                   help="SAELens comparison (needs .venv-peers; see benchmarks/setup_peers.sh)")
    args = p.parse_args()
    keep_freed_memory()  # the trainer does this anyway; done first so SAELens runs under it too
    env = environment_record()
    site = Site(0, "resid_post")
    x = np.random.default_rng(0).standard_normal((4 * args.batch, args.d)).astype(np.float32)
    src = ArraySource({site: x})
    ours = [tuple(v.split(":")) for v in args.variants.split(",")]
    peers = {}
    if _peers_available(args.peers):
        import sae_lens
        import torch
        peers = {a: _SAELens(a, x, args) for a in ("topk", "batchtopk")}
        env.update(sae_lens=sae_lens.__version__, torch=torch.__version__,
                   torch_threads=torch.get_num_threads())
    times: dict[str, list[float]] = {}
    loads = []
    for _ in range(args.rounds):  # interleaved: every variant sees the same load drift
        for arch, dec in ours:
            times.setdefault(f"ours:{arch}:{dec}", []).extend(_ours_round(src, site, arch, dec, args))
        for arch, tr in peers.items():
            for th in (int(t) for t in args.torch_threads.split(",")):
                times.setdefault(f"saelens:{arch}:t{th}", []).extend(tr.round(args.steps, th))
        loads.append(os.getloadavg()[0])
    peak = max(env["matmul_peak_gflops"], matmul_gflops(n=env["matmul_peak_n"], repeats=5).gflops)
    results = {name: _summary(name, t, args, name.split(":")[2] if name.startswith("ours")
                              else "dense", peak) for name, t in times.items()}
    ratios = {}
    for arch in peers:
        sl = min((r for n, r in results.items() if n.startswith(f"saelens:{arch}:")),
                 key=lambda r: r["step_median_s"])  # SAELens at its faster thread count
        for name, r in results.items():
            if name.startswith(f"ours:{arch}:"):
                ratios[f"{name}/{sl['variant']}"] = {
                    "median": round(r["tokens_per_s_median"] / sl["tokens_per_s_median"], 2),
                    "best": round(r["tokens_per_s_best"] / sl["tokens_per_s_best"], 2)}
    print(json.dumps({"benchmark": "sae_train", "d": args.d, "m": args.m, "k": args.k,
                      "batch": args.batch, "rounds": args.rounds, "steps_per_round": args.steps,
                      "compile": args.compile, "peak_gflops_used": round(peak, 1),
                      "flops_formula": {"dense": "10*d*m", "sparse": "2*d*m + 10*k*d"},
                      "saelens_timed": "SAETrainer.step(batch): TrainingSAE.training_forward_pass"
                                       " + backward + clip_grad_norm + Adam + LR scheduler",
                      "loadavg_1m_per_round": [round(v, 2) for v in loads],
                      "results": list(results.values()), "ratio_ours_over_saelens": ratios,
                      **env}))


if __name__ == "__main__":
    main()
