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
4. Kept (column, value) pairs are appended per batch; ``finish`` concatenates them into
   one CSR matrix (rows sorted, columns sorted within rows), so peak memory is the
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
        self._rows: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self._dtype: np.dtype | None = None

    def _keep_mask(self, block: np.ndarray) -> np.ndarray:
        mag = np.abs(block)
        keep = mag > 0
        if self.threshold is not None:
            keep &= mag >= self.threshold
        if self.k is not None and self.k < block.shape[1]:
            # The k largest |w| per row; entries outside that set are dropped.
            top = np.zeros_like(keep)
            if self.k > 0:
                idx = np.argpartition(-mag, self.k - 1, axis=1)[:, : self.k]
                np.put_along_axis(top, idx, True, axis=1)
            keep &= top
        return keep

    def add(self, targets, block) -> None:
        """Add dense rows ``block[i]`` (shape [b, n_nodes]) for target rows ``targets[i]``."""
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
        if not np.isfinite(block).all():
            raise SparsifyError("rows contain non-finite values")
        self._dtype = block.dtype
        self._seen[targets] = True
        keep = self._keep_mask(block)
        self.dropped_mass[targets] += np.where(keep, 0.0, np.abs(block, dtype=np.float64)).sum(axis=1)
        r, c = np.nonzero(keep)
        self._rows.append(targets[r])
        self._cols.append(c.astype(np.int64))
        self._vals.append(block[r, c])

    def finish(self) -> SparseRows:
        """Assemble the kept edges into a canonical CSR matrix."""
        dtype = self._dtype or np.float32
        rows = np.concatenate(self._rows) if self._rows else np.zeros(0, np.int64)
        cols = np.concatenate(self._cols) if self._cols else np.zeros(0, np.int64)
        vals = np.concatenate(self._vals) if self._vals else np.zeros(0, dtype)
        adj = sp.coo_matrix((vals, (rows, cols)), shape=(self.n_nodes, self.n_nodes)).tocsr()
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
