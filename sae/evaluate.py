"""Dictionary evaluation on held-out activations.

For each dictionary, accumulated over all evaluation tokens (float64 on the host):
  1. L0 = mean number of active latents per token.
  2. FVU = sum ||y - y^||^2 / sum ||y - y_bar||^2, y_bar the per-dimension mean of y
     over all evaluated tokens (the evaluation set is one batch); 1 - FVU is the
     explained variance. For a CLT the sums run over every target layer.
  3. cosine = mean over tokens of cos(y, y^).
  4. relative reconstruction bias = E||y^||^2 / E[y . y^] (1 = unbiased, < 1 shrinkage).
  5. density_i = fraction of tokens on which latent i fires; dense = density > 0.1;
     ``log10_density`` histogram over live latents.
  6. dead_frac = ``dead_fraction(tokens_since_fired, dead_window)``: the fraction of
     latents that fired on none of the last ``dead_window`` tokens. This is the one
     definition the training log uses too: ``tokens_since_fired`` is kept per batch
     exactly as the trainer keeps it (0 where a latent fired in the batch, else + batch
     size), and ``dead_window`` defaults to every evaluated token (so dead = never fired
     on the evaluation set) while training logs min(dead_tokens, tokens seen). The row
     records ``dead_window``. (BatchTopK fires by batch top-k in training but by its
     inference threshold here, so the two encoders differ for that architecture.)
Results: one pandas DataFrame row per dictionary.
"""

from __future__ import annotations

from collections.abc import Mapping

import mlx.core as mx
import numpy as np
import pandas as pd

from sae.arch import CrossLayerTranscoder
from sae.data.source import ActivationSource
from sae.errors import EmptyDatasetError


class _Acc:
    def __init__(self, width: int):
        self.n = 0
        self.err = self.sq = self.cos = self.l0 = self.hat_sq = self.dot = 0.0
        self.sum_y = None
        self.fires = np.zeros(width, np.int64)
        self.silent = np.zeros(width, np.int64)  # tokens since each latent last fired

    def add(self, ys, yhs, f) -> None:
        # NaN/inf in a broken dictionary's output become NaN/inf metrics that callers check;
        # numpy's RuntimeWarnings about them would only add noise.
        with np.errstate(all="ignore"):
            self._add(ys, yhs, f)

    def _add(self, ys, yhs, f) -> None:
        for y, yh in zip(ys, yhs):
            y64, yh64 = np.asarray(y, np.float64), np.asarray(yh, np.float64)
            self.err += float(((y64 - yh64) ** 2).sum())
            self.sq += float((y64 ** 2).sum())
            s = y64.sum(0)
            self.sum_y = s if self.sum_y is None else self.sum_y + s
            num = (y64 * yh64).sum(1)
            den = np.linalg.norm(y64, axis=1) * np.linalg.norm(yh64, axis=1)
            self.cos += float((num / np.maximum(den, 1e-12)).sum()) / len(ys)
            self.hat_sq += float((yh64 ** 2).sum())
            self.dot += float(num.sum())
        fa = np.asarray(f).reshape(f.shape[0], -1) > 0
        self.fires += fa.sum(0)
        self.silent = np.where(fa.any(0), 0, self.silent + f.shape[0])  # the trainer's rule
        self.l0 += float(fa.sum())
        self.n += f.shape[0]


def _predict(d, batch: dict):
    if isinstance(d, CrossLayerTranscoder):
        xs = [mx.array(batch[s]) for s in d.in_sites]
        f = d.encode(xs)
        return [batch[s] for s in d.out_sites], d.decode(f), f
    x = mx.array(batch[d.in_site])
    f = d.encode(x)
    y_hat = d.decode(f)
    if d.W_skip is not None:
        y_hat = y_hat + x @ d.W_skip
    return [batch[d.out_site]], [y_hat], f


def dead_fraction(tokens_since_fired, window: int) -> float:
    """Fraction of latents that fired on none of the last ``window`` tokens.

    ``tokens_since_fired`` [n_latents]: tokens seen since each latent last fired (the
    trainer's counter, or ``evaluate``'s). The one definition of a dead latent shared by
    the training log and ``evaluate``."""
    tsf = np.asarray(tokens_since_fired)
    if tsf.size == 0:
        return float("nan")
    return float((tsf >= max(int(window), 1)).mean())


