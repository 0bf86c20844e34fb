"""Sparsify dense attribution rows, streamed one batch of targets at a time.

Graph construction produces, for a batch of targets, dense rows ``[b, N]`` of direct
effects on those targets from every node. Holding all rows would cost N² memory, so
each batch is reduced as it arrives:

1. For each row, the candidate entries are its non-zeros.
2. With ``k``: keep the (at most) ``k`` entries of largest |weight| (ties broken
   arbitrarily but deterministically, by ``numpy.argpartition``).
   With ``threshold``: keep entries with |weight| >= ``threshold``.
   With both: keep entries that pass both. With neither: keep every non-zero.
3. ``dropped_mass[target]`` += sum of |weight| over the row's entries not kept
   (accumulated in float64).
4. The kept entries of each batch are stored once, as a small CSR matrix over the
   batch's rows (``batches``); graph builders read them in place (e.g. for influence
   ordering) instead of keeping a second copy. ``finish`` stacks the batches and
   orders the rows into one canonical CSR matrix, so peak memory is about twice the
   kept edges plus one dense batch.

Each target row may be given at most once; rows never given stay empty.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from attribution.graph.errors import SparsifyError


class SparseRows(NamedTuple):
    """Result of ``sparsify``."""

    adjacency: sp.csr_matrix
    """[n_nodes, n_nodes] kept edges, A[target, source], dtype of the input rows."""
    dropped_mass: np.ndarray
    """[n_nodes] float64 sum of |weight| dropped per target row."""


class SparseRowBuilder:
    """Incremental form of ``sparsify``: call ``add`` per batch, then ``finish``."""

    def __init__(self, n_nodes: int, k: int | None = None, threshold: float | None = None) -> None:
        if not isinstance(n_nodes, (int, np.integer)) or n_nodes < 0:
            raise SparsifyError(f"n_nodes must be a non-negative int, got {n_nodes!r}")
        if k is not None and (not isinstance(k, (int, np.integer)) or k < 0):
            raise SparsifyError(f"k must be a non-negative int or None, got {k!r}")
        if threshold is not None and not (np.isfinite(threshold) and threshold >= 0):
            raise SparsifyError(f"threshold must be a finite number >= 0 or None, got {threshold!r}")
        self.n_nodes, self.k, self.threshold = int(n_nodes), k, threshold
        self.dropped_mass = np.zeros(self.n_nodes)
        self._seen = np.zeros(self.n_nodes, dtype=bool)
        self._batches: list[tuple[np.ndarray, sp.csr_matrix]] = []
        self._dtype: np.dtype | None = None
        self.n_edges = 0
        """Edges kept so far."""

    @property
    def batches(self) -> list[tuple[np.ndarray, sp.csr_matrix]]:
        """(targets [b], kept rows as CSR [b, n_nodes]) per added batch; read-only views."""
        return self._batches

    def _keep_mask(self, block: np.ndarray, mag: np.ndarray) -> np.ndarray:
        keep = mag > 0
        if self.threshold is not None:
            keep &= mag >= self.threshold
        if self.k is not None and self.k < block.shape[1]:
            # The k largest |w| per row; entries outside that set are dropped.
            top = np.zeros_like(keep)
            if self.k > 0:
                idx = np.argpartition(mag, block.shape[1] - self.k, axis=1)[:, block.shape[1] - self.k:]
                np.put_along_axis(top, idx, True, axis=1)
            keep &= top
        return keep

    def add(self, targets, block) -> np.ndarray:
        """Add dense rows ``block[i]`` (shape [b, n_nodes]) for target rows ``targets[i]``.

        Returns each row's total |weight| (kept + dropped, float64)."""
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        block = np.asarray(block)
        if block.ndim != 2 or block.shape != (targets.size, self.n_nodes):
            raise SparsifyError(f"block must have shape ({targets.size}, {self.n_nodes}), got {block.shape}")
        if block.dtype not in (np.float32, np.float64):
            raise SparsifyError(f"rows must be float32 or float64, got {block.dtype}")
        if self._dtype is not None and block.dtype != self._dtype:
            raise SparsifyError(f"all batches must share one dtype ({self._dtype}), got {block.dtype}")
        if targets.size and (targets.min() < 0 or targets.max() >= self.n_nodes):
            raise SparsifyError(f"target rows must lie in [0, {self.n_nodes})")
        if len(np.unique(targets)) != targets.size or self._seen[targets].any():
            raise SparsifyError("a target row was given twice")
        mag = np.abs(block)
        total = mag.sum(axis=1, dtype=np.float64)
        if not np.isfinite(total).all():  # one reduction, no [b, N] boolean
            raise SparsifyError("rows contain non-finite values")
        self._dtype = block.dtype
        self._seen[targets] = True
        keep = self._keep_mask(block, mag)
        # float64 accumulation of the (float32) magnitudes not kept, without a float64 copy.
        np.putmask(mag, keep, 0)
        self.dropped_mass[targets] += mag.sum(axis=1, dtype=np.float64)
        del mag
        r, c = np.nonzero(keep)  # row-major: columns come sorted within each row
        indptr = np.zeros(targets.size + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=targets.size), out=indptr[1:])
        idx = np.int32 if self.n_nodes < 2**31 else np.int64
        rows = sp.csr_matrix((block[r, c], c.astype(idx), indptr.astype(idx)),
                             shape=(targets.size, self.n_nodes))
        self._batches.append((targets, rows))
        self.n_edges += int(rows.nnz)
        return total

    def finish(self) -> SparseRows:
        """Assemble the kept edges into a canonical CSR matrix (the batches are released)."""
        dtype = self._dtype or np.float32
        n = self.n_nodes
        if not self._batches:
            return SparseRows(sp.csr_matrix((n, n), dtype=dtype), self.dropped_mass.copy())
        targets = np.concatenate([t for t, _ in self._batches])
        stacked = sp.vstack([r for _, r in self._batches], format="csr")
        self._batches = []
        order = np.argsort(targets, kind="stable")
        stacked = stacked[order]
        counts = np.zeros(n, dtype=np.int64)
        counts[targets[order]] = np.diff(stacked.indptr)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        idx_dtype = np.int32 if max(n, int(indptr[-1])) < 2**31 else np.int64
        adj = sp.csr_matrix((stacked.data, stacked.indices.astype(idx_dtype, copy=False),
                             indptr.astype(idx_dtype)), shape=(n, n))
        adj.sort_indices()
        return SparseRows(adj, self.dropped_mass.copy())


def sparsify(
    rows: Iterable[tuple[np.ndarray, np.ndarray]],
    k: int | None = None,
    threshold: float | None = None,
    *,
    n_nodes: int | None = None,
) -> SparseRows:
    """Build the CSR adjacency and per-target dropped mass from streamed dense rows.

    ``rows`` yields ``(targets, block)`` pairs: ``targets`` [b] row indices and ``block``
    [b, n_nodes] the dense direct effects on those targets from every node. ``k`` keeps
    the top-k |weight| per target, ``threshold`` keeps |weight| >= threshold; see the
    module docstring for the exact rule. ``n_nodes`` defaults to the first block's width
    and is required when ``rows`` may be empty."""
    builder = None if n_nodes is None else SparseRowBuilder(n_nodes, k=k, threshold=threshold)
    for targets, block in rows:
        if builder is None:
            builder = SparseRowBuilder(int(np.shape(block)[-1]), k=k, threshold=threshold)
        builder.add(targets, block)
    if builder is None:
        raise SparsifyError("no rows were given; pass n_nodes to build an empty adjacency")
    return builder.finish()


__all__ = ["SparseRowBuilder", "SparseRows", "sparsify"]
