"""Architecture sweep on one site of the ioi organism, with an L0-FVU Pareto plot.

Every architecture trains from the same activation stream in one run (one model
forward per batch feeds them all).
Run: .venv/bin/python examples/compare_dictionaries.py [--tokens 262144] [--out out/examples]
"""

import argparse
from pathlib import Path

import attribution  # noqa: F401  (first: loads the fast BLAS on Linux)
from attribution import Site, load_model
from circuits import organisms
from circuits.pipeline.corpus import organism_texts
from circuits.pipeline.dictionaries import evaluate_dictionaries
from sae import TrainConfig, train_on_model
from viz.plots import l0_fvu_pareto

p = argparse.ArgumentParser()
p.add_argument("--tokens", type=int, default=2 ** 18)
p.add_argument("--site", default="L2.resid_post")
p.add_argument("--out", type=Path, default=Path("out/examples"))
args = p.parse_args()

model = load_model(organisms.path("ioi"))
site = Site.parse(args.site)
common = dict(kind="sae", width=512, total_tokens=args.tokens, batch_tokens=1024, sites=(site,))
configs = [TrainConfig(arch="relu", name="relu", **common),
           *[TrainConfig(arch=a, k=k, name=f"{a}-k{k}", **common)
             for a in ("topk", "batchtopk", "matryoshka") for k in (8, 24)],
           TrainConfig(arch="jumprelu", name="jumprelu", threshold_init=0.3, **common),
           TrainConfig(arch="gated", name="gated", **common)]
result = train_on_model(model, organism_texts(model, 6000), configs, context_len=64)
dicts = dict(zip(result.names, result.dictionaries))
rows = evaluate_dictionaries(model, dicts)
rows["arch"] = [n.split("/")[0].split("-")[0] for n in rows["name"]]
args.out.mkdir(parents=True, exist_ok=True)
l0_fvu_pareto(rows[["name", "arch", "l0", "fvu"]], path=args.out / "pareto.svg")
rows.to_csv(args.out / "compare_dictionaries.csv", index=False)
print(rows[[c for c in ("name", "l0", "fvu", "dead_frac", "ce_recovered") if c in rows]].to_string(index=False))
print(f"Pareto plot: {args.out / 'pareto.svg'}")
