"""Composed dictionaries exported to SAELens, loaded by SAELens itself (peer venv only).

Run in .venv-peers (``.venv-peers/bin/python -m pytest tests/sae/test_parts_saelens.py``);
skipped where ``sae_lens`` is not importable.
"""

from __future__ import annotations

# isort: off
import attribution  # noqa: F401  (BLAS preload before mlx)
import mlx.core as mx
import numpy as np
import pytest
# isort: on

from sae.io import export_saelens
from sae.parts import RECIPES, ComposedDictionary

sae_lens = pytest.importorskip(
    "sae_lens", reason="sae_lens is not installed (peer library; see benchmarks/setup_peers.sh)")
torch = pytest.importorskip("torch", reason="torch is not installed (needed by sae_lens)")


@pytest.mark.parametrize("name", ["prolu", "cauchy", "ghost_grads"])
def test_saelens_loads_composed_export(name, tmp_path):
    from attribution import Site

    rng = np.random.default_rng(2)
    d = ComposedDictionary(16, 48, in_site=Site(0, "resid_post"), recipe=RECIPES[name])
    d.init_weights(mx.random.key(3), mx.array(rng.normal(size=16).astype(np.float32) * 0.1))
    d.b_enc = mx.array(rng.normal(size=48).astype(np.float32) * 0.5)  # ProLU: gates vary
    export_saelens(d, tmp_path / "sl", model_name="tiny")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "sl", device="cpu")
    x = rng.standard_normal((64, 16)).astype(np.float32)
    ours_f = np.array(d.encode(mx.array(x)))
    with torch.no_grad():
        their_f = theirs.encode(torch.from_numpy(x)).numpy()
        their_y = theirs.decode(torch.from_numpy(ours_f)).numpy()
    assert 0 < (ours_f > 0).mean() < 1
    np.testing.assert_allclose(their_f, ours_f, rtol=0, atol=1e-5)
    np.testing.assert_allclose(their_y, np.array(d.decode(mx.array(ours_f))), rtol=0, atol=1e-5)
