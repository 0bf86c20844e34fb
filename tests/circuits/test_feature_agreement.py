"""Feature-level predicted vs measured: the constrained mode must match the graph exactly."""

import numpy as np
import pytest
from scipy import stats

from attribution import GraphConfig, build_graph, load_model, logit_diff
from attribution.testing_dicts import random_transcoders
from attribution.tiny import make_tiny_model
from circuits.validate.feature_agreement import agreement_summary, feature_effects, total_effects


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = load_model(make_tiny_model("llama", tmp_path_factory.mktemp("fa") / "m", seed=5))
    dicts = random_transcoders(model, width=48, seed=2, bias=-0.3)
    rng = np.random.default_rng(1)
    prompts = [[2] + [int(t) for t in rng.integers(4, model.vocab_size, size=7)] for _ in range(3)]
    return model, dicts, prompts


def test_total_effects_equal_dense_inverse(setup):
    model, dicts, prompts = setup
    g = build_graph(model, dicts, prompts[0], targets=logit_diff(model, 5, 9), config=GraphConfig())
    t = int(np.flatnonzero(g.type_mask("logit"))[0])
    A = g.adjacency.toarray()
    dense = np.linalg.inv(np.eye(len(A)) - A)[t]
    np.testing.assert_allclose(total_effects(g, t), dense, rtol=1e-6, atol=1e-8)


def test_constrained_ablation_equals_the_graph_direct_effect(setup):
    import pandas as pd

    model, dicts, prompts = setup
    df = pd.concat([feature_effects(model, dicts, p, 5, 9, top_n=8, prompt=i)
                    for i, p in enumerate(prompts)], ignore_index=True)
    assert len(df) > 0
    np.testing.assert_allclose(df["measured_constrained"], df["predicted_direct"], atol=1e-4)
    s = agreement_summary(df).set_index("mode")
    assert s.loc["constrained", "pearson"] == pytest.approx(1.0, abs=1e-6)
    assert s.loc["constrained", "slope"] == pytest.approx(1.0, abs=1e-3)
    it = df[["predicted_total", "measured_iterative"]].to_numpy()
    assert s.loc["iterative", "spearman"] == pytest.approx(stats.spearmanr(it[:, 0], it[:, 1])[0])
    assert np.isfinite(s.loc["iterative", "pearson"])
