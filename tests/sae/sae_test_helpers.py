"""Helpers for the sae tests: small seeded random dictionaries (imported by the test modules)."""

import mlx.core as mx
import numpy as np

import sae  # noqa: F401  (BLAS preload before mlx)
from attribution.sites import Site
from sae.arch import ARCHITECTURES

SITE = Site(0, "resid_post")
TC_IN, TC_OUT = Site(1, "mlp_in"), Site(1, "mlp_out")


def random_dictionary(arch: str, d_in=12, width=24, d_out=None, seed=0, transcoder=False,
                      skip=False, **kw):
    """A dictionary with random (non-trivial) parameters, including biases and thresholds."""
    rng = np.random.default_rng(seed)
    if arch in ("topk", "batchtopk", "matryoshka"):
        kw.setdefault("k", 4)
    sites = dict(in_site=TC_IN, out_site=TC_OUT) if transcoder else dict(in_site=SITE)
    d = ARCHITECTURES[arch](d_in, width, d_out=d_out, skip=skip, **sites, **kw)
    for name, cur in d.arrays().items():
        a = rng.standard_normal(cur.shape).astype(np.float32) * 0.5
        if name == "log_threshold":
            a = np.log(rng.uniform(0.05, 0.6, cur.shape)).astype(np.float32)
        if name == "threshold":
            a = np.array(0.3, np.float32)
        setattr(d, name, mx.array(a))
    return d

