"""Top-activating and quantile-sampled examples per feature, streamed with bounded memory.

Top-k (``TopKTracker``), per batch of latents [B, T, m]:
  1. Non-counted positions and activations <= 0 become -inf (they never rank).
  2. Candidates: every token ([m, B*T]) or, with ``per_context``, each context's max
     token ([m, B]); ``argpartition`` keeps the best ``k`` per feature.
  3. Only features whose best candidate beats their current k-th value are merged:
     concatenate [m, k] kept + [m, k] candidates, ``argpartition`` again, and cut the
     ±``window`` token window (ids and that feature's activations) for new winners.
  Memory is O(m·k·(2·window+1)) whatever the dataset size.

Quantile samples (``QuantileSampler``), given per-feature bin edges [m, n_bins+1]:
  1. Each firing (feature, token) falls in bin q with edges[q] <= a < edges[q+1]
     (the last bin is closed), i.e. group g = feature·n_bins + q.
  2. Each firing entry gets a uniform random priority; a group keeps the ``s`` entries
     of smallest priority seen so far (bottom-s sampling = a uniform reservoir sample
     without replacement), merged per batch with ``lexsort`` over (group, priority).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sae.features.stream import PAD


class Examples(NamedTuple):
    """Stored examples, ``n`` slots per row (row = feature, or feature·n_bins + bin)."""

    values: np.ndarray
    """[rows, n] float32 activation at the example's centre token; NaN for an empty slot."""
    context: np.ndarray
    """[rows, n] int64 global context index (-1 when empty)."""
    position: np.ndarray
    """[rows, n] int32 position of the centre token in its context."""
    tokens: np.ndarray
    """[rows, n, 2w+1] int32 window token ids, ``PAD`` outside the context; centre at index w."""
    acts: np.ndarray
    """[rows, n, 2w+1] float32 the feature's activation on each window token (0 at pads and
    positions excluded from the statistics, e.g. BOS)."""


def _empty(rows: int, n: int, width: int) -> dict:
    return {"values": np.full((rows, n), -np.inf, np.float32), "context": np.full((rows, n), -1, np.int64),
            "position": np.zeros((rows, n), np.int32), "tokens": np.full((rows, n, width), PAD, np.int32),
            "acts": np.zeros((rows, n, width), np.float32)}


