"""Train SAEs on any local mlx-lm model and your own text, then evaluate and save them.

Run:
  .venv/bin/python examples/train_saes_on_your_model.py --model PATH/TO/mlx-model \
      --text my_corpus.txt [--layers 4,8] [--arch topk] [--width 4096] [--k 32] [--tokens 2000000]
Text files: .txt (one document per line), .jsonl / .parquet (a "text" column).
Without --model it trains on the shipped ioi organism and its corpus.
"""

import argparse
from pathlib import Path

import attribution  # noqa: F401  (first: loads the fast BLAS on Linux)
from attribution import Site, load_model
from circuits import organisms
from circuits.pipeline.corpus import organism_texts
from circuits.pipeline.dictionaries import evaluate_dictionaries
from sae import TrainConfig, save_dictionaries, train_on_model
from sae.data.harvest import read_texts

p = argparse.ArgumentParser()
p.add_argument("--model", default=None, help="local mlx-lm model directory")
p.add_argument("--text", nargs="*", default=[], help=".txt/.jsonl/.parquet files")
p.add_argument("--layers", default=None, help="comma list (default: every layer)")
p.add_argument("--site", default="resid_post")
p.add_argument("--arch", default="topk")
p.add_argument("--width", type=int, default=1024)
p.add_argument("--k", type=int, default=16)
p.add_argument("--tokens", type=int, default=2 ** 18)
p.add_argument("--out", type=Path, default=Path("out/my_saes"))
args = p.parse_args()

model = load_model(args.model or organisms.path("ioi"))
layers = range(model.n_layers) if args.layers is None else [int(x) for x in args.layers.split(",")]
texts = [t for f in args.text for t in read_texts(f)] if args.text else organism_texts(model, 6000)
cfg = TrainConfig(kind="sae", arch=args.arch, width=args.width, k=args.k, total_tokens=args.tokens,
                  batch_tokens=2048, sites=tuple(Site(l, args.site) for l in layers))
result = train_on_model(model, texts, cfg, context_len=min(128, model.max_context or 128),
                        callback=lambda pr: print(f"step {pr.step}/{pr.total_steps}", end="\r"))
save_dictionaries(dict(zip(result.names, result.dictionaries)), args.out)
quality = evaluate_dictionaries(model, {d.in_site: d for d in result.dictionaries},
                                corpus=args.text[0] if args.text else None)
print()
print(quality[[c for c in ("name", "l0", "fvu", "dead_frac", "ce_recovered") if c in quality]].to_string(index=False))
print(f"saved to {args.out}")
