"""Study: penalties from priors -- Laplace (L1) vs Cauchy (log(1 + a^2)).

An L1 penalty is the negative log of a Laplace prior on latent activations; log(1 + a^2)
that of a Cauchy prior. Which prior do trained latents' activations look like, and which
penalty gives the better L0-FVU trade-off?

Algorithm:
  1. Synthetic data with known features (``sae.synthetic``: Zipf firing, per-feature mean
     magnitudes spread log-normally, folded-normal magnitudes); train rows and held-out rows,
     both normalised once to E||x|| = sqrt(d).
  2. Sweep: for each penalty (L1: sum_i a_i ||W_dec,i||; Cauchy: sum_i log(1 + (a_i ||W_dec,i||
     / scale)^2), the formula of ``sae.parts`` "cauchy" with ``weighted=True``) and each
     coefficient, train a ReLU dictionary with ``studies._maxk.train_penalised`` (the same
     loop, data, seed and steps for both penalties). Held-out FVU, L0, dead fraction and MCC
     against the true directions.
  3. Pareto: the non-dominated (L0, FVU) points per penalty; FVU at matched L0 by linear
     interpolation of FVU in log L0 along each frontier, over the L0 range both cover.
  4. Fits: for the L1 and the Cauchy dictionary of highest MCC and for the true codes,
     every latent (feature) with >= ``min_nonzero`` non-zero held-out activations is fitted by
     maximum likelihood with an exponential (half-Laplace: rate = 1/mean), a half-Cauchy
     (scale by a bounded 1-D search on log scale), and a log-normal (mean and std of log a).
     Per family: mean log-likelihood per value, Kolmogorov-Smirnov statistic, and the number
     of latents each family fits best (highest log-likelihood).
  5. Figures (frontier; KS per family; one latent's histogram with the fitted densities);
     results.md and results.json.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import optimize, stats

from studies import _common as C
from studies import _maxk as M
from sae.synthetic import SyntheticConfig, make_truth, sample
from sae.synthetic.metrics import mcc

PENALTIES = ("l1", "cauchy")
FAMILIES = ("laplace", "cauchy", "lognormal")


@dataclass(frozen=True)
class PriorsConfig:
    """Size of the penalty-priors study."""

    synthetic: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(
        d=64, n_features=256, mean_l0=6.0, zipf_alpha=0.7, magnitude_spread=0.3,
        magnitude_std=0.5, seed=5))
    """The synthetic ground truth."""
    width: int = 256
    """Latents per dictionary."""
    train_rows: int = 65_536
    """Rows the dictionaries train on (sampled with replacement per batch)."""
    eval_rows: int = 16_384
    """Held-out rows (batch index 1 of the generator)."""
    steps: int = 1200
    """Adam steps per dictionary."""
    batch: int = 1024
    """Rows per step."""
    lr: float = 2e-3
    """Peak learning rate."""
    coefs: dict = field(default_factory=lambda: {"l1": (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
                                                 "cauchy": (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)})
    """Sparsity coefficients swept per penalty."""
    cauchy_scale: float = 1.0
    """Scale gamma of the Cauchy penalty (in normalised units)."""
    min_nonzero: int = 100
    """A latent is fitted only with at least this many non-zero held-out values."""
    small_act: float = 0.05
    """Diagnostic "L0 above" threshold on f_i ||W_dec,i|| (normalised units): how much of L0
    is tiny activations (the Cauchy penalty is flat at 0, so it leaves them)."""
    seed: int = 0
    """Seed of the dictionaries."""

    def __post_init__(self) -> None:
        if set(self.coefs) != set(PENALTIES) or any(len(v) < 1 for v in self.coefs.values()):
            raise C.StudyError(f"coefs needs a non-empty tuple for each of {PENALTIES}")
        if any(not c > 0 for v in self.coefs.values() for c in v):
            raise C.StudyError("every sparsity coefficient must be > 0")


def full() -> PriorsConfig:
    return PriorsConfig()


def small() -> PriorsConfig:
    return PriorsConfig(synthetic=SyntheticConfig(d=16, n_features=32, mean_l0=3.0,
                                                  zipf_alpha=0.5, magnitude_spread=0.3, seed=5),
                        width=32, train_rows=4096, eval_rows=4096, steps=200, batch=256,
                        lr=5e-3, coefs={"l1": (0.5, 4.0), "cauchy": (0.5, 4.0)},
                        min_nonzero=50)


# ---- maximum-likelihood fits ---------------------------------------------------------------------
def fit_families(v: np.ndarray) -> dict:
    """{family: {"params", "loglik" (mean per value), "ks"}} for positive values v (step 4)."""
    v = np.asarray(v, np.float64)
    if v.size < 2 or (v <= 0).any() or not np.isfinite(v).all():
        raise C.StudyError("fit_families needs >= 2 finite positive values")
    out = {}
    rate = 1.0 / v.mean()
    out["laplace"] = {"params": {"rate": rate}, "loglik": math.log(rate) - rate * v.mean(),
                      "ks": float(stats.kstest(v, stats.expon(scale=1 / rate).cdf).statistic)}

    def nll(lg):  # half-Cauchy negative log-likelihood per value at scale exp(lg)
        g = math.exp(lg)
        return -(math.log(2 / (math.pi * g)) - np.log1p((v / g) ** 2).mean())

    med = float(np.median(v))
    r = optimize.minimize_scalar(nll, bounds=(math.log(med) - 12, math.log(med) + 12),
                                 method="bounded", options={"xatol": 1e-9})
    g = math.exp(r.x)
    out["cauchy"] = {"params": {"scale": g}, "loglik": -float(r.fun),
                     "ks": float(stats.kstest(v, stats.halfcauchy(scale=g).cdf).statistic)}
    lv = np.log(v)
    mu, sd = float(lv.mean()), float(max(lv.std(), 1e-12))
    ll = (-lv - math.log(sd) - 0.5 * math.log(2 * math.pi) - (lv - mu) ** 2 / (2 * sd * sd)).mean()
    out["lognormal"] = {"params": {"mu": mu, "sigma": sd}, "loglik": float(ll),
                        "ks": float(stats.kstest(v, stats.lognorm(s=sd, scale=math.exp(mu)).cdf)
                                    .statistic)}
    return out


def density(family: str, params: dict, x: np.ndarray) -> np.ndarray:
    """The fitted density of ``family`` at x > 0."""
    if family == "laplace":
        return stats.expon(scale=1 / params["rate"]).pdf(x)
    if family == "cauchy":
        return stats.halfcauchy(scale=params["scale"]).pdf(x)
    return stats.lognorm(s=params["sigma"], scale=math.exp(params["mu"])).pdf(x)


def fit_codes(codes: np.ndarray, min_nonzero: int) -> dict:
    """Step 4 over the columns of codes [n, m]: per-family summaries and per-latent fits."""
    per = []
    for j in range(codes.shape[1]):
        v = codes[:, j]
        v = v[v > 0]
        if v.size >= min_nonzero:
            per.append((j, fit_families(v)))
    if not per:
        return {"n_fitted": 0}
    summ = {}
    for fam in FAMILIES:
        ll = np.array([f[fam]["loglik"] for _, f in per])
        ks = np.array([f[fam]["ks"] for _, f in per])
        summ[fam] = {"mean_loglik": float(ll.mean()), "median_ks": float(np.median(ks)),
                     "ks": ks.round(4).tolist(),
                     "best_count": int(sum(max(FAMILIES, key=lambda q: f[q]["loglik"]) == fam
                                           for _, f in per))}
    j, fits = max(per, key=lambda q: (codes[:, q[0]] > 0).sum())  # the most active latent
    col = codes[:, j]
    return {"n_fitted": len(per), "families": summ, "example": {"latent": j, "fits": fits},
            "_example_values": col[col > 0]}


# ---- Pareto ---------------------------------------------------------------------------------------
def pareto(points: list) -> list:
    """Indices of the non-dominated (l0, fvu) points (lower is better in both), by L0."""
    idx = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    out, best = [], math.inf
    for i in idx:
        if points[i][1] < best:
            out.append(i)
            best = points[i][1]
    return out


def fvu_at(front: list, l0: float) -> float:
    """FVU at ``l0`` by linear interpolation in log L0 along a frontier [(l0, fvu)] sorted by L0."""
    xs = np.log([p[0] for p in front])
    return float(np.interp(math.log(l0), xs, [p[1] for p in front]))


# ---- run ------------------------------------------------------------------------------------------
def run(cfg: PriorsConfig, out_dir, progress=None) -> dict:
    """Steps 1-5; returns the results dict (also written to ``out_dir``)."""
    say = progress or (lambda s: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    truth = make_truth(cfg.synthetic)
    x = sample(truth, cfg.train_rows, 0, return_codes=False).x
    ev = sample(truth, cfg.eval_rows, 1)
    s = C.unit_scale(x)
    x, xe = x * s, ev.x * s
    runs, dicts = [], {}
    for pen in PENALTIES:
        for coef in cfg.coefs[pen]:
            d, _ = M.train_penalised(x, cfg.width, pen, coef, steps=cfg.steps, batch=cfg.batch,
                                     lr=cfg.lr, scale=cfg.cauchy_scale, seed=cfg.seed)
            e = C.evaluate_np(d, xe)
            big = _encode(d, xe) * np.array(d.decoder_norms())[None] > cfg.small_act
            row = {"penalty": pen, "coef": coef, "fvu": e["fvu"], "l0": e["l0"],
                   "l0_above": float(big.sum(1).mean()),
                   "dead": float(1 - e["fired"].mean()),
                   "mcc": mcc(truth.directions, np.array(d.W_dec))}
            runs.append(row)
            dicts[(pen, coef)] = d
            say(f"{pen} coef {coef}: fvu {row['fvu']:.4f} l0 {row['l0']:.2f} mcc {row['mcc']:.3f} "
                f"({time.time() - t0:.0f} s)")
    fronts = {}
    for pen in PENALTIES:
        rs = [r for r in runs if r["penalty"] == pen and r["l0"] > 0]
        fr = [rs[i] for i in pareto([(r["l0"], r["fvu"]) for r in rs])]
        fronts[pen] = [(r["l0"], r["fvu"]) for r in fr]
        for r in rs:
            r["on_frontier"] = r in fr
    matched = _matched(fronts)
    fits = {}
    for pen in PENALTIES:
        rs = [r for r in runs if r["penalty"] == pen]
        r = max(rs, key=lambda q: q["mcc"])  # the one whose latents are closest to the truth
        codes = _encode(dicts[(pen, r["coef"])], xe)
        fits[f"sae_{pen}"] = dict(fit_codes(codes, cfg.min_nonzero), coef=r["coef"], l0=r["l0"])
        say(f"fitted {fits[f'sae_{pen}']['n_fitted']} latents of the {pen} dictionary")
    fits["true_codes"] = fit_codes(ev.codes, cfg.min_nonzero)
    results = {"config": asdict(cfg), "runs": runs, "frontiers": fronts, "matched_l0": matched,
               "fits": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in fits.items()}}
    figs = _figures(cfg, runs, fronts, fits, out)
    results["figures"] = figs
    C.write_outputs(out, results, _markdown(cfg, results, figs))
    return results


def _encode(d, x: np.ndarray) -> np.ndarray:
    f = d.encode(M.mx.array(x))
    M.mx.eval(f)
    return np.array(f, np.float64)


def _matched(fronts: dict) -> list:
    """FVU of both penalties at L0 values inside both frontiers' ranges (step 3)."""
    if any(len(f) == 0 for f in fronts.values()):
        return []
    lo = max(f[0][0] for f in fronts.values())
    hi = min(f[-1][0] for f in fronts.values())
    if not lo < hi:
        return []
    return [{"l0": float(l0), **{f"fvu_{p}": fvu_at(fronts[p], l0) for p in PENALTIES}}
            for l0 in np.geomspace(lo, hi, 5)]


