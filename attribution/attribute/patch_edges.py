"""Feature-to-feature edges by patching-style methods (attribution patching, IG, exact patching).

Edge u -> v estimates a_v(u ablated) - a_v(clean): the change of downstream feature
v's activation (spliced, unfrozen model; error terms held at their clean values)
when source node u (a feature or an error node) takes its ablated value.
  1. Targets: every feature node; its activation is read from the live latents of
     the spliced forward (before edits), so only features at later layers respond.
  2. ``patching``: the node-patching forwards (one copy of the prompt per source)
     also read every target: the column of u is a(u patched) - a(clean) (exact).
  3. ``atp``: one backward per batch of targets (a copy of the prompt per target),
     seeded with that target's activation: edge = d a_v / d u . (ablated - clean).
  4. ``ig``: per source layer l, the layer's nodes move jointly to
     clean + alpha (ablated - clean) at midpoints alpha_k = (k+1/2)/steps; per batch of
     targets above l the gradient is averaged over the steps: edge = mean grad . delta.
  5. AtP and IG rows are streamed into a ``SparseRowBuilder`` (top-k / threshold) one
     target batch at a time, so memory grows with the edges kept. Patching produces
     columns, so its edges pass through one dense float64 [targets, nodes] block
     (refused above ``max_bytes``) before the same builder.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from attribution.graph.errors import GraphMemoryError


class Targets:
    """Feature nodes read as targets: node indices and (layer, pos, feature) per layer."""

    def __init__(self, where: list) -> None:
        self.node = np.array([i for i, w in enumerate(where) if w[0] == "f"], dtype=np.int64)
        self.layer = np.array([where[i][1] for i in self.node], dtype=np.int64)
        self.by_layer = {}
        for l in sorted(set(self.layer.tolist())):
            cols = np.flatnonzero(self.layer == l)
            pos = np.array([where[self.node[c]][2] for c in cols])
            feat = np.array([where[self.node[c]][3] for c in cols])
            self.by_layer[l] = (cols, mx.array(pos), mx.array(feat))

    def __len__(self) -> int:
        return len(self.node)

    def read(self, live: dict) -> mx.array:
        """[B, n_targets] activations of every target in each copy."""
        parts = [live[l][:, pos, feat] for l, (_, pos, feat) in self.by_layer.items()]
        order = np.concatenate([c for c, _, _ in self.by_layer.values()])
        out = mx.concatenate(parts, axis=1)
        return out[:, mx.array(np.argsort(order))]


class Sources:
    """Source nodes per layer: node indices, positions, features and deltas (ablated - clean)."""

    def __init__(self, where: list, state, f_abl: dict, e_abl: dict) -> None:
        self.feat, self.err = {}, {}
        for l in state.acts:
            idx = [i for i, w in enumerate(where) if w[0] == "f" and w[1] == l]
            pos = np.array([where[i][2] for i in idx], dtype=np.int64)
            f = np.array([where[i][3] for i in idx], dtype=np.int64)
            d = np.asarray(f_abl[l] - state.acts[l])
            self.feat[l] = (np.array(idx, dtype=np.int64), mx.array(pos), mx.array(f),
                            mx.array(d[pos, f]) if len(idx) else mx.zeros((0,)))
        for l in state.error:
            idx = [i for i, w in enumerate(where) if w[0] == "e" and w[1] == l]
            pos = np.array([where[i][2] for i in idx], dtype=np.int64)
            self.err[l] = (np.array(idx, dtype=np.int64), mx.array(pos),
                           (e_abl[l] - state.error[l])[mx.array(pos)])

    def contract(self, gf: dict, ge: dict, n_nodes: int) -> np.ndarray:
        """[B, n_nodes] gradient . delta for every source, from per-layer gradients."""
        b = next(iter(gf.values())).shape[0] if gf else next(iter(ge.values())).shape[0]
        out = np.zeros((b, n_nodes))
        for l, g in gf.items():
            idx, pos, f, d = self.feat[l]
            if len(idx):
                out[:, idx] = np.asarray(g[:, pos, f] * d[None], dtype=np.float64)
        for l, g in ge.items():
            idx, pos, d = self.err[l]
            if len(idx):
                out[:, idx] = np.asarray((g[:, pos] * d[None]).sum(-1), dtype=np.float64)
        return out


def _check_size(n_targets: int, n_nodes: int, max_bytes: int) -> None:
    need = n_targets * n_nodes * 8
    if need > max_bytes:
        raise GraphMemoryError(
            f"feature edges need a dense {n_targets} x {n_nodes} float64 block ({need / 2**30:.1f} GiB "
            f"> {max_bytes / 2**30:.1f} GiB); raise GraphConfig.feature_threshold, use a shorter "
            "prompt, or build the exact graph (method='exact'), whose rows stream")


def patching_columns(m, state, f_abl, e_abl, where, batch: int, targets: Targets | None = None,
                     n_nodes: int = 0, max_bytes: int = 2 ** 31):
    """(metric scores [n_sources], edge block [n_targets, n_nodes] or None) by exact patching."""
    t = state.tokens.shape[1]
    block = None
    if targets is not None:
        _check_size(len(targets), n_nodes, max_bytes)
        block = np.zeros((len(targets), n_nodes))
    scores = np.zeros(len(where))
    for s in range(0, len(where), batch):
        chunk = where[s: s + batch]
        b = len(chunk)
        df = {l: np.zeros((b + 1, t, a.shape[-1]), np.float32) for l, a in state.acts.items()}
        de = {l: np.zeros((b + 1, t, e.shape[-1]), np.float32) for l, e in state.error.items()}
        for r, (kind, l, p, f) in enumerate(chunk):
            if kind == "f":
                df[l][r, p, f] = float(f_abl[l][p, f] - state.acts[l][p, f])
            else:
                de[l][r, p] = np.asarray(e_abl[l][p] - state.error[l][p])
        # The last copy is unpatched: differences are taken within one batched forward.
        metric, out = m.run({l: mx.array(v) for l, v in df.items()},
                            {l: mx.array(v) for l, v in de.items()})
        vals = np.asarray(metric, dtype=np.float64)
        scores[s: s + b] = vals[:-1] - vals[-1]
        if targets is not None and len(targets):
            a = np.asarray(targets.read(out.live), dtype=np.float64)
            cols = (a[:-1] - a[-1]).T
            # A source reaches only targets at later layers. The rows of one batched
            # forward can still differ by an ulp (BLAS kernels treat tail rows of a GEMM
            # differently), so structural zeros are set exactly, as the exact graph does.
            src_layer = np.array([l for _, l, _, _ in chunk])
            cols[targets.layer[:, None] <= src_layer[None, :]] = 0.0
            block[:, s: s + b] = cols
    return scores, block


def _target_batches(targets: Targets, batch: int, above: int = -1):
    cols = np.flatnonzero(targets.layer > above)
    for s in range(0, len(cols), batch):
        yield cols[s: s + batch]


def _grad_block(m, targets: Targets, cols: np.ndarray, d_f: dict, d_e: dict):
    """Gradients of each copy's own target activation w.r.t. the latent / error deltas."""
    b = len(cols)
    sel = mx.array(cols)

    def obj(df, de):
        out = m.run(df, de)[1]
        return targets.read(out.live)[mx.arange(b), sel].sum()

    return mx.grad(obj, argnums=(0, 1))(d_f, d_e)