def windows(acts: np.ndarray, tokens: np.ndarray, mask: np.ndarray, feat: np.ndarray,
            b: np.ndarray, t: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and activations of feature ``feat`` around (b, t); the index arrays broadcast
    together; returns two arrays of shape broadcast + (2w+1,). Activations are 0 outside the
    context and at positions the mask excludes."""
    feat, b, t = np.broadcast_arrays(feat, b, t)
    tpos = t[..., None] + np.arange(-w, w + 1)
    ok = (tpos >= 0) & (tpos < tokens.shape[1])
    tc = np.clip(tpos, 0, tokens.shape[1] - 1)
    tok = np.where(ok, tokens[b[..., None], tc], PAD).astype(np.int32)
    ok &= mask[b[..., None], tc]
    act = np.where(ok, acts[b[..., None], tc, feat[..., None]], 0.0).astype(np.float32)
    return tok, act


class TopKTracker:
    """Per-feature top-k examples over a stream (see the module docstring)."""

    def __init__(self, width: int, k: int, window: int, per_context: bool = True):
        self.m, self.k, self.w, self.per_context = int(width), int(k), int(window), per_context
        self.s = _empty(self.m, self.k, 2 * self.w + 1)

    def update(self, acts: np.ndarray, mask: np.ndarray, tokens: np.ndarray, first_context: int) -> None:
        """Merge one batch: acts [B, T, m], mask/tokens [B, T] (steps 1-3)."""
        a = np.where(mask[..., None] & (acts > 0), acts, -np.inf).astype(np.float32)
        bsz, t = mask.shape
        if self.per_context:
            pos = a.argmax(axis=1)                                        # [B, m]
            cv = np.take_along_axis(a, pos[:, None, :], axis=1)[:, 0].T   # [m, B]
            cb, ct = np.broadcast_to(np.arange(bsz)[None], cv.shape), pos.T
        else:
            cv = a.reshape(bsz * t, self.m).T                             # [m, B*T]
            flat = np.broadcast_to(np.arange(bsz * t)[None], cv.shape)
            cb, ct = flat // t, flat % t
        if cv.shape[1] > self.k:                                          # step 2
            part = np.argpartition(-cv, self.k - 1, axis=1)[:, :self.k]
            cv, cb, ct = (np.take_along_axis(x, part, axis=1) for x in (cv, cb, ct))
        # Step 3: most features stop improving after a few batches; skip them cheaply.
        rows = np.nonzero(cv.max(axis=1) > self.s["values"].min(axis=1))[0]
        if rows.size:
            self._merge(rows, cv[rows], cb[rows], ct[rows], acts, mask, tokens, first_context)

    def _merge(self, rows, cv, cb, ct, acts, mask, tokens, first_context) -> None:
        old = {key: v[rows] for key, v in self.s.items()}
        keep = np.argpartition(-np.concatenate([old["values"], cv], axis=1), self.k - 1, axis=1)[:, :self.k]
        is_new = keep >= self.k
        rr, ss = np.nonzero(is_new)
        j = keep[rr, ss] - self.k
        # Windows are cut only for candidates that actually enter the top-k.
        tok, act = windows(acts, tokens, mask, rows[rr], cb[rr, j], ct[rr, j], self.w)
        new = {"values": cv[rr, j], "context": cb[rr, j].astype(np.int64) + first_context,
               "position": ct[rr, j].astype(np.int32), "tokens": tok, "acts": act}
        src = np.where(is_new, 0, keep)
        for key, store in self.s.items():
            block = np.take_along_axis(old[key], _expand(src, old[key].ndim), axis=1)
            block[rr, ss] = new[key]
            store[rows] = block

    def result(self) -> Examples:
        """Examples sorted by value, best first; empty slots last with value NaN."""
        return _sorted(self.s, -self.s["values"])


def _expand(idx: np.ndarray, ndim: int) -> np.ndarray:
    return idx.reshape(idx.shape + (1,) * (ndim - 2))


def _sorted(store: dict, key: np.ndarray) -> Examples:
    order = np.argsort(key, axis=1, kind="stable")
    out = {k: np.take_along_axis(v, _expand(order, v.ndim), axis=1) for k, v in store.items()}
    empty = ~np.isfinite(out["values"])
    out["values"] = np.where(empty, np.nan, out["values"]).astype(np.float32)
    out["context"] = np.where(empty, -1, out["context"])
    return Examples(**{k: out[k] for k in Examples._fields})


class QuantileSampler:
    """Uniform samples of ``s`` firing tokens per (feature, activation bin)."""

    def __init__(self, edges: np.ndarray, s: int, window: int, seed: int = 0):
        self.edges = np.asarray(edges, np.float64)                        # [m, n_bins + 1]
        self.m, self.nb = self.edges.shape[0], self.edges.shape[1] - 1
        self.n, self.w = int(s), int(window)
        self.rng = np.random.default_rng(seed)
        self.s = _empty(self.m * self.nb, self.n, 2 * self.w + 1)
        self.s["priority"] = np.full((self.m * self.nb, self.n), np.inf)

    def bins(self, feat: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """Bin of each (feature, value); -1 outside [edges[0], edges[-1]] (step 1)."""
        e = self.edges[feat]
        q = (vals[:, None] >= e[:, 1:self.nb]).sum(axis=1)
        inside = (vals >= e[:, 0]) & (vals <= e[:, -1])
        return np.where(inside, q, -1)

    def update(self, acts: np.ndarray, mask: np.ndarray, tokens: np.ndarray, first_context: int) -> None:
        """Merge one batch (step 2)."""
        b, t, f = np.nonzero(mask[..., None] & (acts > 0))
        vals = acts[b, t, f]
        q = self.bins(f, vals)
        ok = q >= 0
        b, t, f, vals, g = b[ok], t[ok], f[ok], vals[ok], (f * self.nb + q)[ok]
        pri = self.rng.random(g.size)
        # Only a priority below its group's current n-th smallest can enter (inf: not full).
        keep = np.nonzero(pri < self.s["priority"][g].max(axis=1))[0]
        keep = keep[_bottom(g[keep], pri[keep], self.n)]                  # at most n per group
        b, t, f, vals, g, pri = b[keep], t[keep], f[keep], vals[keep], g[keep], pri[keep]
        if g.size == 0:
            return
        touched = np.unique(g)
        old_p = self.s["priority"][touched]                              # [G_t, n]
        gg = np.concatenate([np.repeat(touched, self.n), g])
        pp = np.concatenate([old_p.ravel(), pri])
        sel = _bottom(gg, pp, self.n)
        sel = sel[np.isfinite(pp[sel])]
        # Rank of each kept entry within its group gives its slot.
        order = np.lexsort((pp[sel], gg[sel]))
        sel = sel[order]
        gs = gg[sel]
        slot = np.arange(sel.size) - np.searchsorted(gs, gs, side="left")
        from_old = sel < old_p.size
        tok, act = windows(acts, tokens, mask, f, b, t, self.w)
        new = {"values": vals, "context": b.astype(np.int64) + first_context, "position": t.astype(np.int32),
               "tokens": tok, "acts": act, "priority": pri}
        j = sel - old_p.size
        for key, store in self.s.items():
            src_old = store[touched].reshape((-1,) + store.shape[2:])   # [G_t * n, ...]
            out = np.empty((sel.size,) + store.shape[2:], store.dtype)
            out[from_old] = src_old[sel[from_old]]
            out[~from_old] = new[key][j[~from_old]]
            store[gs, slot] = out

    def result(self) -> Examples:
        """Examples per row g = feature·n_bins + bin, ordered by activation (descending)."""
        store = {k: v for k, v in self.s.items() if k != "priority"}
        return _sorted(store, -store["values"])


def _bottom(group: np.ndarray, priority: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` smallest priorities within each group."""
    order = np.lexsort((priority, group))
    gs = group[order]
    rank = np.arange(gs.size) - np.searchsorted(gs, gs, side="left")
    return order[rank < n]
