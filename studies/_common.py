"""Shared helpers of the studies: data, training with held-out learning curves, outputs.

  1. Data. ``unit_scale`` (the trainer's normalisation, computed once on the training rows so
     train and eval share it; studies then train with ``normalize=False``, so checkpoints and
     returned dictionaries are in the same units as the data). ``OrderedSource`` yields
     contiguous rows in stream order (no shuffling) for the shuffling study.
  2. Evaluation. ``evaluate_np`` runs a dictionary on held-out rows and returns FVU
     (sum of squared errors / total variance about the eval mean), mean L0 and the latents
     that fired.
  3. Training with a learning curve. ``train_with_curve`` calls the public ``sae.train``
     with ``checkpoint_every = log_every = eval_every``; the trainer writes the checkpoint
     of step s before it calls the progress callback for step s, so the callback reads the
     dictionary's parameters from the checkpoint (layout documented in
     ``sae.train.checkpoint``: ``t0.p.<name>``), checks the recorded step equals the
     callback's step, and evaluates it on the held-out rows.
  4. Outputs. ``save_figure`` writes PNG + SVG atomically; ``write_outputs`` writes
     ``results.json`` and ``results.md`` atomically.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

import sae  # noqa: F401  (our BLAS preload must precede mlx)
import mlx.core as mx  # noqa: E402

from attribution.sites import Site  # noqa: E402
from sae.arch import ARCHITECTURES  # noqa: E402
from sae.errors import SAEError  # noqa: E402
from sae.train import TrainConfig, train  # noqa: E402
from sae.train.checkpoint import CKPT_NAME, read_state  # noqa: E402
from viz._atomic import atomic_write_bytes, atomic_write_text  # noqa: E402

SITE = Site(0, "resid_post")
"""The (nominal) site every study's SAE reads and writes."""
TC_IN, TC_OUT = Site(0, "mlp_in"), Site(0, "mlp_out")
"""The (nominal) sites of the transcoders."""


class StudyError(ValueError):
    """Bad study input (one line naming the problem and the fix)."""


# ---- data ------------------------------------------------------------------------------
def unit_scale(x: np.ndarray) -> float:
    """s with E||s x|| = sqrt(d) over the rows of x (the trainer's normalisation)."""
    mean_norm = float(np.linalg.norm(x, axis=1).mean())
    if not mean_norm > 0:
        raise StudyError("activations are all zero; cannot normalise")
    return math.sqrt(x.shape[1]) / mean_norm


class OrderedSource:
    """Rows in stream order: batch i is rows [i*b, (i+1)*b) (wrapping), whatever the seed.

    The unshuffled counterpart of ``sae.data.ArraySource`` (same protocol)."""

    def __init__(self, arrays: dict):
        self.arrays = {Site.parse(k): np.asarray(v, np.float32) for k, v in arrays.items()}
        ns = {a.shape[0] for a in self.arrays.values()}
        if len(ns) != 1 or 0 in ns:
            raise StudyError(f"OrderedSource needs aligned non-empty arrays, got rows {sorted(ns)}")
        self.n = ns.pop()
        self.sites = tuple(self.arrays)
        self.dims = {s: a.shape[1] for s, a in self.arrays.items()}

    def batches(self, batch_tokens: int, seed: int) -> Iterator[dict]:
        del seed  # order is the point: no shuffling
        start = 0
        while True:
            idx = (start + np.arange(batch_tokens)) % self.n
            start = (start + batch_tokens) % self.n
            yield {s: a[idx] for s, a in self.arrays.items()}


# ---- evaluation -------------------------------------------------------------------------
def evaluate_np(d, x: np.ndarray, y: np.ndarray | None = None, batch: int = 4096) -> dict:
    """{"fvu", "l0", "fired" [width] bool} of dictionary ``d`` on rows x (targets y, default x)."""
    y = x if y is None else y
    err, l0 = 0.0, 0.0
    fired = np.zeros(d.width, bool)
    for s in range(0, x.shape[0], batch):
        xb = mx.array(x[s:s + batch])
        f = d.encode(xb)
        y_hat = d.decode(f)
        if d.W_skip is not None:
            y_hat = y_hat + xb @ d.W_skip
        mx.eval(f, y_hat)
        fn = np.array(f)
        err += float(((np.array(y_hat, np.float64) - y[s:s + batch]) ** 2).sum())
        l0 += float((fn > 0).sum())
        fired |= (fn > 0).any(axis=0)
    var = float(((y - y.mean(0, dtype=np.float64)) ** 2).sum())
    return {"fvu": err / var, "l0": l0 / x.shape[0], "fired": fired}


