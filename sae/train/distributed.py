"""Data-parallel training over MLX's distributed layer (``mx.distributed``).

Launched as ``mlx.launch --backend ring -n 2 -- python train_script.py`` (or any
process group ``mx.distributed.init()`` finds: a ring hostfile via ``MLX_RANK`` /
``MLX_HOSTFILE``, MPI). Every rank runs the same ``train`` call:
  1. Group: ``distributed=None`` uses ``mx.distributed.init()`` when its size is > 1;
     ``True`` requires that; ``False`` never; a ``Group`` is used as given.
  2. Data: each rank reads its own shard of the source (``shard_source``) and draws
     ``batch_tokens / world`` rows per step, so the global batch has the configured size
     (for an ``ArraySource`` it is exactly the single-process batch, split by rows).
  3. Start: the local first batches are all-gathered, so the normalisation scales and
     every dictionary's initialisation are computed from one global batch, identically
     on every rank (initial weights come from the seed alone).
  4. Step: gradients are ``all_sum``med and divided by the world size before clipping and
     Adam (the mean of equal-sized local means is the global-batch mean); the scalar
     statistics (metrics, BatchTopK threshold) are averaged and the fired masks OR-ed,
     so dead-latent counters, AuxK switches and logs agree on every rank.
  5. Control: per step the ranks agree (one small ``all_sum``) on "data ran out" and
     "non-finite batch", so an error raises on every rank instead of leaving the others
     blocked in a collective.
  6. Output: rank 0 alone writes checkpoints (atomically) and the JSONL log; every rank
     returns the same dictionaries.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from sae.errors import ConfigError


def resolve_group(distributed):
    """The process group to train over, or None for a single-process run."""
    if distributed is False:
        return None
    if distributed is None or distributed is True:
        group = mx.distributed.init() if mx.distributed.is_available() else None
        size = group.size() if group is not None else 1
        if size > 1:
            return group
        if distributed is True:
            raise ConfigError("distributed=True but mx.distributed.init() found a single process; "
                              "launch with e.g. `mlx.launch --backend ring -n 2 -- python script.py`")
        return None
    return distributed if distributed.size() > 1 else None  # a Group passed in


def shard_source(source, rank: int, world: int):
    """This rank's part of ``source``: its own ``shard`` if it has one, else row slices."""
    if hasattr(source, "shard"):
        return source.shard(rank, world)
    return RowShard(source, rank, world)


class RowShard:
    """Rows [rank·b, (rank+1)·b) of each global batch of b·world rows of any source."""

    def __init__(self, source, rank: int, world: int):
        self.source, self.rank, self.world = source, rank, world
        self.sites, self.dims = source.sites, source.dims

    def batches(self, batch_tokens: int, seed: int):
        lo, hi = self.rank * batch_tokens, (self.rank + 1) * batch_tokens
        for b in self.source.batches(batch_tokens * self.world, seed):
            yield {s: a[lo:hi] for s, a in b.items()}


def local_batch_tokens(batch_tokens: int, group) -> int:
    """Rows per rank; the global batch must split evenly."""
    if group is None:
        return batch_tokens
    if batch_tokens % group.size():
        raise ConfigError(f"batch_tokens={batch_tokens} does not split over "
                          f"{group.size()} processes; use a multiple of the world size")
    return batch_tokens // group.size()


def gather_rows(batch: dict, group) -> dict:
    """{site: rows of every rank, in rank order} (numpy in, numpy out)."""
    if group is None:
        return batch
    out = {s: mx.distributed.all_gather(mx.array(a), group=group) for s, a in batch.items()}
    mx.eval(out)
    return {s: np.array(a) for s, a in out.items()}


def agree(flags, group) -> list[bool]:
    """Per flag: is it set on any rank? (one tiny all_sum; identity without a group)."""
    if group is None:
        return [bool(f) for f in flags]
    total = mx.distributed.all_sum(mx.array([float(bool(f)) for f in flags]), group=group)
    return [v > 0 for v in total.tolist()]


def mean_grads(grads: dict, group) -> dict:
    """Gradients averaged over ranks (lazy; evaluated with the step)."""
    if group is None:
        return grads
    n = float(group.size())
    return {k: mx.distributed.all_sum(g, group=group) / n for k, g in grads.items()}


def sync_stats(stats: dict, group) -> dict:
    """Scalar statistics averaged over ranks, ``fired`` masks OR-ed (lazy)."""
    if group is None:
        return stats
    out = dict(stats)
    fired = stats.get("fired")
    if fired is not None:
        out["fired"] = mx.distributed.all_sum(fired.astype(mx.float32), group=group) > 0
    keys = [k for k, v in stats.items() if k != "fired" and isinstance(v, mx.array) and v.size == 1]
    if keys:  # one collective for all scalars
        vec = mx.stack([stats[k].reshape(()).astype(mx.float32) for k in keys])
        vec = mx.distributed.all_sum(vec, group=group) / float(group.size())
        out.update({k: vec[i].astype(stats[k].dtype).reshape(stats[k].shape)
                    for i, k in enumerate(keys)})
    return out