def _figures(cfg, runs, fronts, fits, out) -> list:
    names = []
    fig, axes = C.new_figure(ncols=2, size=(4.6, 3.6))
    for pen, mk, col in zip(PENALTIES, ("o", "s"), ("C0", "C3")):
        rs = [r for r in runs if r["penalty"] == pen]
        label = "L1 (Laplace)" if pen == "l1" else f"log(1+(a/{cfg.cauchy_scale:g})^2) (Cauchy)"
        axes[0][0].plot([r["l0"] for r in rs], [r["fvu"] for r in rs], mk, color=col, alpha=0.35)
        fr = fronts[pen]
        axes[0][0].plot([p[0] for p in fr], [p[1] for p in fr], "-" + mk, color=col,
                        label=label + " frontier")
        axes[0][1].plot([r["l0"] for r in rs], [r["mcc"] for r in rs], mk, color=col, label=label)
        axes[0][1].plot([r["l0_above"] for r in rs], [r["mcc"] for r in rs], mk, color=col,
                        mfc="none", alpha=0.6, label=label + f", L0 of a > {cfg.small_act:g}")
    axes[0][0].set_xscale("log")
    axes[0][0].set_xlabel("L0 (held out)")
    axes[0][0].set_ylabel("FVU (held out)")
    axes[0][0].set_title("L0-FVU frontier")
    axes[0][0].axvline(cfg.synthetic.mean_l0, color="gray", lw=0.6, ls="--")
    axes[0][0].legend(fontsize=7)
    axes[0][1].set_xscale("log")
    axes[0][1].set_xlabel("L0")
    axes[0][1].set_ylabel("MCC vs true features")
    axes[0][1].set_title("Recovery of the true features")
    axes[0][1].legend(fontsize=6)
    names += C.save_figure(fig, out, "pareto")
    C.close(fig)
    srcs = [k for k, v in fits.items() if v.get("n_fitted")]
    if srcs:
        fig, axes = C.new_figure(ncols=len(srcs) + 1, size=(3.6, 3.4))
        for ax, k in zip(axes[0], srcs):
            ax.boxplot([fits[k]["families"][f]["ks"] for f in FAMILIES], tick_labels=FAMILIES)
            ax.set_title(f"{k}: KS per latent ({fits[k]['n_fitted']})", fontsize=9)
            ax.set_ylabel("KS statistic")
        k = srcs[0]
        j, per, v = fits[k]["example"]["latent"], fits[k]["example"]["fits"], fits[k]["_example_values"]
        ax = axes[0][-1]
        ax.hist(v, bins=50, density=True, alpha=0.5, color="gray")
        xs = np.linspace(max(v.min(), 1e-6), v.max(), 200)
        for fam in FAMILIES:
            ax.plot(xs, density(fam, per[fam]["params"], xs), label=fam)
        ax.set_title(f"{k} latent {j}: non-zero values", fontsize=9)
        ax.legend(fontsize=7)
        names += C.save_figure(fig, out, "activation_fits")
        C.close(fig)
    return names