def evaluate(dicts, source, n_tokens: int = 2 ** 14, batch_tokens: int = 4096, seed: int = 1,
             names: list | None = None, histogram_bins: int = 20,
             dead_window: int | None = None) -> pd.DataFrame:
    """Metrics per dictionary on ``n_tokens`` tokens of ``source`` (ActivationSource or
    a {Site: [N,d]} mapping, which is read once in order).

    ``dead_window``: tokens a latent must stay silent to count as dead (default, and at
    most: every evaluated token)."""
    items = list(dicts.values()) if isinstance(dicts, Mapping) else list(dicts)
    if names is None:
        names = [str(k) for k in dicts] if isinstance(dicts, Mapping) else [
            _name(d) for d in items]
    accs = [_Acc(d.width * getattr(d, "n_layers", 1)) for d in items]
    for batch in _batches(source, n_tokens, batch_tokens, seed):
        for d, acc in zip(items, accs):
            ys, yhs, f = _predict(d, batch)
            mx.eval(yhs, f)
            acc.add(ys, [np.array(y) for y in yhs], np.array(f))
    if accs and accs[0].n == 0:
        raise EmptyDatasetError("no evaluation tokens")
    rows = [_row(n, d, a, histogram_bins, dead_window) for n, d, a in zip(names, items, accs)]
    return pd.DataFrame(rows).set_index("name")


def _name(d) -> str:
    if isinstance(d, CrossLayerTranscoder):
        return f"clt/{d.in_sites[0]}..{d.in_sites[-1]}"
    return f"{d.arch}/{d.in_site}" + ("" if d.out_site == d.in_site else f"->{d.out_site}")


def _batches(source, n_tokens, batch_tokens, seed):
    if isinstance(source, ActivationSource):
        got = 0
        for b in source.batches(batch_tokens, seed):
            yield b
            got += batch_tokens
            if got >= n_tokens:
                return
        return
    arrays = {k: np.asarray(v, np.float32).reshape(-1, np.shape(v)[-1]) for k, v in source.items()}
    n = min(n_tokens, min(a.shape[0] for a in arrays.values()))
    for s in range(0, n, batch_tokens):
        yield {k: a[s:min(n, s + batch_tokens)] for k, a in arrays.items()}


def _row(name, d, a: _Acc, bins: int, dead_window: int | None = None) -> dict:
    with np.errstate(all="ignore"):  # see _Acc.add
        return _row_values(name, d, a, bins, dead_window)


def _row_values(name, d, a: _Acc, bins: int, dead_window: int | None) -> dict:
    n_targets = len(d.out_sites) if isinstance(d, CrossLayerTranscoder) else 1
    total = a.n * n_targets
    var = a.sq - float((a.sum_y ** 2).sum()) / a.n if a.sum_y is not None else 0.0
    density = a.fires / max(a.n, 1)
    window = a.n if dead_window is None else min(int(dead_window), a.n)
    live = density[density > 0]
    hist, edges = np.histogram(np.log10(live), bins=bins, range=(-8, 0)) if live.size else (
        np.zeros(bins, np.int64), np.linspace(-8, 0, bins + 1))
    return {"name": name, "arch": d.arch, "width": int(density.size), "tokens": a.n,
            "l0": a.l0 / max(a.n, 1), "fvu": a.err / var if var > 0 else float("nan"),
            "mse": a.err / max(total, 1), "cosine": a.cos / max(a.n, 1),
            "rel_bias": a.hat_sq / a.dot if a.dot else float("nan"),
            "dead_frac": dead_fraction(a.silent, window), "dead_window": window,
            "dense_frac": float((density > 0.1).mean()),
            "log10_density_hist": hist.tolist(), "log10_density_edges": edges.tolist(),
            "log10_density": np.log10(np.maximum(density, 1e-10)).tolist()}


def feature_density(d, source, n_tokens: int = 2 ** 14, batch_tokens: int = 4096) -> np.ndarray:
    """Fraction of tokens on which each latent fires [width] (CLT: [L*width]); 1e-10 = never."""
    row = evaluate([d], source, n_tokens, batch_tokens).iloc[0]
    return 10.0 ** np.asarray(row["log10_density"])
