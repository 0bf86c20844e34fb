"""The exact-graph memory preflight against the measured peak RSS growth of real builds.

Each size runs in a fresh subprocess: load the model and build the dictionaries,
warm up (one tiny graph, so one-time allocations are not counted), compute the
preflight's estimate, reset the kernel's RSS high-water mark (/proc/self/clear_refs),
then build the graph and read ``resource.getrusage(...).ru_maxrss``. The growth over
the post-load RSS must lie within ±30% of the estimate. The sizes are chosen so that
different parts dominate: the batched VJP (16 and 64 tokens), and the clean state
(pre-activations and latents of 16,384-wide dictionaries, attention patterns) with
many nodes (256 tokens).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import attribution  # noqa: F401  (BLAS preload before mlx)
from attribution.attribute import GraphConfig
from attribution.attribute.preflight import estimate_exact_memory

_CHILD = r"""
import gc, json, resource, sys
import attribution
import mlx.core as mx
from attribution import GraphConfig, build_graph, load_model
from attribution.attribute.nodes import make_node_set
from attribution.attribute.preflight import estimate_exact_memory
from attribution.attribute.synthetic import random_prompt, sparse_clt, sparse_transcoders
from attribution.attribute.targets import resolve_targets
from attribution.replacement import ReplacementModel

a = json.loads(sys.argv[1])
model = load_model(a["model"])
vocab = model.vocab_size
make = sparse_clt if a.get("kind") == "clt" else sparse_transcoders
dicts = make(model, a["width"], a["l0"], random_prompt(vocab, 64, seed=9))
dicts = dicts if isinstance(dicts, list) else [dicts]
ids = random_prompt(vocab, a["T"], seed=1)
cfg = GraphConfig(**a["cfg"])
rm = ReplacementModel(model, dicts)
build_graph(rm, None, ids[:4], config=GraphConfig(batch_size=4))  # warm-up
st = rm.clean(ids)
tg = resolve_targets(model, None, st.logits[-1], st.norm_out[-1], a["T"] - 1, cfg.max_logits,
                     cfg.logit_prob_mass)
nodes = make_node_set(st, rm.layers, cfg.feature_threshold, len(tg.keys))
est = estimate_exact_memory(rm, a["T"], cfg, nodes, len(tg.keys))
del st, tg, nodes
gc.collect()
mx.clear_cache()  # else the build would reuse the estimate's freed buffers without new RSS
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
with open("/proc/self/statm") as f:
    base = int(f.read().split()[1]) * 4096
g = build_graph(rm, None, ids, config=cfg)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"estimate": est.peak_bytes, "growth": peak - base,
                  "features": g.metadata["n_active_features"], "breakdown": est.breakdown()}))
"""

SIZES = [
    # (tokens, width, L0, config): batch-dominated, then clean-state / node dominated
    (16, 16384, 50, dict(batch_size=64, edges_per_target=1024, max_feature_nodes=300)),
    (64, 8192, 50, dict(batch_size=64, edges_per_target=512, max_feature_nodes=300, max_batch_tokens=4096)),
    (256, 16384, 30, dict(batch_size=64, edges_per_target=256, max_feature_nodes=200, max_batch_tokens=4096)),
    # a cross-layer transcoder (its 3-D encoder must not be copied per layer)
    (128, 16384, 50, dict(batch_size=64, edges_per_target=1024, max_feature_nodes=300), "clt"),
]


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from attribution.attribute.synthetic import make_config_model, published_config

    cfg = published_config("gpt2-small", n_layer=4, vocab_size=2048, n_ctx=512, n_positions=512)
    return make_config_model(cfg, tmp_path_factory.mktemp("preflight") / "gpt2x4")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak(),
                    reason="needs Linux /proc/self/clear_refs to measure a peak after loading")
@pytest.mark.parametrize("size", SIZES, ids=[f"T{s[0]}-m{s[1]}" + ("-clt" if len(s) > 4 else "") for s in SIZES])
def test_estimate_within_30_percent_of_measured_peak(model_dir, size):
    t, width, l0, cfg = size[:4]
    args = {"model": str(model_dir), "T": t, "width": width, "l0": l0, "cfg": cfg,
            "kind": size[4] if len(size) > 4 else "transcoders"}
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True,
                         text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = rec["estimate"] / rec["growth"]
    assert rec["growth"] > 64 * 2**20, rec  # large enough that allocator noise is small
    assert 0.7 <= ratio <= 1.3, (ratio, rec)


def test_estimate_grows_with_its_knobs(tiny_models):
    """Without a node set the estimate is a lower bound that still follows the knobs."""
    from attribution.replacement import ReplacementModel
    from attribution.testing_dicts import random_transcoders

    model = tiny_models["llama"]
    rm = ReplacementModel(model, random_transcoders(model, 64))
    base = estimate_exact_memory(rm, 32, GraphConfig())
    assert estimate_exact_memory(rm, 64, GraphConfig()).peak_bytes > base.peak_bytes
    assert estimate_exact_memory(rm, 32, GraphConfig(batch_size=64)).batch_bytes > base.batch_bytes
    small = estimate_exact_memory(rm, 32, GraphConfig(batch_size=64, max_batch_tokens=32 * 8))
    assert small.batch_size == 8 and small.batch_bytes < base.batch_bytes
    assert base.n_features == 0 and base.clean_bytes > 0


def test_model_free_bound_uses_the_effective_batch(tiny_models):
    """The bound checked before the clean forward sizes the backward with the targets a pass
    really holds (batch_size capped by max_batch_tokens): memory between the two bounds is
    enough with the cap and refused without it."""
    from attribution.attribute.build import _check_memory
    from attribution.graph.errors import GraphMemoryError
    from attribution.graph.memory import estimate_memory
    from attribution.replacement import ReplacementModel
    from attribution.testing_dicts import random_transcoders

    model = tiny_models["llama"]
    rm = ReplacementModel(model, random_transcoders(model, 64))
    n = 64

    def bound(batch):
        return estimate_memory(n, len(rm.units), 0.0, 10, d_model=model.d_model, edges_per_target=1024,
                               batch_size=batch, max_feature_nodes=7500).total_bytes

    capped, full = bound(4), bound(64)  # max_batch_tokens 256 / 64 tokens = 4 targets per pass
    assert capped < full
    avail = int((capped + full) / 2 / 0.8)
    kw = dict(batch_size=64, edges_per_target=1024, max_feature_nodes=7500, available_memory_bytes=avail)
    _check_memory(model, rm, n, 0.0, GraphConfig(max_batch_tokens=256, **kw))
    with pytest.raises(GraphMemoryError, match="needs about"):
        _check_memory(model, rm, n, 0.0, GraphConfig(**kw))