def _markdown(cfg, r, figs) -> str:
    sc = cfg.synthetic
    lines = ["# Penalties from priors: Laplace (L1) vs Cauchy (log(1 + a^2))", "",
             "**Question.** Do trained latents' non-zero activations look Laplace (the prior "
             "behind L1), Cauchy (behind log(1 + a^2)) or log-normal? And does the Cauchy penalty "
             "beat L1 on the L0-FVU frontier?", "",
             "**Setup.** Synthetic data (`sae.synthetic`): d %d, %d features, mean L0 %.1f, Zipf "
             "%.2f, folded-normal magnitudes (relative std %.2f, per-feature means spread "
             "log-normally with log-std %.2f). ReLU dictionaries of width %d, %d Adam steps of %d "
             "rows (LR %.0e, warm-up and decay), data normalised to E||x|| = sqrt(d). Penalties "
             "on a_i = f_i ||W_dec,i||: L1 sum a_i; Cauchy sum log(1 + (a_i/%g)^2) -- the same "
             "formula as `sae.parts` \"cauchy\" (weighted); trained with this study's own loop "
             "(`studies._maxk.train_penalised`, identical for both penalties) because the "
             "parts-based trainer was being added concurrently. Held-out FVU / L0 / MCC on %d "
             "rows." % (sc.d, sc.n_features, sc.mean_l0, sc.zipf_alpha, sc.magnitude_std,
                        sc.magnitude_spread, cfg.width, cfg.steps, cfg.batch, cfg.lr,
                        cfg.cauchy_scale, cfg.eval_rows), "",
             "## Sweep", "",
             C.md_table(r["runs"], ["penalty", "coef", "l0", "l0_above", "fvu", "mcc", "dead",
                                   "on_frontier"],
                        {"l0": ".2f", "l0_above": ".2f", "fvu": ".4f", "mcc": ".3f",
                         "dead": ".3f"}), "",
             "`l0_above`: mean count of latents with f_i ||W_dec,i|| > %g (normalised units), "
             "i.e. L0 without the tiny activations." % cfg.small_act, ""]
    if r["matched_l0"]:
        lines += ["FVU at matched L0 (interpolated along each frontier in log L0):", "",
                  C.md_table(r["matched_l0"], ["l0", "fvu_l1", "fvu_cauchy"],
                             {"l0": ".2f", "fvu_l1": ".4f", "fvu_cauchy": ".4f"}), ""]
    else:
        lines += ["The two frontiers' L0 ranges do not overlap; no matched-L0 comparison.", ""]
    lines += ["## Activation distributions", "",
              "The dictionary of highest MCC per penalty, and the true codes. "
              "Maximum-likelihood fits per latent with >= %d non-zero held-out values; mean "
              "log-likelihood per value, median KS statistic, latents best fitted (highest "
              "likelihood)." % cfg.min_nonzero, ""]
    frows = []
    for k, v in r["fits"].items():
        label = f"{k} (coef {v['coef']:g}, L0 {v['l0']:.1f})" if "coef" in v else k
        if not v.get("n_fitted"):
            frows.append({"source": label, "latents": 0})
            continue
        for fam in FAMILIES:
            f = v["families"][fam]
            frows.append({"source": label, "latents": v["n_fitted"], "family": fam,
                          "mean loglik": f["mean_loglik"], "median KS": f["median_ks"],
                          "best": f["best_count"]})
    lines += [C.md_table(frows, ["source", "latents", "family", "mean loglik", "median KS", "best"],
                         {"mean loglik": ".3f", "median KS": ".3f"}), "",
              "## Figures", ""] + [f"![{f}]({f})" for f in figs if f.endswith(".png")]
    lines += ["", "## Answer", "", _answer(r), "", "## Caveats", "",
              "- Synthetic data: the true magnitudes are folded normal by construction, so the fit "
              "of the *true codes* is a check of the fitting code (log-normal/half-Laplace can "
              "only approximate it); the trained latents' distributions also carry the SAE's "
              "shrinkage and absorption.",
              "- One Cauchy scale (%g) and one seed; the Cauchy penalty is flat near 0 "
              "(gradient 2a/(scale^2 + a^2)), so its sparsity comes from the ReLU threshold that "
              "the encoder bias learns, and the comparison depends on the scale." % cfg.cauchy_scale,
              "- Not run through the parts-based trainer (`TrainConfig(recipe=...)`): the local "
              "loop has no dead-latent resampling, no gradient clipping, and samples batches with "
              "replacement.", ""]
    return "\n".join(lines)


