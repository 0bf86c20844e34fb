"""Benchmark: exact attribution graphs at GPT-2-small to 2B scale, on this machine.

Algorithm:
  1. Models: random weights at the published configs of GPT-2 small, Qwen3-0.6B,
     Llama-3.2-1B (bf16 checkpoint, and a 4-bit one) and Gemma-2-2B (bf16
     checkpoint), built once with mlx-lm's model classes into ``--cache``
     (``attribution.attribute.synthetic``), with a word-level tokenizer of the
     published vocabulary size. ``load_model`` computes in float32 (a bf16
     checkpoint is cast on load; 4-bit weights stay packed).
  2. Before a model is loaded, its float32 parameters plus the dictionaries
     (U·2·m·d·4 bytes) are compared with MemAvailable; if they cannot fit, the
     model is recorded as refused instead of risking the kernel's OOM killer.
  3. Dictionaries: a random transcoder on every layer, width ``--width``
     (16,384), encoder biases calibrated on a separate 64-token prompt so that
     about ``--l0`` (50) latents fire per layer and token; stored in float32,
     or in bfloat16 where float32 ones would leave less than ``GRAPH_HEADROOM``
     (6 GiB) of the usable memory for the graph itself (``--dict-dtype auto``,
     recorded; Gemma-2-2B: 10.5 GB of float32 weights + 7.8 GB of float32
     transcoders leave too little on 24 GiB, as the preflight then says).
  4. Each (model, prompt length) runs in its own worker process, so peak RSS
     is that run's: load time, dictionary build time, forward tokens/s (plain
     forward of one 128-token prompt, median of 3), then ``build_graph`` with
     ``GraphConfig.large_model()`` (7,500 features, 1,024 edges per target,
     64 targets per pass up to 8,192 batch tokens) on a seeded random prompt:
     wall time, backward passes, the preflight's estimate, peak RSS (getrusage)
     and its growth over the post-load RSS (the high-water mark is reset after
     loading), nodes, edges, the dropped share of |weight|, and
     ``circuits.prune.prune`` time (node 0.8, edge 0.98). A ``GraphMemoryError``
     from the preflight is recorded as a clean refusal; a worker killed by a
     signal is recorded as killed.
     With ``--dicts clt`` the dictionaries are one ReLU cross-layer transcoder
     over every layer instead (``sparse_clt``, width per layer, same L0).
  5. The pipeline phase (``--phases pipeline``, its own worker per model; skipped for a
     quantized model, whose CPU forward is ~30x slower): load,
     forward tokens/s as above, then the user's dictionary path at the middle
     layer: ``harvest_store`` of ``--harvest-tokens`` tokens of a random-word
     corpus (contexts of 128, float32 shards) at mlp_in (harvest tokens/s, the
     forwards included), and ``train_on_store`` of a TopK SAE of width
     ``--width`` (k = 50) for ``--train-steps`` steps of ``--train-batch``
     tokens, read back through the store's shuffle buffer: tokens/s over the
     whole run and at steady state (between the first and last progress
     callbacks, so ``mx.compile`` and the first batch are excluded).
  6. One JSON line per run (appended to ``--out``) with its ``phase``, the
     1-minute load average (the machine is shared) and
     ``attribution.perf.environment_record()`` (BLAS, measured matmul peak).

Usage: .venv/bin/python benchmarks/scale.py [--models llama-3.2-1b ...] [--lengths 32 128 512]
       [--phases graph pipeline] [--dicts transcoders clt]
       [--out benchmarks/results/scale.jsonl] [--cache /tmp/mlx-circuits-scale]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the ``attribution`` package; drop that entry before importing the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import attribution  # noqa: I001,F401  (BLAS preload: before mlx)

MODELS = {
    # name: (published config, checkpoint dtype, quantization bits)
    "gpt2-small": ("gpt2-small", "float32", None),
    "qwen3-0.6b": ("qwen3-0.6b", "bfloat16", None),
    "llama-3.2-1b": ("llama-3.2-1b", "bfloat16", None),
    "llama-3.2-1b-4bit": ("llama-3.2-1b", "bfloat16", 4),
    "gemma-2-2b": ("gemma-2-2b", "bfloat16", None),
    # issue 15's long-prompt model: d 512, 8 layers (Llama-style; run with --width 4096
    # --lengths 2048 --phases graph)
    "mid-d512": ("llama-3.2-1b", "float32", None),
}
OVERRIDES = {
    "mid-d512": {"hidden_size": 512, "num_hidden_layers": 8, "intermediate_size": 2048,
                 "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64,
                 "vocab_size": 32000, "rope_scaling": None},
}
"""Config fields changed from the published base, for models that are not a published release."""
ROOT = Path(__file__).resolve().parents[1]
GRAPH_HEADROOM = 6 * 2**30
"""Usable memory (bytes) float32 dictionaries must leave for the graph (``--dict-dtype auto``)."""


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:  # Linux >= 4.0: reset the high-water mark, so the peak below is the graph's own
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def model_dir(cache: Path, name: str) -> Path:
    """The model's directory in ``cache``, built on first use."""
    from attribution.attribute.synthetic import make_config_model, published_config

    base, dtype, bits = MODELS[name]
    path = cache / name
    if not (path / "config.json").exists():
        make_config_model(published_config(base, **OVERRIDES.get(name, {})), path, seed=0,
                          dtype=dtype, bits=bits)
    return path


