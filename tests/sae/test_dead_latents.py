"""Dead latents and BatchTopK's inference threshold (issue 16).

1. During training the threshold is the EMA (rate 0.1) of the reported batch thresholds,
   started at the first one (numpy replay).
2. At the end of a run it is the final weights' own batch threshold on the last batch
   (brute-force order statistic), and the inference JumpReLU fires ~k latents per held-out
   row on a synthetic run whose batch thresholds fall steeply; the old estimator (EMA at
   0.01) fires far fewer.
   The same end-of-run calibration holds for CLT and crosscoder BatchTopK (brute force).
3. AuxK's switch does not hang on the logging cadence: a run logging once (log_every past
   the end) trains exactly like one logging every dead window, and AuxK ran in it.
"""

import mlx.core as mx
import numpy as np

from attribution.sites import Site
from sae import ArraySource, TrainConfig, train
from sae.data.synthetic import sparse_features
from sae.parts import activations as acts
from sae.synthetic import cpu_preset, make_truth, sample

S = Site(0, "resid_post")


def _train_recording(cfg, src):
    """Train, recording every batch threshold handed to BatchTopK.update_stats."""
    log, orig = [], acts.BatchTopK.update_stats

    def update_stats(self, d, stats):
        if "batch_threshold" in stats:
            log.append(stats["batch_threshold"])
        return orig(self, d, stats)

    acts.BatchTopK.update_stats = update_stats
    try:
        d = train(src, cfg, distributed=False).dictionaries[0]
    finally:
        acts.BatchTopK.update_stats = orig
    return d, np.array([float(v) for v in log], np.float64)


def _synthetic(n_train=2 ** 15, n_eval=2048):
    c = cpu_preset(d=32, n_features=512, n_parents=8)
    truth = make_truth(c)
    x = np.concatenate([sample(truth, 8192, i, return_codes=False).x
                        for i in range(n_train // 8192)])
    ev = sample(truth, n_eval, 10 ** 6, return_codes=False).x
    s = float(np.sqrt(c.d) / np.linalg.norm(x, axis=1).mean())
    return x * s, ev * s


def _cfg(**kw):
    base = dict(kind="sae", arch="batchtopk", sites=(S,), width=512, k=8, batch_tokens=1024,
                total_tokens=1024 * 48, lr=3e-3, compile=False, log_every=16)
    base.update(kw)
    return TrainConfig(**base)


def test_ema_update_matches_numpy():
    from sae.arch.topk import BatchTopKDictionary

    d = BatchTopKDictionary(8, 16, k=2)
    assert d.hparams["threshold_ema"] == 0.1
    seq = np.random.default_rng(0).uniform(0.5, 2.0, 20)
    ema = seq[0]
    for b in seq[1:]:
        ema = 0.9 * ema + 0.1 * b
    for b in seq:
        d.update_stats({"batch_threshold": mx.array(b, mx.float32)})
    assert np.isclose(float(np.array(d.threshold)), ema, rtol=1e-5)


def test_end_of_run_threshold_is_final_batch_threshold_and_l0_near_k():
    x, ev = _synthetic()
    cfg = _cfg()
    assert cfg.threshold_ema == 0.1
    seen, orig = [], acts.BatchTopK.calibrate

    def calibrate(self, d, pre):
        seen.append(np.array(pre))
        return orig(self, d, pre)

    acts.BatchTopK.calibrate = calibrate
    try:
        d, thr = _train_recording(cfg, ArraySource({S: x}))
    finally:
        acts.BatchTopK.calibrate = orig
    assert len(thr) == cfg.steps and len(seen) == 1
    # the trajectory this is about: batch thresholds fall while the encoder trains
    assert thr[:4].mean() > 1.2 * thr[-4:].mean()
    pre = seen[0]
    assert pre.shape == (cfg.batch_tokens, cfg.width)
    kth = np.sort(np.maximum(pre, 0).ravel())[::-1][cfg.k * cfg.batch_tokens - 1]  # brute force
    theta = float(np.array(d.threshold))
    assert np.isclose(theta, kth, rtol=1e-6)
    pre_ev = np.array(d.pre_acts(mx.array(ev)))
    f = np.array(d.encode(mx.array(ev)))
    np.testing.assert_allclose(f, pre_ev * (pre_ev > theta), rtol=1e-5, atol=1e-6)
    l0 = float((f > 0).sum(1).mean())
    assert abs(l0 - cfg.k) < 0.1 * cfg.k, l0  # ~k per held-out row
    ema_01 = thr[0]  # what the old default (an EMA at rate 0.01) would have saved
    for b in thr[1:]:
        ema_01 = 0.99 * ema_01 + 0.01 * b
    assert float((pre_ev > ema_01).sum(1).mean()) < 0.5 * cfg.k


def test_auxk_switch_does_not_depend_on_log_every():
    data = sparse_features(8192, 16, 8, active=2, seed=1)
    src = ArraySource({S: data.x})
    base = dict(kind="sae", arch="topk", sites=(S,), width=64, k=2, batch_tokens=256,
                total_tokens=256 * 24, lr=3e-3, warmup_steps=2, dead_tokens=256 * 4)
    once = train(src, TrainConfig(**base, log_every=10 ** 6), distributed=False)
    every = train(src, TrainConfig(**base, log_every=4), distributed=False)
    assert len(once.history) == 1 and len(every.history) == 6
    assert once.history[0]["aux"] > 0  # AuxK ran although no log step came before the end
    assert any(r["aux"] > 0 for r in every.history[:3])  # and came on early
    for k, v in every.dictionaries[0].arrays().items():
        np.testing.assert_array_equal(np.array(once.dictionaries[0].arrays()[k]), np.array(v),
                                      err_msg=k)


def test_clt_and_crosscoder_batchtopk_thresholds_are_calibrated_at_the_end():
    # rows == batch_tokens: every batch, the last included, is the whole array (permuted), so
    # the brute-force order statistic over all rows is the calibrated threshold
    sites = (Site(0, "resid_post"), Site(1, "resid_post"))
    ins, outs = (Site(0, "mlp_in"), Site(1, "mlp_in")), (Site(0, "mlp_out"), Site(1, "mlp_out"))
    rng = np.random.default_rng(0)
    base = sparse_features(256, 16, 48, active=3, seed=2).x
    arrays = {s: base @ rng.standard_normal((16, 16)).astype(np.float32)
              for s in sites + ins + outs}
    B, k = 256, 3
    for kind, cfg_sites, xs in (("crosscoder", sites, [arrays[s] for s in sites]),
                                ("clt", ins, [arrays[s] for s in ins])):
        cfg = TrainConfig(kind=kind, arch="batchtopk", sites=cfg_sites, width=32, k=k,
                          batch_tokens=B, total_tokens=B * 40, lr=3e-3, warmup_steps=5,
                          log_every=10)
        d = train(ArraySource(arrays), cfg, distributed=False).dictionaries[0]
        pre = np.array(d.pre_acts([mx.array(x) for x in xs])).reshape(B, -1)
        kth = np.sort(np.maximum(pre, 0).ravel())[::-1][k * B - 1]
        theta = float(np.array(d.threshold))
        assert np.isclose(theta, kth, rtol=1e-4), (kind, theta, kth)
        f = np.array(d.encode([mx.array(x) for x in xs])).reshape(B, -1)
        assert abs((f != 0).sum() - (k * B - 1)) <= 2, kind  # all but the k·B-th (ties aside)
