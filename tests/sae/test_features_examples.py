"""Top-k tracker and quantile sampler against brute force over all tokens (numpy only)."""

import numpy as np
import pytest

import sae  # noqa: F401  (BLAS preload before mlx)
from sae.features.examples import QuantileSampler, TopKTracker
from sae.features.stream import PAD

M, K, W = 12, 5, 3


def _stream(seed=0, n_batches=6, b=4, t=10):
    """Batches of sparse non-negative activations with a padded tail and BOS-like masked col 0."""
    rng = np.random.default_rng(seed)
    out, first = [], 0
    for _ in range(n_batches):
        acts = np.where(rng.random((b, t, M)) < 0.3, rng.exponential(1.0, (b, t, M)), 0).astype(np.float32)
        tokens = rng.integers(4, 50, (b, t)).astype(np.int32)
        tokens[-1, t - 3:] = PAD
        mask = tokens != PAD
        mask[:, 0] = False
        out.append((acts, mask, tokens, first))
        first += b
    return out


def _flat(batches):
    """All counted (feature, context, pos, value) entries, plus lookup tables."""
    rows = []
    for acts, mask, tokens, first in batches:
        b, t, f = np.nonzero(mask[..., None] & (acts > 0))
        rows.append(np.stack([f, b + first, t, acts[b, t, f]], axis=1))
    return np.concatenate(rows)


@pytest.mark.parametrize("per_context", [False, True])
def test_topk_equals_brute_force(per_context):
    batches = _stream()
    tr = TopKTracker(M, K, W, per_context=per_context)
    for acts, mask, tokens, first in batches:
        tr.update(acts, mask, tokens, first)
    res = tr.result()
    ent = _flat(batches)
    tok_of = {first + r: tokens[r] for _, _, tokens, first in batches for r in range(tokens.shape[0])}
    act_of = {first + r: (acts[r], mask[r]) for acts, mask, _, first in batches for r in range(acts.shape[0])}
    for f in range(M):
        e = ent[ent[:, 0] == f]
        if per_context:  # one candidate per context: its max
            e = np.stack([e[e[:, 1] == c][np.argmax(e[e[:, 1] == c][:, 3])] for c in np.unique(e[:, 1])])
        want = np.sort(e[:, 3])[::-1][:K]
        got = res.values[f]
        np.testing.assert_allclose(got[:want.size], want, rtol=0, atol=0)
        assert np.isnan(got[want.size:]).all()
        for slot in range(want.size):  # window: tokens and this feature's activations around the centre
            c, p = int(res.context[f, slot]), int(res.position[f, slot])
            assert act_of[c][0][p, f] == got[slot]
            toks, (a, mk) = tok_of[c], act_of[c]
            for o in range(-W, W + 1):
                q = p + o
                inside = 0 <= q < toks.size
                assert res.tokens[f, slot, W + o] == (toks[q] if inside else PAD)
                assert res.acts[f, slot, W + o] == (a[q, f] if inside and mk[q] else 0.0)


def test_quantile_examples_lie_in_their_bins_and_fill_reservoirs():
    batches = _stream(seed=3, n_batches=8)
    ent = _flat(batches)
    edges = np.zeros((M, 4))
    for f in range(M):
        v = ent[ent[:, 0] == f][:, 3]
        edges[f] = [0.0, np.quantile(v, 1 / 3), np.quantile(v, 2 / 3), v.max()]
    s = 4
    qs = QuantileSampler(edges, s, W, seed=0)
    for acts, mask, tokens, first in batches:
        qs.update(acts, mask, tokens, first)
    res = qs.result()
    for f in range(M):
        v = ent[ent[:, 0] == f]
        for q in range(3):
            lo, hi = edges[f, q], edges[f, q + 1]
            in_bin = (v[:, 3] >= lo) & ((v[:, 3] < hi) | ((q == 2) & (v[:, 3] <= hi)))
            got = res.values[f * 3 + q]
            ok = np.isfinite(got)
            assert ok.sum() == min(s, in_bin.sum())
            assert ((got[ok] >= lo) & (got[ok] <= hi)).all()
            if q < 2:
                assert (got[ok] < hi).all()
            # Each sample is a real, distinct (context, pos) entry of that bin.
            pairs = {(int(c), int(p)) for c, p in zip(res.context[f * 3 + q][ok], res.position[f * 3 + q][ok])}
            pop = {(int(c), int(p)) for c, p in v[in_bin][:, 1:3]}
            assert len(pairs) == ok.sum() and pairs <= pop


def test_quantile_sampling_is_roughly_uniform():
    """Bottom-s priorities give a uniform sample: each of 20 entries kept ~ s/20 of the time."""
    acts = np.zeros((1, 21, 1), np.float32)
    acts[0, 1:, 0] = 1.0
    mask = np.ones((1, 21), bool)
    mask[0, 0] = False
    tokens = np.arange(21, dtype=np.int32)[None]
    hits = np.zeros(21)
    for seed in range(300):
        qs = QuantileSampler(np.array([[0.0, 2.0]]), 5, 0, seed=seed)
        for t0 in range(1, 21, 4):  # spread over several batches
            m = np.zeros_like(mask)
            m[0, t0:t0 + 4] = True
            qs.update(acts, m, tokens, 0)
        hits[qs.result().position[0]] += 1
    frac = hits[1:] / 300
    assert np.all(np.abs(frac - 0.25) < 0.1)