def resident_bytes(name: str, width: int, dict_itemsize: int = 4, dicts: str = "transcoders") -> int:
    """float32 parameters (4-bit: about 0.6 bytes each) + dictionaries, before loading."""
    from attribution.attribute.synthetic import param_count, published_config

    base, _, bits = MODELS[name]
    cfg = published_config(base, **OVERRIDES.get(name, {}))
    n_layers = cfg.get("num_hidden_layers") or cfg.get("n_layer")
    d = cfg.get("hidden_size") or cfg.get("n_embd")
    per_param = 4 if bits is None else 0.6
    # a CLT's decoders: one write vector per latent and target layer at or above its own
    n_dec = n_layers * (n_layers + 1) // 2 if dicts == "clt" else n_layers
    return int(param_count(cfg) * per_param + (n_layers + n_dec) * width * d * dict_itemsize)


def _forward_rate(model) -> float:
    """Tokens/s of a plain forward of one 128-token prompt (median of 3, after a warm-up;
    a quantized model, whose CPU kernel is ~30x slower: one timed 32-token forward)."""
    import mlx.core as mx
    import numpy as np

    from attribution.attribute.synthetic import random_prompt

    n, reps = (32, 2) if getattr(model, "quantized", False) else (128, 4)
    toks = mx.array([random_prompt(model.vocab_size, n, seed=7)])
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        mx.eval(model.module(toks))
        times.append(time.perf_counter() - t0)
    return round(n / float(np.median(times[1:])), 1)


def _load(path: str):
    """The model, and the record's load time, compute dtype and quantization."""
    from attribution import load_model

    t0 = time.perf_counter()
    model = load_model(path)
    return model, {"load_s": round(time.perf_counter() - t0, 2), "param_dtype": str(model.dtype),
                   "quantized": bool(getattr(model, "quantized", False))}


