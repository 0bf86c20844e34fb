"""Supernodes: planted clusters recovered, bootstrap stability, exact collapse, ARI by hand."""

import attribution  # noqa: F401  (BLAS preload before mlx)

import numpy as np
import pytest

from circuits.multi import (
    MultiError, SupernodeConfig, adjusted_rand_index, aggregate, collapse, decoder_vectors, find_supernodes,
)
from circuits_helpers import hand_graph


mk = hand_graph


def planted(n_prompts=6, seed=0):
    """Nine layer-0 features in three planted clusters (feature // 3): each cluster feeds its own
    layer-1 feature from its own token, fires on its own prompts; decoders are near-identical within a cluster."""
    rng = np.random.default_rng(seed)
    active = {0: range(n_prompts), 1: [p for p in range(n_prompts) if p % 2 == 0],
              2: [p for p in range(n_prompts) if p % 2 == 1]}
    graphs = []
    for p in range(n_prompts):
        acts = {f"tok:0:{c + 1}": 1.0 for c in range(3)}
        edges = {}
        for f in range(9):
            c = f // 3
            if p in active[c]:
                acts[f"feat:0:{p % 3 + 1}:{f}"] = 1.0 + 0.05 * rng.random()
                acts.setdefault(f"feat:1:3:{100 + c}", 1.0)
                edges[(f"tok:0:{c + 1}", f"feat:0:{p % 3 + 1}:{f}")] = 1.0
                edges[(f"feat:0:{p % 3 + 1}:{f}", f"feat:1:3:{100 + c}")] = 0.5 + 0.05 * rng.random()
        acts["logit:3:d"] = 1.0
        for c in range(3):
            if f"feat:1:3:{100 + c}" in acts:
                edges[(f"feat:1:3:{100 + c}", "logit:3:d")] = (1.0, -1.0, -1.0)[c]  # no two layer-1 features alike
        graphs.append(mk(4, acts, edges))
    base = rng.normal(size=(3, 16))
    dec = {f"feat:0:0:{f}": base[f // 3] + 0.01 * rng.normal(size=16) for f in range(9)}
    for c in range(3):
        dec[f"feat:1:0:{100 + c}"] = rng.normal(size=16)
    return aggregate(graphs), dec


def _planted_groups(sn):
    return sorted(tuple(sorted(m)) for m in sn.groups.values())


EXPECTED = sorted(tuple(sorted(f"feat:0:0:{f}" for f in range(3 * c, 3 * c + 3))) for c in range(3))


@pytest.mark.parametrize("weights", [(1, 0, 0), (1, 1, 1), (0, 1, 1)])
def test_planted_clusters_recovered(weights):
    agg, dec = planted()
    cfg = SupernodeConfig(threshold=0.3, decoder_weight=weights[0], profile_weight=weights[1],
                          coactivation_weight=weights[2], n_bootstrap=10)
    sn = find_supernodes(agg, cfg, decoders=dec if weights[0] else None)
    assert _planted_groups(sn) == EXPECTED
    assert sn.ari_mean == 1.0 and (sn.stability["coassignment"] == 1.0).all()
    assert len(sn.stability) == 3 and (sn.stability["size"] == 3).all()
    assert set(sn.labels["supernode"]) - {""} == set(sn.groups)


def test_unstable_clusters_are_reported():
    """Co-activation alone on random activations: bootstrap clusterings disagree with the full one."""
    rng = np.random.default_rng(1)
    graphs = []
    for p in range(5):
        acts = {"tok:0:1": 1.0, "logit:1:d": 1.0}
        edges = {}
        for f in range(12):
            if rng.random() < 0.6:
                acts[f"feat:0:1:{f}"] = float(rng.random())
                edges[(f"feat:0:1:{f}", "logit:1:d")] = 1.0
        graphs.append(mk(2, acts, edges))
    sn = find_supernodes(aggregate(graphs), SupernodeConfig(threshold=0.4, profile_weight=0, n_bootstrap=30))
    assert sn.groups
    assert sn.ari_mean < 1.0 and (sn.stability["coassignment"] < 1.0).any()


def test_adjusted_rand_index_by_hand():
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(4 / 7)
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 2, 2]) == 1.0
    assert adjusted_rand_index([0, 1, 2], [0, 1, 2]) == 1.0
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)


