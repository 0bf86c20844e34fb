"""feature_records -> viz.dashboard.write_dashboards round trip (a test may import viz)."""

import numpy as np
import pytest

import sae  # noqa: F401  (BLAS preload before mlx)
from attribution import load_model
from attribution.testing_dicts import random_dictionary
from attribution.tiny import DEFAULT_WORDS, make_tiny_model
from sae.features import (
    token_strings,
    FeatureIndexError,
    FeatureStatsConfig,
    StreamConfig,
    feature_records,
    feature_stats,
)
from viz.dashboard import check_record, write_dashboards


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = load_model(make_tiny_model("llama", tmp_path_factory.mktemp("llama"), seed=0))
    d = random_dictionary(model.d_model, 1, 24, seed=3, kind="sae", site="resid_post", bias=-0.3)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(DEFAULT_WORDS, 40)) for _ in range(30)]
    cfg = FeatureStatsConfig(stream=StreamConfig(context_len=32), top_k=5, window=4,
                             hist_range=(1e-2, 1.0), hist_bins_per_decade=5)
    return model, d, feature_stats(model, d, texts, cfg)


def test_records_round_trip_through_dashboards(setup, tmp_path):
    model, d, st = setup
    recs = feature_records(st, model, labels={0: "first"})
    assert len(recs) == d.width
    for r in recs:
        check_record(r)
        f = r["feature"]
        if "histogram" in r:  # every firing activation counted exactly once
            assert sum(r["histogram"]["counts"]) == st.count[f]
            assert np.all(np.diff(r["histogram"]["edges"]) >= 0)
        for ex in r["top_examples"]:
            assert max(ex["activations"]) <= r["max_activation"] + 1e-6
        assert [e["tokens"] for e in r["top_examples"]] == [
            token_strings(model, t[t >= 0]) for t, v in zip(st.top.tokens[f], st.top.values[f]) if np.isfinite(v)]
        assert len(r["logit_effects"]["promoted"]) == 10 and len(r["neighbours"]) == 10
    assert recs[0]["label"] == "first" and recs[1]["label"] == ""
    paths = write_dashboards(recs, tmp_path / "dash")
    assert paths[-1].name == "index.html" and len(paths) == d.width + 1
    html = paths[0].read_text()
    assert "Top activations" in html and "Logit effects" in html


def test_records_subset_and_bad_index(setup):
    model, d, st = setup
    recs = feature_records(st, model.to_str_tokens(list(range(model.vocab_size))), features=[2, 5], n_top=2)
    assert [r["feature"] for r in recs] == [2, 5] and all(len(r["top_examples"]) <= 2 for r in recs)
    with pytest.raises(FeatureIndexError):
        feature_records(st, model, features=[d.width])


def test_coactivation_report_renders_as_a_viz_section(setup, tmp_path):
    """The plain tables of a co-activation report go into viz.report.Section unchanged."""
    from attribution.sites import Site
    from sae.features import coactivation_matrix, coactivation_report, report_tables
    from viz.feature_plots import coactivation_heatmap
    from viz.report import Section, write_report

    model, d, _ = setup
    site = Site(1, "resid_post")
    prompts = [" ".join(DEFAULT_WORDS[i:i + 12]) for i in range(0, 40, 4)]
    rep = coactivation_report(model, {site: d}, [(site, f) for f in range(5)], prompts)
    tabs = report_tables(rep)
    mat = coactivation_matrix(rep, "jaccard")
    fig = coactivation_heatmap(mat.to_numpy(), list(mat.index))
    path = write_report(tmp_path / "r.html", [Section("Feature co-activation",
                                                      [tabs["features"], tabs["pairs"], fig])])
    html = path.read_text()
    assert "Feature co-activation" in html and "L1.resid_post/4" in html and "<svg" in html