def template(cfg: TrainConfig, d_in: int, d_out: int):
    """An untrained dictionary built exactly as ``sae.train.trainee.build_trainees`` builds it."""
    si, so = cfg.sites[0], cfg.target_sites()[0]
    m = cfg.width_for(d_in)
    return ARCHITECTURES[cfg.arch](d_in, m, d_out=d_out, in_site=si, out_site=so,
                                    skip=cfg.kind == "skip_transcoder",
                                    apply_b_dec_to_input=cfg.kind == "sae", **cfg.dict_kwargs(m))


# ---- training with a held-out curve ------------------------------------------------------
def train_with_curve(source, cfg: TrainConfig, x_eval: np.ndarray, y_eval: np.ndarray | None,
                     eval_every: int, progress: Callable | None = None):
    """(TrainResult, curve) training one dictionary; curve rows: step, tokens, fvu, l0, dead.

    ``cfg.normalize`` must be False (the studies normalise the data once themselves, so the
    checkpoint's parameters are in the data's units); ``dead`` is the fraction of latents that
    fired on none of the eval rows."""
    if cfg.normalize:
        raise StudyError("train_with_curve needs normalize=False (normalise the data first)")
    y_eval = x_eval if y_eval is None else y_eval
    tpl = template(cfg, x_eval.shape[1], y_eval.shape[1])
    curve: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="study-ckpt-") as tmp:
        def on_log(p) -> None:
            state = read_state(tmp)
            if state is None or int(state["step"]) != p.step:
                raise StudyError(f"checkpoint step {None if state is None else state['step']} "
                                 f"!= logged step {p.step}; the trainer's checkpoint/log order "
                                 "changed, update studies._common.train_with_curve")
            raw = mx.load(str(Path(tmp) / CKPT_NAME))
            tpl.load_arrays({k[len("t0.p."):]: v for k, v in raw.items() if k.startswith("t0.p.")})
            ev = evaluate_np(tpl, x_eval, y_eval)
            curve.append({"step": p.step, "tokens": p.tokens, "fvu": ev["fvu"], "l0": ev["l0"],
                          "dead": float(1.0 - ev["fired"].mean())})
            if progress is not None:
                progress(f"  step {p.step}/{p.total_steps} fvu {ev['fvu']:.4f} l0 {ev['l0']:.1f}")

        cfg2 = _replace(cfg, log_every=eval_every)
        res = train(source, cfg2, callback=on_log, checkpoint_dir=tmp, checkpoint_every=eval_every)
    return res, curve


def _replace(cfg, **kw):
    from dataclasses import replace
    return replace(cfg, **kw)


# ---- outputs ------------------------------------------------------------------------------
def save_figure(fig, out_dir, stem: str) -> list[str]:
    """Write ``fig`` as <stem>.png and <stem>.svg atomically; returns the file names."""
    names = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        # svg.hashsalt + no date metadata: the same figure gives the same bytes
        fig.savefig(buf, format=ext, dpi=110, bbox_inches="tight",
                    metadata={"Date": None} if ext == "svg" else None)
        atomic_write_bytes(Path(out_dir) / f"{stem}.{ext}", buf.getvalue())
        names.append(f"{stem}.{ext}")
    return names


def save_arrays(path, arrays: dict, metadata: dict | None = None) -> None:
    """float32 arrays to one safetensors file, written atomically."""
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()},
                metadata={k: str(v) for k, v in (metadata or {}).items()})
    atomic_write_bytes(path, data)


def new_figure(ncols: int = 1, nrows: int = 1, size=(5.0, 3.6)):
    """A matplotlib (Agg) figure and its axes array."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams["svg.hashsalt"] = "studies"
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             squeeze=False)
    return fig, axes


def close(fig) -> None:
    import matplotlib.pyplot as plt
    plt.close(fig)


def write_outputs(out_dir, results: dict, markdown: str) -> None:
    """results.json (sorted keys) and results.md, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(_jsonable(results), indent=1,
                                                       sort_keys=True) + "\n")
    atomic_write_text(out / "results.md", markdown)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    return v


def md_table(rows: list[dict], cols: list[str], fmt: dict | None = None) -> str:
    """A markdown table of ``rows`` over ``cols`` (``fmt``: column -> format spec)."""
    fmt = fmt or {}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(format(v, fmt[c]) if c in fmt and isinstance(v, (int, float)) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cli(name: str, run: Callable, configs: dict, argv=None) -> int:
    """The shared ``__main__``: ``--size full|small`` and ``--out``; prints progress."""
    import argparse
    import sys
    import time

    ap = argparse.ArgumentParser(description=f"study: {name}")
    ap.add_argument("--size", choices=sorted(configs), default="full")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / name),
                    help="output folder (default studies/results/<study>)")
    a = ap.parse_args(argv)
    t0 = time.time()
    try:
        res = run(configs[a.size](), a.out, progress=lambda s: print(s, flush=True))
    except (StudyError, SAEError) as e:  # bad input: one line, no traceback, no partial file
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done in {time.time() - t0:.0f} s -> {a.out} ({len(res)} result keys)")
    return 0