def pipeline_worker(args: dict) -> dict:
    """Harvest into an activation store, then train an SAE from it (module docstring, step 5)."""
    import shutil
    import tempfile

    import numpy as np

    from attribution.sites import Site
    from attribution.tokenizer import SPECIAL_TOKENS
    from sae.data.store import HarvestConfig, harvest_store
    from sae.train.config import TrainConfig
    from sae.train.from_model import train_on_store

    model, rec = _load(args["path"])
    rec["forward_tokens_per_s"] = _forward_rate(model)
    site = Site(model.n_layers // 2, "mlp_in")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(len(SPECIAL_TOKENS), model.vocab_size)]
    n_words = int(args["harvest_tokens"] * 1.1) + 1024
    texts = [" ".join(rng.choice(words, 512)) for _ in range(n_words // 512 + 1)]
    work = Path(tempfile.mkdtemp(prefix="scale-store-", dir=args.get("tmp")))
    try:
        ctx = min(128, getattr(model, "max_context", None) or 128)
        hcfg = HarvestConfig(sites=(site,), tokens=args["harvest_tokens"], context_len=ctx,
                             batch_size=8, shard_tokens=8192)
        t0 = time.perf_counter()
        man = harvest_store(model, texts, work / "store", hcfg)
        dt = time.perf_counter() - t0
        rec.update(site=str(site), harvest_tokens=int(man["n_tokens"]), harvest_s=round(dt, 2),
                   harvest_tokens_per_s=round(man["n_tokens"] / dt, 1))
        steps, batch = args["train_steps"], args["train_batch"]
        tcfg = TrainConfig(kind="sae", arch="topk", sites=(site,), width=args["width"], k=50,
                           total_tokens=steps * batch, batch_tokens=batch, warmup_steps=10,
                           log_every=max(1, steps // 8))
        ticks: list = []
        t0 = time.perf_counter()
        res = train_on_store(work / "store", [tcfg], model=model,
                             callback=lambda p: ticks.append((p.step, time.perf_counter())))
        dt = time.perf_counter() - t0
        (s0, t_a), (s1, t_b) = ticks[0], ticks[-1]
        last = [h for h in res.history if h.get("step") == res.steps] or res.history[-1:]
        rec.update(train_arch="topk", train_k=50, train_width=args["width"], train_steps=res.steps,
                   train_batch_tokens=batch, train_s=round(dt, 2),
                   train_tokens_per_s=round(res.steps * batch / dt, 1),
                   train_steady_tokens_per_s=round((s1 - s0) * batch / (t_b - t_a), 1),
                   train_final_metrics={k: v for k, v in (last[0] if last else {}).items()
                                        if isinstance(v, (int, float))})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rec["status"] = "ok"
    return rec


def worker(args: dict) -> dict:
    """One (model, length) run in this process (module docstring, steps 3-4)."""
    import mlx.core as mx

    from attribution import GraphConfig, build_graph
    from attribution.attribute.preflight import estimate_exact_memory
    from attribution.attribute.synthetic import random_prompt, sparse_clt, sparse_transcoders
    from attribution.graph.errors import GraphMemoryError
    from attribution.replacement import ReplacementModel
    from circuits.prune import prune

    model, rec = _load(args["path"])
    t0 = time.perf_counter()
    make = sparse_clt if args.get("dicts") == "clt" else sparse_transcoders
    dicts = make(model, args["width"], args["l0"], random_prompt(model.vocab_size, 64, seed=99),
                 dtype=getattr(mx, args.get("dict_dtype", "float32")))
    dicts = dicts if isinstance(dicts, list) else [dicts]
    rec["dict_dtype"] = args.get("dict_dtype", "float32")
    rec["dict_build_s"] = round(time.perf_counter() - t0, 2)
    rec["forward_tokens_per_s"] = _forward_rate(model)
    n = args["n_tokens"]
    ids = random_prompt(model.vocab_size, n, seed=n)
    cfg = GraphConfig.large_model()
    rec["config"] = cfg.to_dict()
    rm = ReplacementModel(model, dicts)
    rec["peak_reset"] = _reset_peak()
    base = _rss()
    rec["rss_after_load_gb"] = round(base / 2**30, 3)
    t0 = time.perf_counter()
    log = args.get("log")

    def progress(stage, done, total):
        if log:  # a line per pass, so a long run can be followed (tail -f)
            with open(log, "a") as f:
                f.write(f"{args['n_tokens']} tokens {time.perf_counter() - t0:8.1f}s {done}/{total}\n")

    import attribution.attribute.build as build_mod

    seconds: dict = {}
    exact_rows = build_mod.exact_rows

    def timed_rows(*a, **kw):  # the build's own phase timings (VJPs, sparsification, ordering)
        rows = exact_rows(*a, **kw)
        seconds.update(rows.seconds or {})
        return rows

    build_mod.exact_rows = timed_rows
    try:
        g = build_graph(rm, None, ids, config=cfg, progress=progress)
    except GraphMemoryError as exc:
        rec.update(status="refused", reason=str(exc), graph_wall_s=round(time.perf_counter() - t0, 2))
        return rec
    rec["graph_wall_s"] = round(time.perf_counter() - t0, 2)
    rec["phase_seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    md = g.metadata
    state = rm.clean(ids)  # the estimate the preflight made, for the record
    from attribution.attribute.nodes import make_node_set
    nodes = make_node_set(state, rm.layers, cfg.feature_threshold, int(g.type_mask("logit").sum()))
    est = estimate_exact_memory(rm, n, cfg, nodes, nodes.n_logits)
    del state, nodes
    kept = float(abs(g.adjacency).sum())
    rec.update(
        status="ok", backward_passes=md["backward_passes"], n_active_features=md["n_active_features"],
        l0_per_token_layer=round(md["n_active_features"] / (n * model.n_layers), 1),
        n_nodes=g.n_nodes, n_features=int(g.type_mask("feature").sum()), n_edges=g.n_edges,
        dropped_share=round(float(g.dropped_mass.sum()) / max(kept + float(g.dropped_mass.sum()), 1e-30), 4),
        peak_rss_gb=round(peak / 2**30, 3), graph_rss_growth_gb=round((peak - base) / 2**30, 3),
        preflight_estimate_gb=round(est.peak_bytes / 2**30, 3),
        preflight_ratio=round(est.peak_bytes / max(peak - base, 1), 3))
    t0 = time.perf_counter()
    circuit = prune(g, 0.8, 0.98)
    rec["prune_s"] = round(time.perf_counter() - t0, 2)
    rec["circuit_nodes"] = int(circuit.graph.n_nodes)
    rec["circuit_edges"] = int(circuit.graph.n_edges)
    return rec


def run_one(name: str, path: Path, n_tokens: int | None, args, dict_dtype: str, phase: str = "graph",
            dicts: str = "transcoders") -> dict:
    """``worker`` in a child process; a signal death is recorded, never hidden."""
    job = {"path": str(path), "n_tokens": n_tokens, "width": args.width, "l0": args.l0,
           "log": str(args.log) if args.log else None, "dict_dtype": dict_dtype, "phase": phase,
           "dicts": dicts, "harvest_tokens": args.harvest_tokens, "train_steps": args.train_steps,
           "train_batch": args.train_batch}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)],
                          capture_output=True, text=True)
    rec = {"model": name, "phase": phase, "width": args.width, "total_s": round(time.perf_counter() - t0, 1)}
    if phase == "graph":
        rec.update(n_tokens=n_tokens, l0_target=args.l0, dicts=dicts)
    if proc.returncode == 0 and proc.stdout.strip():
        rec.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    elif proc.returncode < 0:
        rec.update(status="killed", signal=-proc.returncode, stderr=proc.stderr[-500:])
    else:
        rec.update(status="error", returncode=proc.returncode, stderr=proc.stderr[-1500:])
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=[m for m in MODELS if m not in OVERRIDES],
                    choices=list(MODELS))
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--width", type=int, default=16384)
    ap.add_argument("--l0", type=float, default=50.0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/mlx-circuits-scale"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.jsonl")
    ap.add_argument("--dict-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="dictionary weights; auto: float32 unless they leave under 6 GiB for the graph")
    ap.add_argument("--log", type=Path, default=None, help="append one progress line per backward pass")
    ap.add_argument("--phases", nargs="+", default=["graph", "pipeline"], choices=["graph", "pipeline"])
    ap.add_argument("--dicts", nargs="+", default=["transcoders"], choices=["transcoders", "clt"],
                    help="graph phase: per-layer transcoders and/or one cross-layer transcoder")
    ap.add_argument("--harvest-tokens", type=int, default=16384)
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--train-batch", type=int, default=1024)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        job = json.loads(args.worker)
        print(json.dumps(pipeline_worker(job) if job.get("phase") == "pipeline" else worker(job)), flush=True)
        return 0
    from attribution.graph.memory import available_memory_bytes
    from attribution.perf import environment_record

    env = environment_record()
    args.cache.mkdir(parents=True, exist_ok=True)
    runs = [(phase, dicts, n) for phase in args.phases
            for dicts in (args.dicts if phase == "graph" else ["-"])
            for n in (args.lengths if phase == "graph" else [None])]
    for name in args.models:
        for phase, dicts, n in runs:
            avail = available_memory_bytes()
            kind = dicts if phase == "graph" else "transcoders"
            dict_dtype = args.dict_dtype
            if dict_dtype == "auto":  # bfloat16 dictionaries only where float32 ones leave too little
                f32 = resident_bytes(name, args.width, 4, kind)
                dict_dtype = "float32" if f32 + GRAPH_HEADROOM <= 0.8 * avail else "bfloat16"
            need = resident_bytes(name, args.width, 4 if dict_dtype == "float32" else 2, kind)
            if phase == "pipeline" and MODELS[name][2] is not None:
                rec = {"model": name, "phase": phase, "width": args.width, "status": "skipped",
                       "reason": "MLX's CPU quantized matmul (single-threaded, ~30x slower than "
                                 "float32) makes harvesting hours long; load_model(dequantize=True) "
                                 "gives the float32 model's figures"}
            elif phase == "graph" and need > 0.8 * avail:
                rec = {"model": name, "phase": phase, "n_tokens": n, "width": args.width, "dicts": dicts,
                       "status": "refused",
                       "reason": f"model + dictionaries need about {need / 2**30:.1f} GiB resident but "
                                 f"only {avail / 2**30:.1f} GiB is available now"}
            else:
                rec = run_one(name, model_dir(args.cache, name), n, args, dict_dtype, phase, dicts)
            rec.update(benchmark="attribution.scale", load_average_1m=os.getloadavg()[0], environment=env,
                       time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            line = json.dumps(rec, sort_keys=True)
            print(line, flush=True)
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