def atp_rows(m, state, sources: Sources, targets: Targets, batch: int, n_nodes: int):
    """Yields (target columns, [b, n_nodes] attribution-patching edge rows) per target batch."""
    for cols in _target_batches(targets, batch):
        b = len(cols)
        zf = {l: mx.zeros((b,) + a.shape) for l, a in state.acts.items()}
        ze = {l: mx.zeros((b,) + e.shape) for l, e in state.error.items()}
        gf, ge = _grad_block(m, targets, cols, zf, ze)
        yield cols, sources.contract(gf, ge, n_nodes)


def ig_rows(m, state, f_abl, e_abl, sources: Sources, targets: Targets, steps: int, batch: int,
            n_nodes: int):
    """Yields (target columns, [b, n_nodes] IG edge rows) per target batch: one path per
    source layer below the batch's deepest target (targets are ordered by layer)."""
    for cols in _target_batches(targets, batch):
        b = len(cols)
        rows = np.zeros((b, n_nodes))
        for l in state.acts:
            if l >= targets.layer[cols].max():
                continue  # no target of this batch reads layer l's output
            dfl, del_ = f_abl[l] - state.acts[l], e_abl[l] - state.error[l]
            gf_sum, ge_sum = mx.zeros((b,) + dfl.shape), mx.zeros((b,) + del_.shape)
            for k in range(steps):
                alpha = (k + 0.5) / steps
                d_f = {l: mx.broadcast_to(alpha * dfl, (b,) + dfl.shape)}
                d_e = {l: mx.broadcast_to(alpha * del_, (b,) + del_.shape)}
                gf, ge = _grad_block(m, targets, cols, d_f, d_e)
                gf_sum, ge_sum = gf_sum + gf[l], ge_sum + ge[l]
                mx.eval(gf_sum, ge_sum)
            rows += sources.contract({l: gf_sum / steps}, {l: ge_sum / steps}, n_nodes)
        yield cols, rows


__all__ = ["Sources", "Targets", "atp_rows", "ig_rows", "patching_columns"]