def _answer(r) -> str:
    out = []
    fr = r["frontiers"]
    if all(fr.get(p) for p in PENALTIES):
        out.append("The L1 frontier spans L0 %.1f-%.1f; the Cauchy frontier only %.1f-%.1f: "
                   "the Cauchy penalty never brought L0 below %.1f at any coefficient." % (
                       fr["l1"][0][0], fr["l1"][-1][0], fr["cauchy"][0][0], fr["cauchy"][-1][0],
                       min(x["l0"] for x in r["runs"] if x["penalty"] == "cauchy")))
        big = max((x for x in r["runs"] if x["penalty"] == "cauchy"), key=lambda x: x["coef"])
        out.append("At its largest coefficient (%g) L0 is %.1f but only %.1f latents exceed the "
                   "small-activation threshold: it shrinks activations towards 0 without "
                   "switching them off." % (big["coef"], big["l0"], big["l0_above"]))
    if r["matched_l0"]:
        wins = sum(m["fvu_cauchy"] < m["fvu_l1"] for m in r["matched_l0"])
        ratio = [m["fvu_cauchy"] / m["fvu_l1"] for m in r["matched_l0"]]
        out.append(f"Where both frontiers overlap (L0 {r['matched_l0'][0]['l0']:.1f}-"
                   f"{r['matched_l0'][-1]['l0']:.1f}) the Cauchy penalty has the lower FVU at "
                   f"{wins} of {len(ratio)} points (Cauchy FVU / L1 FVU {min(ratio):.2f}-"
                   f"{max(ratio):.2f}).")
    best_mcc = {p: max((x["mcc"] for x in r["runs"] if x["penalty"] == p), default=float("nan"))
                for p in PENALTIES}
    out.append("Best MCC: L1 %.3f, Cauchy %.3f." % (best_mcc["l1"], best_mcc["cauchy"]))
    for k, v in r["fits"].items():
        if v.get("n_fitted"):
            f = v["families"]
            ks = min(FAMILIES, key=lambda q: f[q]["median_ks"])
            out.append(f"{k}: highest likelihood for " + ", ".join(
                f"{q} {f[q]['best_count']}" for q in FAMILIES) + f" of {v['n_fitted']} latents; "
                f"lowest median KS: {ks} ({f[ks]['median_ks']:.3f}).")
    sae_fits = [v for k, v in r["fits"].items() if k.startswith("sae_") and v.get("n_fitted")]
    rare = all(v["families"]["cauchy"]["best_count"] < v["n_fitted"] / 3 for v in sae_fits)
    loses = bool(r["matched_l0"]) and all(m["fvu_cauchy"] > m["fvu_l1"] for m in r["matched_l0"])
    if sae_fits and rare:
        out.append("The Cauchy law is the best fit for under a third of the trained latents, so "
                   "these activations do not argue for a Cauchy prior" +
                   ("; as a penalty it also loses to L1 at every matched L0." if loses else "."))
    return " ".join(out)


if __name__ == "__main__":
    raise SystemExit(C.cli("penalty_priors", run, {"full": full, "small": small}))
