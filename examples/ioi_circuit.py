"""The demo as a script: transcoders -> attribution graph -> circuit -> patching check -> figure.

Run: .venv/bin/python examples/ioi_circuit.py [--tokens 393216] [--out out/examples]
"""

import argparse
from pathlib import Path

import attribution  # noqa: F401  (first: loads the fast BLAS on Linux)
from attribution import Site, build_graph, load_model, logit_diff
from attribution.replacement import ReplacementModel
from circuits import organisms, tasks
from circuits.pipeline.corpus import organism_texts
from circuits.pipeline.feature_faithfulness import feature_faithfulness
from circuits.prune import prune
from sae import TrainConfig, train_on_model
from viz.render import render

p = argparse.ArgumentParser()
p.add_argument("--tokens", type=int, default=3 * 2 ** 17)
p.add_argument("--out", type=Path, default=Path("out/examples"))
args = p.parse_args()

model = load_model(organisms.path("ioi"))
cfg = TrainConfig(kind="transcoder", arch="topk", width=512, k=12, total_tokens=args.tokens,
                  batch_tokens=1024, sites=tuple(Site(l, "mlp_in") for l in range(model.n_layers)))
transcoders = train_on_model(model, organism_texts(model, 6000), cfg, context_len=64).dictionaries
ex = tasks.get("ioi").generate(1, seed=0, tokenizer=model.tokenizer)
clean, corrupt, io, s = ex.clean[0], ex.corrupted[0], int(ex.answer[0]), int(ex.wrong[0])
graph = build_graph(model, transcoders, clean, targets=logit_diff(model, io, s))
circuit = prune(graph, node_threshold=0.8, edge_threshold=0.98)
check = feature_faithfulness(ReplacementModel(model, transcoders), clean, circuit.graph,
                             lambda logits: logits[io] - logits[s], "counterfactual", corrupt)
args.out.mkdir(parents=True, exist_ok=True)
render(circuit, args.out / "ioi_circuit.svg")
print(f"circuit: {int(circuit.node_mask.sum())} of {len(graph.nodes)} nodes; "
      f"replacement {circuit.scores.pruned.replacement:.3f}, "
      f"completeness {circuit.scores.pruned.completeness:.3f}, "
      f"faithfulness {check.faithfulness:.3f} -> {args.out / 'ioi_circuit.svg'}")
