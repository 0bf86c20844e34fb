"""Profile of one exact-graph backward pass at GPT-2-small shape (the issue's measurement).

The setting the issue measured at 2 s per pass: a random-weight model at GPT-2 small's
config (d=768, 12 layers, 12 heads), random per-layer transcoders of width 4,096 with
about 9 active latents per layer and token, 16 tokens, 64 targets per pass, 256 edges
kept per target.

Algorithm:
  1. Build the model (``make_config_model(published_config("gpt2-small"))``, cached in
     ``--cache``) and the transcoders (``sparse_transcoders``, calibrated to ``--l0``).
  2. One warm-up graph, then ``--repeats`` graphs with
     ``GraphConfig(batch_size=64, edges_per_target=256)`` and no feature budget; each
     build's own phase timings (``ExactRows.seconds``: the batched VJPs with the feature
     products, the sparsification, the influence ordering) and its pass count.
  3. Useful FLOPs of one pass, counted from the shapes: the VJP through the linearised
     model needs, per layer, the input gradients of the value and output projections
     (2·b·P·d·d each) and the frozen pattern's P×P product (2·b·H·P²·d_head); the feature
     products add 2·b·F·d over the F active features. GPT-2's fused ``c_attn`` executes
     the query and key columns too (their cotangents are zero), so the executed count
     is higher (``executed_flops_per_pass``). Both as a fraction of the float32 matmul
     peak measured in the same run (``attribution.perf``).
  4. Print one JSON line (appended to ``--out``): seconds per pass (median of repeats)
     and per phase, FLOPs per pass, the fraction of the peak, the 1-minute load average.

Usage: .venv/bin/python benchmarks/backward_profile.py [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import attribution  # noqa: I001,E402,F401  (BLAS preload: before mlx)

RESULTS = Path(_HERE) / "results" / "backward_profile.jsonl"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-tokens", type=int, default=16)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--l0", type=float, default=9.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--edges-per-target", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/mlx-circuits-backward-profile"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import attribution.attribute.build as build_mod
    from attribution import GraphConfig, build_graph, load_model
    from attribution.attribute.synthetic import (
        make_config_model,
        published_config,
        random_prompt,
        sparse_transcoders,
    )
    from attribution.perf import environment_record

    cfg_dict = published_config("gpt2-small", vocab_size=4096)
    path = args.cache / "gpt2-small-v4096"
    if not (path / "config.json").exists():
        make_config_model(cfg_dict, path, seed=0)
    model = load_model(path)
    dicts = sparse_transcoders(model, args.width, args.l0, random_prompt(model.vocab_size, 64, seed=99))
    ids = random_prompt(model.vocab_size, args.n_tokens, seed=args.n_tokens)
    cfg = GraphConfig(batch_size=args.batch_size, edges_per_target=args.edges_per_target)

    seen: list = []
    exact_rows = build_mod.exact_rows

    def timed_rows(*a, **kw):
        rows = exact_rows(*a, **kw)
        seen.append((rows.backward_passes, dict(rows.seconds or {})))
        return rows

    build_mod.exact_rows = timed_rows
    build_graph(model, dicts, ids, config=cfg)  # warm-up
    walls, per_pass, phases = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        g = build_graph(model, dicts, ids, config=cfg)
        walls.append(time.perf_counter() - t0)
        passes, secs = seen[-1]
        per_pass.append(secs["vjp"] / passes)
        phases.append(secs)
    build_mod.exact_rows = exact_rows

    d, n_layers, heads = model.d_model, model.n_layers, model.n_heads
    b, p = args.batch_size, args.n_tokens
    n_feat = int(g.metadata["n_active_features"])
    attn = 2 * b * heads * p * p * (d // heads)
    vjp_flops = n_layers * (2 * b * p * d * 2 * d + attn)
    executed = n_layers * (2 * b * p * d * 4 * d + attn)  # fused qkv: 3 d columns + output
    feat_flops = 2 * b * n_feat * d
    env = environment_record()
    med = statistics.median(per_pass)
    rec = {
        "benchmark": "attribution.backward_profile", "model": "gpt2-small config (vocab 4096)",
        "n_tokens": p, "width": args.width, "l0_target": args.l0,
        "l0_per_token_layer": round(n_feat / (p * n_layers), 1), "batch_size": b,
        "edges_per_target": args.edges_per_target, "backward_passes": seen[-1][0],
        "graph_wall_s_median": round(statistics.median(walls), 3),
        "vjp_s_per_pass_median": round(med, 4),
        "phase_seconds_median": {k: round(statistics.median(ph[k] for ph in phases), 3)
                                 for k in phases[0]},
        "flops_per_pass": vjp_flops + feat_flops,
        "peak_fraction": round((vjp_flops + feat_flops) / med / 1e9 / env["matmul_peak_gflops"], 4),
        "executed_flops_per_pass": executed + feat_flops,
        "executed_peak_fraction": round((executed + feat_flops) / med / 1e9
                                        / env["matmul_peak_gflops"], 4),
        "issue_baseline_s_per_pass": 2.0,
        "load_average_1m": os.getloadavg()[0], "environment": env,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    line = json.dumps(rec, sort_keys=True)
    print(line, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
