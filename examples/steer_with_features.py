"""Steer the ioi organism with one transcoder feature and watch the answer change.

1. Train small transcoders on the organism (or load them with --dicts).
2. Build the IOI graph and take the feature with the largest direct effect on the
   logit difference.
3. Ablate it (constrained: direct effect only; iterative: effects propagate), then
   generate with it clamped high.
Run: .venv/bin/python examples/steer_with_features.py [--tokens 131072]
"""

import argparse

import attribution  # noqa: F401  (first: loads the fast BLAS on Linux)
import numpy as np
from attribution import FeatureIntervention, Site, build_graph, generate, load_model, logit_diff, steer
from circuits import organisms, tasks
from circuits.pipeline.corpus import organism_texts
from sae import TrainConfig, load_dictionaries, train_on_model

p = argparse.ArgumentParser()
p.add_argument("--tokens", type=int, default=2 ** 17)
p.add_argument("--dicts", default=None, help="a `circuits train` output to reuse")
args = p.parse_args()

model = load_model(organisms.path("ioi"))
if args.dicts:
    dicts = list(load_dictionaries(args.dicts).values())
else:
    cfg = TrainConfig(kind="transcoder", arch="topk", width=256, k=8, total_tokens=args.tokens,
                      batch_tokens=1024, sites=tuple(Site(l, "mlp_in") for l in range(model.n_layers)))
    dicts = train_on_model(model, organism_texts(model, 3000), cfg, context_len=64).dictionaries
ex = tasks.get("ioi").generate(1, seed=3, tokenizer=model.tokenizer)
clean, io, s = ex.clean[0], int(ex.answer[0]), int(ex.wrong[0])
g = build_graph(model, dicts, clean, targets=logit_diff(model, io, s))
edges = g.edges()
feat = edges[edges["source"].str.startswith("feat:") & edges["target"].str.startswith("logit:")]
top = feat.iloc[np.argmax(np.abs(feat["weight"].to_numpy()))]
_, layer, pos, f = top["source"].split(":")
layer, pos, f = int(layer), int(pos), int(f)
print(f"prompt: {model.tokenizer.decode(clean, skip_special_tokens=True)!r}")
print(f"strongest direct feature: L{layer} #{f} at pos {pos}, edge {top['weight']:+.3f}")
for mode in ("constrained", "iterative"):
    r = steer(model, dicts, clean, [FeatureIntervention(layer, f, "ablate", positions=[pos])], mode=mode)
    before = float(r.clean_logits[-1, io] - r.clean_logits[-1, s])
    after = float(r.logits[-1, io] - r.logits[-1, s])
    print(f"ablate ({mode}): logit diff {before:.3f} -> {after:.3f}")
out = generate(model, dicts, clean, [FeatureIntervention(layer, f, "scale", 5.0, positions=[pos])], n_tokens=3)
print(f"generated with the feature x5: {out.text!r}")
