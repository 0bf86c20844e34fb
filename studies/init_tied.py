"""Study: does initialising the encoder as the decoder's transpose reduce dead latents / FVU?

Today ``Dictionary.init_weights`` sets W_enc = W_dec^T whenever d_in == d_out (SAEs, and
transcoders between same-width sites). The alternative is an encoder drawn independently.

Algorithm:
  1. ``independent(cls)``: a subclass of an architecture whose ``init_weights`` runs the
     parent's (same W_dec, b_enc, b_dec for a given key) and then replaces W_enc by
     independent Gaussian columns of the same norm (``dec_init_norm``), drawn from the
     second half of the same key split the parent uses for non-square encoders.
     ``arch_init(arch, init)`` swaps it into ``sae.arch.ARCHITECTURES`` for the duration of
     a training call (restored afterwards), so the public ``sae.train`` builds it. (The
     ``sae.parts`` init part was not yet wired into ``TrainConfig`` when this was written.)
  2. Data: synthetic sparse codes (``sae.synthetic``, Zipf firing, magnitude spread) give
     SAE rows x = codes D_in + noise; transcoder pairs (x, y) share the codes with
     y = codes D_out for independent unit directions D_out (a known sparse map between two
     different spaces of the same width). Each site normalised once to E||x|| = sqrt(d).
  3. For every kind (sae, transcoder), architecture, init (tied, independent) and seed:
     check the step-0 dictionary (one step at LR 0: the initial weights through the real
     trainer path) for the mean cos(W_enc[:, i], W_dec[i]); then train with held-out
     curves (FVU, L0, dead = fraction of latents silent on all held-out rows).
  4. Report mean and spread over seeds of final FVU, dead fraction, L0 and the final
     encoder/decoder alignment; figures of dead fraction and FVU vs tokens.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from studies import _common as C  # before mlx: our BLAS preload
import mlx.core as mx  # noqa: E402
from sae import arch as sae_arch
from sae.data.source import ArraySource
from sae.synthetic import SyntheticConfig, make_truth, sample
from sae.train import TrainConfig, train

INITS = ("tied", "independent")


def independent(cls):
    """``cls`` with an encoder initialised independently of the decoder (module docstring, 1)."""

    class Independent(cls):
        __doc__ = f"{cls.__name__} with W_enc drawn independently of W_dec."

        def init_weights(self, key, b_dec=None):
            super().init_weights(key, b_dec)
            _, k2 = mx.random.split(key)
            e = mx.random.normal((self.d_in, self.width), key=k2)
            self.W_enc = e / mx.sqrt((e * e).sum(0, keepdims=True)) * self.dec_init_norm

    Independent.__name__ = Independent.__qualname__ = f"Independent{cls.__name__}"
    return Independent


@contextlib.contextmanager
def arch_init(arch: str, init: str):
    """Inside the block, ``sae.train`` builds ``arch`` dictionaries with the given init."""
    if init not in INITS:
        raise C.StudyError(f"unknown init {init!r}; use tied or independent")
    base = sae_arch.ARCHITECTURES[arch]
    if init == "tied":
        yield
        return
    sae_arch.ARCHITECTURES[arch] = independent(base)
    try:
        yield
    finally:
        sae_arch.ARCHITECTURES[arch] = base


@dataclass(frozen=True)
class InitConfig:
    """Size of the init study."""

    d: int = 64
    """Width of every site."""
    n_features: int = 512
    """True features."""
    mean_l0: float = 8.0
    """Expected active true features per row."""
    noise_std: float = 0.02
    """Input noise (SAE rows and transcoder inputs)."""
    kinds: tuple = ("sae", "transcoder")
    """Dictionary kinds."""
    archs: tuple = ("topk", "relu")
    """Architectures."""
    width: int = 1024
    """Latents."""
    k: int = 8
    """k of topk / batchtopk."""
    relu_coef: float = 5.0
    """L1 coefficient of relu (the library default)."""
    total_tokens: int = 2 ** 18
    """Training tokens (distinct rows, one epoch)."""
    batch_tokens: int = 1024
    """Tokens per step."""
    lr: float = 1e-3
    """Adam LR."""
    seeds: tuple = (0, 1, 2)
    """Training seeds (initialisation and data order; the data stay fixed)."""
    eval_rows: int = 8192
    """Held-out rows."""
    n_evals: int = 8
    """Points on each curve."""
    data_seed: int = 0
    """Seed of the synthetic truth and rows."""


def full() -> InitConfig:
    return InitConfig()


def small() -> InitConfig:
    return InitConfig(d=16, n_features=64, mean_l0=3.0, archs=("topk",), width=64, k=3,
                      total_tokens=2048, batch_tokens=256, lr=3e-3, seeds=(0, 1), eval_rows=512,
                      n_evals=2)


def make_data(cfg: InitConfig) -> dict:
    """{"x", "y", "x_eval", "y_eval"}: SAE rows x; transcoder pairs (x, y), normalised."""
    truth = make_truth(SyntheticConfig(d=cfg.d, n_features=cfg.n_features, mean_l0=cfg.mean_l0,
                                       zipf_alpha=1.0, max_prob=0.3, magnitude_spread=0.3,
                                       seed=cfg.data_seed))
    rng = np.random.default_rng([cfg.data_seed, 5])
    d_out = rng.standard_normal((cfg.n_features, cfg.d)).astype(np.float32)
    d_out /= np.linalg.norm(d_out, axis=1, keepdims=True)

    def rows(n, index):
        b = sample(truth, n, index, return_codes=True)
        x = b.x + cfg.noise_std * np.random.default_rng([cfg.data_seed, 6, index]).standard_normal(
            b.x.shape).astype(np.float32)
        return x, b.codes @ d_out

    parts = [rows(min(8192, cfg.total_tokens - s), i)
             for i, s in enumerate(range(0, cfg.total_tokens, 8192))]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    xe, ye = rows(cfg.eval_rows, 10 ** 6)
    sx, sy = C.unit_scale(x), C.unit_scale(y)
    return {"x": x * sx, "y": y * sy, "x_eval": xe * sx, "y_eval": ye * sy}


def _train_cfg(cfg: InitConfig, kind: str, arch: str, seed: int, **kw) -> TrainConfig:
    sites = dict(sites=(C.SITE,)) if kind == "sae" else dict(sites=(C.TC_IN,), targets=(C.TC_OUT,))
    base = TrainConfig(kind=kind, arch=arch, width=cfg.width, k=cfg.k,
                       total_tokens=cfg.total_tokens, batch_tokens=cfg.batch_tokens, lr=cfg.lr,
                       warmup_steps=max(1, cfg.total_tokens // cfg.batch_tokens // 20),
                       sparsity_coef=cfg.relu_coef if arch == "relu" else None,
                       normalize=False, seed=seed, **sites)
    return replace(base, **kw)


def _source(kind: str, data: dict):
    if kind == "sae":
        return ArraySource({C.SITE: data["x"]})
    return ArraySource({C.TC_IN: data["x"], C.TC_OUT: data["y"]})


def alignment(d) -> float:
    """Mean over latents of cos(W_enc[:, i], W_dec[i]) (1 for a tied init)."""
    e = np.array(d.W_enc, np.float64).T
    w = np.array(d.W_dec, np.float64)
    if e.shape != w.shape:
        return float("nan")
    num = (e * w).sum(1)
    den = np.linalg.norm(e, axis=1) * np.linalg.norm(w, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-30)))


def initial_dictionary(cfg: InitConfig, kind: str, arch: str, init: str, seed: int, data: dict):
    """The dictionary as the trainer initialises it: one step at LR 0 (no update)."""
    with arch_init(arch, init):
        c = _train_cfg(cfg, kind, arch, seed, lr=0.0, total_tokens=cfg.batch_tokens,
                       warmup_steps=0)
        return train(_source(kind, data), c).dictionaries[0]


def run(cfg: InitConfig, out_dir, progress=None) -> dict:
    """Train the grid (kind x arch x init x seed), write figures and results."""
    say = progress or (lambda s: None)
    steps = cfg.total_tokens // cfg.batch_tokens
    if steps < cfg.n_evals:
        raise C.StudyError(f"{steps} steps < n_evals={cfg.n_evals}; raise total_tokens")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = make_data(cfg)
    runs = []
    for kind in cfg.kinds:
        ye = None if kind == "sae" else data["y_eval"]
        for arch in cfg.archs:
            for init in INITS:
                for seed in cfg.seeds:
                    d0 = initial_dictionary(cfg, kind, arch, init, seed, data)
                    t0 = time.time()
                    with arch_init(arch, init):
                        res, curve = C.train_with_curve(
                            _source(kind, data), _train_cfg(cfg, kind, arch, seed),
                            data["x_eval"], ye, max(1, steps // cfg.n_evals))
                    d = res.dictionaries[0]
                    if type(d).__name__.startswith("Independent") != (init == "independent"):
                        raise C.StudyError(f"the trainer built {type(d).__name__} for init "
                                           f"{init}; sae.train no longer reads ARCHITECTURES")
                    runs.append({"kind": kind, "arch": arch, "init": init, "seed": seed,
                                 "align_step0": alignment(d0), "align_final": alignment(d),
                                 "curve": curve, "fvu": curve[-1]["fvu"], "l0": curve[-1]["l0"],
                                 "dead": curve[-1]["dead"],
                                 "train_dead_frac": res.history[-1]["dead_frac"],
                                 "train_s": time.time() - t0})
                    say(f"{kind} {arch} {init} seed {seed}: fvu {curve[-1]['fvu']:.4f} "
                        f"dead {curve[-1]['dead']:.3f} l0 {curve[-1]['l0']:.1f} "
                        f"align0 {runs[-1]['align_step0']:.2f} ({time.time() - t0:.0f} s)")
    summary = _summary(cfg, runs)
    results = {"config": asdict(cfg), "runs": runs, "summary": summary}
    figs = _figures(cfg, runs, out)
    C.write_outputs(out, results, _markdown(cfg, summary, figs))
    return results


def _summary(cfg, runs) -> list[dict]:
    rows = []
    for kind in cfg.kinds:
        for arch in cfg.archs:
            for init in INITS:
                rs = [r for r in runs if (r["kind"], r["arch"], r["init"]) == (kind, arch, init)]
                row = {"kind": kind, "arch": arch, "init": init, "seeds": len(rs)}
                for m in ("fvu", "dead", "l0", "align_step0", "align_final"):
                    v = np.array([r[m] for r in rs], np.float64)
                    row[m] = float(v.mean())
                    row[f"{m}_sd"] = float(v.std(ddof=1)) if v.size > 1 else 0.0
                rows.append(row)
    return rows


def _figures(cfg, runs, out) -> list[str]:
    fig, axes = C.new_figure(ncols=2, nrows=len(cfg.kinds))
    colors = {"tied": "tab:blue", "independent": "tab:orange"}
    styles = dict(zip(cfg.archs, ["-", "--", ":", "-."]))
    for i, kind in enumerate(cfg.kinds):
        for r in runs:
            if r["kind"] != kind:
                continue
            t = [p["tokens"] for p in r["curve"]]
            lab = f"{r['arch']} {r['init']}" if r["seed"] == cfg.seeds[0] else None
            kw = dict(color=colors[r["init"]], ls=styles[r["arch"]], alpha=0.8, label=lab)
            axes[i][0].plot(t, [p["dead"] for p in r["curve"]], **kw)
            axes[i][1].plot(t, [p["fvu"] for p in r["curve"]], **kw)
        axes[i][0].set_ylabel(f"{kind}: dead fraction (held-out)")
        axes[i][1].set_ylabel(f"{kind}: held-out FVU")
        axes[i][1].set_yscale("log")
        for ax in axes[i]:
            ax.set_xlabel("training tokens")
        axes[i][0].legend(fontsize=8)
    names = C.save_figure(fig, out, "init_curves")
    C.close(fig)
    return names


def _markdown(cfg, summary, figs) -> str:
    ans = []
    for kind in cfg.kinds:
        for arch in cfg.archs:
            by = {r["init"]: r for r in summary if (r["kind"], r["arch"]) == (kind, arch)}
            t, i = by["tied"], by["independent"]
            verdict = []
            for m, what in (("dead", "dead latents"), ("fvu", "FVU")):
                diff = i[m] - t[m]
                noise = 2 * max(t[f"{m}_sd"], i[f"{m}_sd"], 1e-12)
                verdict.append(f"{what}: " + ("no difference beyond 2 sd" if abs(diff) <= noise
                                               else f"tied {'lower' if diff > 0 else 'higher'}"))
            ans.append(f"- **{kind} / {arch}** ({'; '.join(verdict)}): dead {t['dead']:.3f} ± "
                       f"{t['dead_sd']:.3f} (tied) vs {i['dead']:.3f} ± {i['dead_sd']:.3f} "
                       f"(independent); FVU {t['fvu']:.4f} ± {t['fvu_sd']:.4f} vs "
                       f"{i['fvu']:.4f} ± {i['fvu_sd']:.4f}.")
    cols = ["kind", "arch", "init", "seeds", "fvu", "fvu_sd", "dead", "dead_sd", "l0",
            "align_step0", "align_final"]
    fmt = {c: ".4f" for c in ("fvu", "fvu_sd", "dead", "dead_sd")}
    fmt.update({"l0": ".1f", "align_step0": ".3f", "align_final": ".3f"})
    return "\n".join([
        "# Encoder = decoder^T initialisation",
        "",
        "**Question.** Does initialising W_enc = W_dec^T (vs an independent encoder) change "
        "dead latents and FVU, for SAEs and for transcoders?",
        "",
        f"**Setup.** Synthetic codes: d = {cfg.d}, {cfg.n_features} true features, Zipf firing, "
        f"mean L0 {cfg.mean_l0}, input noise {cfg.noise_std}. SAE: x = codes D_in + noise. "
        "Transcoder: (x, y = codes D_out), D_out independent of D_in, same width. Width "
        f"{cfg.width}, k = {cfg.k}, relu L1 {cfg.relu_coef}, LR {cfg.lr:g}, {cfg.total_tokens:,} "
        f"tokens, batch {cfg.batch_tokens}, seeds {list(cfg.seeds)}. Both inits share W_dec for a "
        "given seed; the independent encoder has columns of the same norm. Dead = fraction of "
        f"latents silent on all {cfg.eval_rows} held-out rows. align = mean cos(W_enc[:, i], "
        "W_dec[i]) (step 0 is measured on the trainer's actual initial dictionary).",
        "",
        *[f"![{f}]({f})" for f in figs if f.endswith(".png")],
        "",
        "## Numbers (mean and sample sd over seeds)",
        "",
        C.md_table(summary, cols, fmt),
        "",
        "## Answer",
        "",
        *ans,
        "",
        "## Caveats",
        "",
        "- Short CPU runs on synthetic data; dead latents in long runs on model activations "
        "(where AuxK / resampling matter more) may differ.",
        "- The transcoder's in and out spaces differ, so W_dec^T is not a meaningful encoder "
        "direction there; the tied init is what the library does today when d_in == d_out.",
        "- A fixed LR and sparsity coefficient (no per-init tuning).",
        "",
    ])


if __name__ == "__main__":
    raise SystemExit(C.cli("init_tied", run, {"full": full, "small": small}))
