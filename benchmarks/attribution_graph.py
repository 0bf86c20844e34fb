"""Benchmark: exact attribution-graph construction time, passes, memory and edges.

Algorithm:
  1. Models: the ``ioi`` organism at circuits/organisms/shipped/ioi when it
     exists (lengths beyond its context are skipped there), and always a tiny
     random llama (d_model 128, 4 layers, context 512, seeded), built once
     into a temporary directory.
  2. Dictionaries: random per-layer transcoders (``attribution.testing_dicts``)
     of ``--width`` latents with a negative encoder bias (sparse, L0 reported).
  3. For each prompt length (default 16, 64, 256): a seeded random prompt
     starting with BOS; one untimed warm-up graph at the shortest length;
     then ``build_graph(method="exact")`` timed with time.perf_counter.
  4. One JSON line per length: wall seconds, backward passes, targets,
     nodes, edges kept, dropped mass, peak RSS (getrusage, process-wide,
     monotone) and MLX peak memory (reset per run), the 1-minute load
     average (the machine is shared), plus ``attribution.perf.environment_record()``.

Usage: .venv/bin/python benchmarks/attribution.py [--lengths 16 64 256] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the ``attribution`` package; drop that entry before importing the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import attribution  # noqa: I001,F401  (BLAS preload: before mlx)
import mlx.core as mx
import numpy as np

from attribution import GraphConfig, build_graph, load_model
from attribution.perf import environment_record
from attribution.testing_dicts import random_transcoders
from attribution.tiny import DEFAULT_WORDS, make_tiny_model

IOI = Path(__file__).resolve().parents[1] / "circuits" / "organisms" / "shipped" / "ioi"


def _models(tmp: Path) -> list:
    """(model, name) pairs: the ioi organism when shipped, and always the tiny random llama
    (its 512-token context covers every length; the organism's context may not)."""
    out = []
    if (IOI / "config.json").exists():
        out.append((load_model(IOI), "organism:ioi"))
    path = make_tiny_model("llama", tmp / "llama128", seed=0, hidden_size=128, num_hidden_layers=4,
                           intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=512)
    out.append((load_model(path), "tiny-random-llama(d=128,L=4)"))
    return out


def _prompt(model, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, min(model.vocab_size, 4 + len(DEFAULT_WORDS)), size=n).tolist()
    bos = getattr(model.tokenizer, "bos_token_id", None)
    if bos is not None:
        ids[0] = int(bos)
    return ids


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_one(model, dicts, n: int, cfg: GraphConfig) -> dict:
    toks = _prompt(model, n, seed=n)
    if hasattr(mx, "reset_peak_memory"):
        mx.reset_peak_memory()
    t0 = time.perf_counter()
    g = build_graph(model, dicts, toks, config=cfg)
    wall = time.perf_counter() - t0
    md = g.metadata
    return {
        "n_tokens": n, "wall_s": round(wall, 3), "backward_passes": md["backward_passes"],
        "n_targets": int(g.type_mask("feature").sum() + g.type_mask("logit").sum()),
        "n_nodes": g.n_nodes, "n_features": int(g.type_mask("feature").sum()),
        "l0_per_token_layer": round(md["n_active_features"] / (n * model.n_layers), 2),
        "edges_kept": g.n_edges, "dropped_mass_total": float(g.dropped_mass.sum()),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "mlx_peak_mb": round(mx.get_peak_memory() / 2**20, 1) if hasattr(mx, "get_peak_memory") else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--width", type=int, default=512, help="latents per transcoder")
    ap.add_argument("--bias", type=float, default=-2.0, help="encoder bias (sparsity)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--edges-per-target", type=int, default=256)
    ap.add_argument("--max-feature-nodes", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="append JSON lines here too")
    args = ap.parse_args(argv)
    env = environment_record()
    cfg = GraphConfig(batch_size=args.batch_size, edges_per_target=args.edges_per_target,
                      max_feature_nodes=args.max_feature_nodes)
    with tempfile.TemporaryDirectory() as tmp:
        for model, name in _models(Path(tmp)):
            dicts = random_transcoders(model, args.width, seed=0, bias=args.bias)
            build_graph(model, dicts, _prompt(model, min(args.lengths), 0), config=cfg)  # warm-up
            for n in args.lengths:
                if model.max_context is not None and n > model.max_context:
                    continue  # recorded on the model whose context fits
                rec = {"benchmark": "attribution.build_graph", "method": "exact", "model": name,
                       "dictionaries": f"random per-layer transcoders width={args.width} bias={args.bias}",
                       "config": cfg.to_dict(), **run_one(model, dicts, n, cfg),
                       "load_average_1m": os.getloadavg()[0], "environment": env}
                line = json.dumps(rec, sort_keys=True)
                print(line, flush=True)
                if args.out is not None:
                    with open(args.out, "a") as f:
                        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