def collapse_case():
    acts = {"tok:0:1": 1.0, "feat:0:1:1": 1.0, "feat:0:1:2": 2.0, "feat:1:1:3": 4.0, "feat:1:1:4": 1.0,
            "err:1:1": 1.0, "logit:1:d": 1.0}
    edges = {("tok:0:1", "feat:0:1:1"): 0.5, ("tok:0:1", "feat:0:1:2"): 0.25, ("feat:0:1:1", "feat:1:1:3"): 0.125,
             ("feat:0:1:2", "feat:1:1:3"): -0.375, ("feat:0:1:1", "feat:1:1:4"): 1.5,
             ("feat:1:1:3", "logit:1:d"): 2.0, ("feat:1:1:4", "logit:1:d"): -0.75, ("err:1:1", "logit:1:d"): 0.5,
             ("feat:0:1:2", "logit:1:d"): 3.0}
    return mk(2, acts, edges)


def test_collapse_preserves_mass_exactly():
    g = collapse_case()
    groups = {"A": ("feat:0:1:1", "feat:1:1:3"), "B": ("feat:0:1:2", "feat:1:1:4"), "gone": ("feat:1:7:7",)}
    c = collapse(g, groups)
    assert list(c.nodes["id"]) == ["tok:0:1", "A", "B", "err:1:1", "logit:1:d"]
    # by hand (weights are dyadic, so sums are exact in any order)
    assert c.weight("A", "A") == 0.125            # internal edge on the diagonal
    assert c.weight("B", "A") == -0.375
    assert c.weight("A", "B") == 1.5
    assert c.weight("A", "logit:1:d") == 2.0
    assert c.weight("B", "logit:1:d") == 2.25     # -0.75 + 3.0
    assert c.weight("tok:0:1", "A") == 0.5
    a = g.adjacency.toarray().astype(np.float64)
    for name, members in groups.items():
        idx = [g.index(m) for m in members if m in g]
        if not idx:
            continue
        j = c.index(name)
        out_c = c.adjacency.toarray()[:, j].sum()
        assert out_c == a[:, idx].sum()          # outgoing mass
        assert c.adjacency.toarray()[j].sum() == a[idx].sum()  # incoming mass
    assert c.adjacency.sum() == a.sum()
    e = c.edges()
    assert e["internal"].sum() == 1
    with pytest.raises(MultiError, match="two groups"):
        collapse(g, {"x": ("feat:0:1:1",), "y": ("feat:0:1:1",)})


def test_collapse_random_graph_mass():
    rng = np.random.default_rng(3)
    keys = ["tok:0:1"] + [f"feat:{l}:{p}:{f}" for l in range(3) for p in range(2) for f in range(4)] + ["logit:1:d"]
    acts = {k: 1.0 for k in keys}
    layer = {k: (-1 if k.startswith("tok") else 3 if k.startswith("logit") else int(k.split(":")[1])) for k in keys}
    edges = {(s, t): float(rng.normal()) for s in keys for t in keys if layer[s] < layer[t] and rng.random() < 0.5}
    g = mk(2, acts, edges, n_layers=3)
    feats = [k for k in keys if k.startswith("feat")]
    perm = rng.permutation(len(feats))
    groups = {f"G{i}": tuple(feats[j] for j in perm[i::5]) for i in range(5)}
    c = collapse(g, groups)
    a = g.adjacency.toarray().astype(np.float64)
    cd = c.adjacency.toarray()
    for name, members in groups.items():
        idx = [g.index(m) for m in members]
        assert cd[:, c.index(name)].sum() == pytest.approx(a[:, idx].sum(), rel=1e-13, abs=1e-13)
        assert cd[c.index(name)].sum() == pytest.approx(a[idx].sum(), rel=1e-13, abs=1e-13)


