"""Seeded synthetic circuits for the viz tests (no model needed)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from attribution.graph import ErrorNode, FeatureNode, Graph, LogitNode, TokenNode

TOKENS = ["<bos>", "When", " Mary", " and", " John", " went", " to", " the", " store", ",", " John", " gave"]
WORDS = ["name mover", "duplicate token", "previous token", "induction", "S-inhibition", "subject",
         "'Mary' say", "comma", "store/shop", "gave/give", "article", "pronoun", "location", "verb past"]


def make_circuit(n_layers: int = 4, n_pos: int = 6, per_layer: int = 5, n_errors: int = 3, seed: int = 0,
                 labels: bool = True, fan_in: int = 3, focus: int = 0) -> Graph:
    """A random layered circuit: ``n_pos`` tokens, ``per_layer`` features per layer,
    a few error nodes, two logits (one a vocabulary logit, one ``logit_diff``) and
    edges only upward, ``fan_in`` into each node. ``focus`` > 0 puts features only at
    the last ``focus`` positions (crowded cells, like real circuits). About
    5 + 4*5 + 3 + 2 = 30 nodes with the defaults."""
    rng = np.random.default_rng(seed)
    keys: list = [TokenNode(p, 100 + p) for p in range(n_pos)]
    tok = [TOKENS[p % len(TOKENS)] for p in range(n_pos)]
    for layer in range(n_layers):
        lo = n_pos - focus if focus else 0
        pos = np.sort(rng.choice(np.arange(lo, n_pos), size=per_layer, replace=True))
        used = set()
        for p in pos.tolist():
            f = int(rng.integers(0, 16384))
            while (p, f) in used:
                f += 1
            used.add((p, f))
            keys.append(FeatureNode(layer, p, f))
    err_layers = rng.choice(n_layers, size=n_errors, replace=False)
    keys += [ErrorNode(int(l), n_pos - 1) for l in err_layers]
    keys += [LogitNode(n_pos - 1, 2001), LogitNode(n_pos - 1, -1, "logit_diff")]
    n = len(keys)
    layer_of = np.array([-1 if isinstance(k, TokenNode) else n_layers if isinstance(k, LogitNode) else k.layer
                         for k in keys])
    a = sp.lil_matrix((n, n))
    for t in range(n):
        below = np.flatnonzero(layer_of < layer_of[t])
        if below.size == 0:
            continue
        for s in rng.choice(below, size=min(fan_in, below.size), replace=False):
            a[t, s] = float(rng.normal() * rng.choice([0.1, 1.0, 3.0]))
    act = np.abs(rng.normal(size=n)) * 3
    token = [tok[k.pos] if isinstance(k, TokenNode) else (" Mary" if isinstance(k, LogitNode) else "")
             for k in keys]
    label = [WORDS[i % len(WORDS)] if isinstance(k, FeatureNode) and labels and i % 3 else ""
             for i, k in enumerate(keys)]
    prob = [0.62 if isinstance(k, LogitNode) and k.token_id >= 0 else 0.0 for k in keys]
    md = {"n_layers": n_layers, "tokens": tok, "prompt": "".join(tok), "model": "synthetic",
          "method": "exact", "ablation": "counterfactual"}
    return Graph.from_keys(keys, a.tocsr(), act, [0.62, 0.0], md, token=token, logit_prob=prob, label=label)

