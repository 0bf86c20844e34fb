"""Shared builders for the discovery/validation tests: a tiny llama and a small induction task."""

from attribution import load_model
from attribution.tiny import make_tiny_model
from circuits import tasks


def tiny_llama(tmp_path_factory, seed: int):
    """A tiny random llama (GQA) loaded through load_model."""
    return load_model(make_tiny_model("llama", tmp_path_factory.mktemp("m"), seed=seed))


def small_induction(model, n: int):
    """n short induction examples (segment 4, repeated twice) for ``model``'s tokenizer."""
    return tasks.get("induction", segment_len=4, repeat_len=2).generate(n, 0, model.tokenizer)