def test_supernode_figure_and_for_graph():
    agg, dec = planted()
    sn = find_supernodes(agg, SupernodeConfig(n_bootstrap=2), decoders=dec)
    dot = agg.to_dot(supernodes=sn)
    assert dot.count("super:S") >= 3 and "automatic: agglomerative" in dot
    from viz.dot import to_dot

    g = collapse_case()
    one = find_supernodes(g, SupernodeConfig(n_bootstrap=0, threshold=2.0, profile_weight=0))
    assert sum(len(v) for v in one.groups.values()) == 4  # threshold 2: every feature in one cluster per run
    mapped = one.for_graph(g)  # position-free members map back to positional keys
    assert sorted(k for v in mapped.values() for k in v) == sorted(g.nodes.query("type == 'feature'")["key"])
    assert "super:" in to_dot(g, one.style(graph=g))


def test_decoder_vectors_from_dictionaries_and_bad_input():
    import mlx.core as mx  # noqa: F401

    from attribution import load_model
    from attribution.testing_dicts import random_transcoders
    from circuits import organisms

    model = load_model(organisms.path("ioi"))
    dicts = random_transcoders(model, width=8, seed=0)
    v = decoder_vectors(dicts, ["feat:2:5:3", "feat:0:0:7"])
    np.testing.assert_array_equal(v[0], np.asarray(dicts[2].W_dec)[3])
    np.testing.assert_array_equal(v[1], np.asarray(dicts[0].W_dec)[7])
    from attribution.testing_dicts import random_clt

    clt = random_clt(model, width=8, seed=0)
    w = decoder_vectors([clt], ["feat:1:0:2"])  # a CLT feature's write to its own layer
    np.testing.assert_array_equal(w[0], np.asarray(clt.decoder(1))[2, 0])
    with pytest.raises(MultiError, match="width"):
        decoder_vectors(dicts, ["feat:0:0:8"])
    with pytest.raises(MultiError, match="feature nodes only"):
        decoder_vectors(dicts, ["err:0:0"])
    with pytest.raises(MultiError, match="threshold"):
        SupernodeConfig(threshold=3)
    with pytest.raises(MultiError, match="linkage"):
        SupernodeConfig(linkage="ward")


def test_ioi_supernodes_with_random_dictionaries():
    """The real small case: 3 IOI prompts on the shipped organism, random transcoders."""
    from attribution import GraphConfig, build_graph, load_model, logit_diff
    from attribution.testing_dicts import random_transcoders
    from circuits import organisms, tasks
    from circuits.prune import prune
    from viz.dot import to_dot

    model = load_model(organisms.path("ioi"))
    dicts = random_transcoders(model, width=32, seed=0, bias=-0.4)
    data = tasks.get("ioi").generate(3, seed=0, tokenizer=model.tokenizer)
    circuits = [prune(build_graph(model, dicts, [int(t) for t in data.clean[i]],
                                  targets=logit_diff(model, int(data.answer[i]), int(data.wrong[i])),
                                  config=GraphConfig(batch_size=64)), 0.8, 0.98) for i in range(3)]
    agg = aggregate(circuits).filter(0.5)
    sn = find_supernodes(agg, SupernodeConfig(threshold=0.5, n_bootstrap=5), decoders=dicts)
    assert sn.components == ("decoder", "profile", "coactivation")
    assert len(sn.labels) == int((agg.nodes["type"] == "feature").sum())
    if sn.groups:
        assert 0 <= sn.stability["coassignment"].min() <= 1 and -1 <= sn.ari_mean <= 1
    g = agg.to_graph()
    c = collapse(g, sn)
    a = g.adjacency.astype(np.float64)
    assert c.adjacency.sum() == pytest.approx(a.sum(), rel=1e-12)
    for name, members in sn.groups.items():
        idx = [g.index(m) for m in members]
        assert c.adjacency[:, c.index(name)].sum() == pytest.approx(a[:, idx].sum(), rel=1e-12, abs=1e-12)
    assert to_dot(circuits[0], sn.style(graph=circuits[0])).startswith("digraph")
