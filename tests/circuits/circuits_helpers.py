"""Shared builders for the circuits tests: a tiny llama, a small induction task, hand-made graphs."""

from attribution import load_model
from attribution.tiny import make_tiny_model
from circuits import tasks


def tiny_llama(tmp_path_factory, seed: int):
    """A tiny random llama (GQA) loaded through load_model."""
    return load_model(make_tiny_model("llama", tmp_path_factory.mktemp("m"), seed=seed))


def small_induction(model, n: int):
    """n short induction examples (segment 4, repeated twice) for ``model``'s tokenizer."""
    return tasks.get("induction", segment_len=4, repeat_len=2).generate(n, 0, model.tokenizer)


def hand_graph(n_tokens, acts, edges, n_layers=2, prompt=""):
    """A Graph from {key: activation} and {(source, target): weight}; the logits share weight 1."""
    import scipy.sparse as sp

    from attribution.graph import Graph
    from attribution.graph.keys import parse_key

    keys = list(acts)
    pos = {k: i for i, k in enumerate(keys)}
    rows = [pos[t] for (_, t) in edges]
    cols = [pos[s] for (s, _) in edges]
    adj = sp.csr_matrix((list(edges.values()), (rows, cols)), shape=(len(keys), len(keys)))
    n_logits = sum(k.startswith("logit") for k in keys)
    return Graph.from_keys([parse_key(k) for k in keys], adj, list(acts.values()), [1.0 / n_logits] * n_logits,
                           {"n_layers": n_layers, "tokens": list(range(n_tokens)), "prompt": prompt})
