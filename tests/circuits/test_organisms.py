"""Shipped organisms: load through attribution.load_model, meet their bars on fresh seeds,
card contents, identified heads; retraining reproduces the card (slow)."""

import json

import numpy as np
import pytest

import attribution  # noqa: F401  (optimised BLAS before mlx)
import mlx.core as mx
from attribution import load_model

from circuits import organisms, tasks
from circuits.errors import OrganismError

FRESH_SEED = 777  # neither a training, card-eval nor ground-truth seed


@pytest.fixture(scope="module")
def models():
    return {n: load_model(organisms.path(n)) for n in organisms.names()}


def test_shipped_files_are_small_mlx_lm_dirs():
    assert set(organisms.names()) >= {"induction", "ioi"}
    for n in organisms.names():
        p = organisms.path(n)
        for f in ("config.json", "model.safetensors", "tokenizer.json", "card.json", "README.md",
                  "ground_truth.json"):
            assert (p / f).exists(), f"{n}: missing {f}"
        total = sum(f.stat().st_size for f in p.iterdir() if f.is_file())
        assert total < 6e6, f"{n}: {total} bytes"
        cfg = json.loads((p / "config.json").read_text())
        assert cfg["model_type"] == "llama"


def test_unknown_organism():
    with pytest.raises(OrganismError, match="unknown organism"):
        organisms.path("nope")
    with pytest.raises(OrganismError, match="unknown organism"):
        organisms.train("nope", "/tmp/never")


def test_induction_bar(models):
    m = models["induction"]
    assert m.n_layers == 2 and m.arch == "llama"
    d = tasks.get("induction").generate(300, FRESH_SEED, m.tokenizer)
    s = tasks.score(d, m)
    assert s.accuracy >= 0.9, s


def test_ioi_bars(models):
    m = models["ioi"]
    assert m.n_layers == 4 and 64 <= m.d_model <= 128
    d = tasks.get("ioi").generate(300, FRESH_SEED, m.tokenizer)
    s = tasks.score(d, m)
    assert s.metric >= 2.0 and s.accuracy >= 0.95, s
    g = tasks.score(tasks.get("greater_than").generate(300, FRESH_SEED, m.tokenizer), m)
    assert g.metric > 0.5 and g.accuracy >= 0.9, g


def test_load_model_logits_match_mlx_lm(models):
    """attribution.load_model and plain mlx_lm.load give the same logits."""
    from mlx_lm import load

    module, _ = load(str(organisms.path("ioi")))
    toks = mx.array(np.asarray([models["ioi"].encode("Then , Mary and John went to")]))
    np.testing.assert_allclose(np.array(module(toks)), np.array(models["ioi"](toks)), atol=1e-5)


def test_cards_record_metrics_and_heads(models):
    for n in organisms.names():
        card = organisms.card(n)
        assert card["seed"] == 0 and card["train_seconds"] > 0
        for t in card["recipe"]["eval_tasks"]:
            assert set(card["tasks"][t]) >= {"accuracy", "mean_metric", "metric", "n"}
        assert card["ground_truth"].keys() == set(card["recipe"]["eval_tasks"])
    heads = organisms.card("induction")["heads"]["identified"]
    assert any(h["layer"] == 0 for h in heads["previous_token"])
    # This organism's layer-1 heads are "shifted" induction heads (see heads.py / its card).
    assert any(h["layer"] == 1 for h in heads["induction"] + heads["induction_shifted"])


def test_head_scores_recompute_card(models):
    card = organisms.card("induction")["heads"]
    hs = organisms.head_scores(models["induction"], **card["args"])
    for kind, s in card["scores"].items():
        np.testing.assert_allclose(hs.scores[kind], np.asarray(s), atol=2e-4)


def test_head_scores_match_manual_patterns(models):
    """Induction score of the best head equals a direct numpy read of its pattern."""
    from attribution import Site, capture
    from circuits.organisms.heads import pattern_scores, repeated_sequences

    m = models["induction"]
    toks = repeated_sequences(m.tokenizer, 8, 10, 1)
    pat = np.array(capture(m, mx.array(toks), [Site(1, "attn_pattern")])[Site(1, "attn_pattern")])
    ours = pattern_scores(mx.array(pat), 10, 1)["induction"]
    manual = np.mean([[pat[b, h, q, q - 9] for b in range(8) for q in range(11, 21)]
                      for h in range(m.n_heads)], axis=1)
    np.testing.assert_allclose(ours, manual, atol=1e-6)
    assert np.allclose(pat.sum(-1), 1.0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.retrain
@pytest.mark.parametrize("name", ["induction", "ioi"])
def test_retraining_reproduces_card(name, tmp_path):
    """Retraining with the card's seed gives the card's held-out metrics.

    The run is deterministic on one machine, but another CPU's BLAS kernels sum in
    another order and the trajectory drifts: retrained on an AMD EPYC, the ioi organism
    (card from an Intel Xeon) gave ioi accuracy 0.982 (card 0.996) and mean logit diff
    4.01 (card 4.94), and induction accuracy 0.920 (card 0.866). So the check is that
    retraining gives an organism that does the card's tasks as well: accuracy at most
    0.02 below the card (and at most 0.1 above), mean metric within 25% + 0.05.
    """
    card = organisms.card(name)
    res = organisms.train(name, tmp_path / name, seed=card["seed"])
    for t, s in card["tasks"].items():
        got = res.tasks[t]
        assert -0.02 <= got.accuracy - s["accuracy"] <= 0.1, (t, got, s)
        assert abs(got.mean_metric - s["mean_metric"]) <= 0.05 + 0.25 * abs(s["mean_metric"]), (t, got, s)
    assert (tmp_path / name / "model.safetensors").exists()
    load_model(tmp_path / name)
