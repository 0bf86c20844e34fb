"""Cross-check against SAELens itself (skipped when ``sae_lens`` is not importable).

SAELens is a peer, never a dependency: run this in .venv-peers
(``bash benchmarks/setup_peers.sh``; then ``.venv-peers/bin/python -m pytest
tests/sae/test_saelens_crosscheck.py``).
  1. Our dictionaries (TopK, JumpReLU, and BatchTopK / Gated, which export as JumpReLU)
     -> ``sae.export_saelens`` -> SAELens's own ``SAE.load_from_disk``: ``encode`` and
     ``decode`` agree with ours within 1e-5 on the same activations.
  2. The other way: a folder written by SAELens's ``save_model`` -> ``sae.import_saelens``.
"""

from __future__ import annotations

# isort: off
import sae  # noqa: F401  (BLAS preload before mlx)
import mlx.core as mx
import numpy as np
import pytest
from sae import export_saelens, import_saelens
from sae_test_helpers import random_dictionary
# isort: on

sae_lens = pytest.importorskip(
    "sae_lens", reason="sae_lens is not installed (peer library; see benchmarks/setup_peers.sh)")
torch = pytest.importorskip("torch", reason="torch is not installed (needed by sae_lens)")

ATOL = 1e-5


def _x(d_in: int, n: int = 64, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d_in)).astype(np.float32)


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "batchtopk", "gated"])
def test_saelens_loads_our_export(arch, tmp_path):
    d = random_dictionary(arch, d_in=16, width=48, seed=3)
    export_saelens(d, tmp_path / "sl", model_name="tiny")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "sl", device="cpu")
    expected = {"topk": "topk"}.get(arch, "jumprelu")
    assert theirs.cfg.architecture() == expected
    x = _x(16)
    ours_f = np.array(d.encode(mx.array(x)))
    with torch.no_grad():
        their_f = theirs.encode(torch.from_numpy(x)).numpy()
        their_y = theirs.decode(torch.from_numpy(ours_f)).numpy()
    assert (ours_f > 0).sum() > 0  # a non-trivial check: some latents fire
    np.testing.assert_allclose(their_f, ours_f, rtol=0, atol=ATOL)
    np.testing.assert_allclose(their_y, np.array(d.decode(mx.array(ours_f))), rtol=0, atol=ATOL)


def test_we_load_a_saelens_folder(tmp_path):
    from sae_lens import TopKSAE, TopKSAEConfig
    torch.manual_seed(0)
    theirs = TopKSAE(TopKSAEConfig(d_in=16, d_sae=40, k=5, dtype="float32", device="cpu"))
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    theirs.save_model(tmp_path / "sl")
    ours = import_saelens(tmp_path / "sl")
    x = _x(16)
    with torch.no_grad():
        their_f = theirs.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.array(ours.encode(mx.array(x))), their_f, rtol=0, atol=ATOL)
