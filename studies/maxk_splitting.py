"""Study: feature splitting on a max-of-K toy -- which features split, along which variable?

Algorithm:
  1. Train the max-of-K transformer (``studies._maxk.ToyConfig``: d_vocab tokens, K per
     sequence, the maximum predicted at the last position); report its accuracy on held-out
     i.i.d.-uniform and max-balanced sequences.
  2. Sample ``n_samples`` balanced sequences (the maximum uniform over the vocabulary, so
     every max value is represented) and record, at the final position, the logits (after
     the unembedding, dimension d_vocab) and the final residual (d_model).
  3. For each site train TopK SAEs (``sae.train``, one shared stream) at widths
     d_vocab x ``width_mults``; evaluate FVU and L0 on the same rows.
  4. Per latent and task variable (true max, query = last token, largest non-max token,
     copies of the max): the adjusted correlation ratio eta^2 (fraction of the latent's
     activation variance the variable explains, exact over the rows), and for the three
     non-max variables the increment eta^2(max x v) - eta^2(max) (what v explains beyond
     the max).
  5. Splitting, for consecutive widths: each latent of the wider SAE is matched to the
     narrower SAE's latent of highest decoder cosine; a parent with >= 2 children at cosine
     >= ``child_cos`` has split. On the rows where some child fires, the "child label" is the
     most active child; its dependence on each variable is I(child; max) / H(child) and, for
     the others, I(child; v | max) / H(child) (bits, plug-in), each minus the same quantity
     with v shuffled within the rows (the estimator's bias). The split's variable is the
     largest of these (or "none" below ``min_score``).
  6. Figures (eta^2 heatmaps per site and width; split counts by variable; the clearest
     split); ``results.md``, ``results.json`` and ``decoders.safetensors`` (decoders per site
     and width, read by ``studies.splitting_structure``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from studies import _common as C
from studies import _maxk as M
from sae.io._files import write_tensors
from sae.train import TrainConfig, train

SITES = ("logits", "resid")


@dataclass(frozen=True)
class MaxKSplittingConfig:
    """Size of the max-of-K splitting study."""

    toy: M.ToyConfig = field(default_factory=M.ToyConfig)
    """The toy transformer and its training."""
    n_samples: int = 100_000
    """Balanced sequences whose activations the SAEs train on and the statistics use."""
    n_eval: int = 20_000
    """Held-out sequences per sampling scheme for the toy's accuracy."""
    width_mults: tuple = (1, 2, 4)
    """SAE widths as multiples of d_vocab."""
    k: int = 4
    """TopK active latents."""
    sae_tokens: int = 2 ** 21
    """Training rows per SAE."""
    sae_batch: int = 1024
    """Rows per SAE step."""
    child_cos: float = 0.5
    """A wider latent is a child of its best-matching narrower latent above this cosine."""
    min_rows: int = 50
    """A split is scored only on >= this many rows where some child fires."""
    min_score: float = 0.1
    """Below this bias-corrected normalised MI a split is attributed to no variable."""
    sites: tuple = SITES
    """Activation sites: "logits" and/or "resid"."""
    seed: int = 0
    """Seed of the sampled sequences and the SAEs."""

    def __post_init__(self) -> None:
        bad = [s for s in self.sites if s not in SITES]
        if bad or not self.sites:
            raise C.StudyError(f"unknown sites {bad}; use a non-empty subset of {SITES}")
        if len(self.width_mults) < 2 or list(self.width_mults) != sorted(set(self.width_mults)):
            raise C.StudyError("width_mults needs >= 2 increasing multiples (splits need two widths)")
        if self.k > self.toy.d_vocab * min(self.width_mults):
            raise C.StudyError(f"k={self.k} exceeds the narrowest SAE width")


def full() -> MaxKSplittingConfig:
    return MaxKSplittingConfig()


def small() -> MaxKSplittingConfig:
    return MaxKSplittingConfig(toy=M.ToyConfig(d_vocab=12, n_ctx=4, d_model=32, n_layers=1,
                                               n_heads=2, steps=150, batch=128, lr=3e-3),
                               n_samples=3000, n_eval=1000, width_mults=(1, 2), k=2,
                               sae_tokens=2 ** 14, sae_batch=512, min_rows=20)


# ---- pipeline ------------------------------------------------------------------------------
def build_family(cfg: MaxKSplittingConfig, progress=None) -> dict:
    """Steps 1-3: toy, accuracy, activations, variables and SAEs per site and width."""
    say = progress or (lambda s: None)
    t0 = time.time()
    model, hist = M.train_toy(cfg.toy, say)
    rng = np.random.default_rng([cfg.seed, 7])
    acc = {}
    for kind in ("uniform", "balanced"):
        t = M.sample_tokens(cfg.toy, cfg.n_eval, rng, kind)
        logits, _ = M.run_toy(model, t)
        acc[kind] = float((logits.argmax(1) == t.max(1)).mean())
    say(f"toy accuracy {acc} ({time.time() - t0:.0f} s)")
    tokens = M.sample_tokens(cfg.toy, cfg.n_samples, rng, "balanced")
    logits, resid = M.run_toy(model, tokens)
    acts = {"logits": logits, "resid": resid}
    widths = [cfg.toy.d_vocab * m for m in cfg.width_mults]
    saes = {}
    for site in cfg.sites:
        x = acts[site]
        confs = [TrainConfig(kind="sae", arch="topk", sites=(C.SITE,), width=w, k=cfg.k,
                             total_tokens=cfg.sae_tokens, batch_tokens=cfg.sae_batch,
                             log_every=10 ** 6, seed=cfg.seed, name=f"w{w}") for w in widths]
        res = train({C.SITE: x}, confs)
        saes[site] = dict(zip(widths, res.dictionaries))
        say(f"{site}: trained SAEs {widths} ({time.time() - t0:.0f} s)")
    return {"model": model, "toy_history": hist, "accuracy": acc, "tokens": tokens,
            "acts": acts, "variables": M.task_variables(tokens, cfg.toy.d_vocab),
            "widths": widths, "saes": saes}


def encode_np(d, x: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Latent activations [n, width] as float32 numpy."""
    out = []
    for s in range(0, len(x), batch):
        f = d.encode(M.mx.array(x[s:s + batch]))
        M.mx.eval(f)
        out.append(np.array(f, np.float32))
    return np.concatenate(out)


def latent_table(f: np.ndarray, var: dict, mass: float = 0.9) -> dict:
    """Step 4: {"eta2": [width, 4], "beyond_max": [width, 3], "freq": [width],
    "max_span": [width]} -- max_span: the fewest max values holding ``mass`` of the latent's
    total activation (0 for a dead latent)."""
    eta = np.stack([M.eta2(f, var[v]) for v in M.VARIABLES], 1)
    base = eta[:, 0]
    beyond = np.stack([np.clip(M.eta2(f, M.joint_labels(var["max"], var[v])) - base, 0, 1)
                       for v in M.VARIABLES[1:]], 1)
    per_max = np.zeros((int(var["max"].max()) + 1, f.shape[1]))
    np.add.at(per_max, var["max"], f.astype(np.float64))
    srt = -np.sort(-per_max, axis=0)
    tot = srt.sum(0)
    span = np.where(tot > 0, (np.cumsum(srt, 0) < mass * tot).sum(0) + 1, 0)
    return {"eta2": eta, "beyond_max": beyond, "freq": (f > 0).mean(0), "max_span": span}


def split_scores(f_children: np.ndarray, var: dict, seed: int, min_rows: int) -> dict | None:
    """Step 5 for one parent's children activations [n, c]; None when too few rows fire."""
    on = (f_children > 0).any(1)
    if on.sum() < min_rows:
        return None
    child = f_children[on].argmax(1)
    h = M.entropy(child)
    if h <= 1e-9:
        return None
    rng = np.random.default_rng(seed)
    vv = {v: var[v][on] for v in M.VARIABLES}
    out = {"rows": int(on.sum()), "H_child": h, "children_firing": int(len(np.unique(child)))}
    for v in M.VARIABLES:
        given = None if v == "max" else vv["max"]
        mi = M.mutual_information(child, vv[v], given)
        if given is None:
            null = M.mutual_information(child, rng.permutation(vv[v]))
        else:  # shuffle v within each max group: keeps p(v, max) marginals, breaks v -> child
            perm = vv[v].copy()
            for g in np.unique(given):
                i = np.flatnonzero(given == g)
                perm[i] = perm[rng.permutation(i)]
            null = M.mutual_information(child, perm, given)
        out[v] = max(0.0, (mi - null) / h)
        out[v + "_raw"] = mi / h
    return out


def find_splits(parent_dec, child_dec, f_child: np.ndarray, var: dict, cfg) -> list:
    """All splits from one width to the next, each with its variable scores."""
    idx, cos = M.match_parents(child_dec, parent_dec)
    out = []
    for p in np.unique(idx):
        ch = np.flatnonzero((idx == p) & (cos >= cfg.child_cos))
        if len(ch) < 2:
            continue
        sc = split_scores(f_child[:, ch], var, cfg.seed + int(p), cfg.min_rows)
        row = {"parent": int(p), "children": ch.tolist(), "cos": cos[ch].round(3).tolist()}
        if sc is None:
            row["variable"] = "unscored"
        else:
            row.update(sc)
            best = max(M.VARIABLES, key=lambda v: sc[v])
            row["variable"] = best if sc[best] >= cfg.min_score else "none"
        out.append(row)
    return out


def run(cfg: MaxKSplittingConfig, out_dir, progress=None) -> dict:
    """Steps 1-6; returns the results dict (also written to ``out_dir``)."""
    say = progress or (lambda s: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fam = build_family(cfg, say)
    var, widths = fam["variables"], fam["widths"]
    results = {"config": asdict(cfg), "accuracy": fam["accuracy"],
               "toy_final_loss": fam["toy_history"][-1][1], "sites": {}}
    tensors, tables, codes = {}, {}, {}
    for site in cfg.sites:
        x = fam["acts"][site]
        site_res = {"widths": {}, "splits": {}}
        for w in widths:
            d = fam["saes"][site][w]
            f = encode_np(d, x)
            codes[(site, w)] = f
            ev = C.evaluate_np(d, x)
            tab = latent_table(f, var)
            tables[(site, w)] = tab
            best = np.array(M.VARIABLES)[tab["eta2"].argmax(1)]
            alive = tab["freq"] > 0
            site_res["widths"][w] = {
                "fvu": ev["fvu"], "l0": ev["l0"], "dead": int((~alive).sum()),
                "mean_max_span": float(tab["max_span"][alive].mean()),
                "best_variable_counts": {v: int(((best == v) & alive).sum()) for v in M.VARIABLES},
                "mean_eta2": dict(zip(M.VARIABLES, tab["eta2"][alive].mean(0).round(4).tolist())),
                "mean_beyond_max": dict(zip(M.VARIABLES[1:],
                                            tab["beyond_max"][alive].mean(0).round(4).tolist())),
                "latents": [{"eta2": dict(zip(M.VARIABLES, e.round(4).tolist())),
                             "beyond_max": dict(zip(M.VARIABLES[1:], b.round(4).tolist())),
                             "freq": round(float(fr), 5), "max_span": int(sp)}
                            for e, b, fr, sp in zip(tab["eta2"], tab["beyond_max"], tab["freq"],
                                                    tab["max_span"])]}
            tensors[f"{site}.w{w}.W_dec"] = np.array(d.W_dec, np.float32)
        for wp, wc in zip(widths[:-1], widths[1:]):
            sp = find_splits(np.array(fam["saes"][site][wp].W_dec),
                             np.array(fam["saes"][site][wc].W_dec), codes[(site, wc)], var, cfg)
            counts = {v: sum(r["variable"] == v for r in sp)
                      for v in M.VARIABLES + ("none", "unscored")}
            site_res["splits"][f"{wp}->{wc}"] = {"n_splits": len(sp), "by_variable": counts,
                                                 "splits": sp}
            say(f"{site} {wp}->{wc}: {len(sp)} splits {counts}")
        results["sites"][site] = site_res
    write_tensors(out / ".decoders.tmp.safetensors", tensors,
                  {"config": json.dumps(asdict(cfg), sort_keys=True)})
    (out / ".decoders.tmp.safetensors").replace(out / "decoders.safetensors")
    figs = _figures(cfg, results, tables, codes, var, widths, out)
    results["figures"] = figs
    C.write_outputs(out, results, _markdown(cfg, results, figs))
    return results


# ---- figures and text --------------------------------------------------------------------------
def _figures(cfg, results, tables, codes, var, widths, out) -> list:
    figs = []
    for site in cfg.sites:
        fig, axes = C.new_figure(ncols=len(widths), size=(2.6, 5.5))
        for ax, w in zip(axes[0], widths):
            e = tables[(site, w)]["eta2"]
            order = np.lexsort((-e.max(1), e.argmax(1)))
            ax.imshow(e[order], aspect="auto", vmin=0, vmax=1, cmap="viridis",
                      interpolation="nearest")
            ax.set_xticks(range(len(M.VARIABLES)), M.VARIABLES, rotation=45)
            ax.set_title(f"{site}, width {w}")
        axes[0][0].set_ylabel("latent (sorted by best variable)")
        fig.suptitle("eta^2: fraction of a latent's activation variance explained by each variable")
        figs += C.save_figure(fig, out, f"eta2_{site}")
        C.close(fig)
    cats = list(M.VARIABLES) + ["none", "unscored"]
    trans = [(s, t) for s in cfg.sites for t in results["sites"][s]["splits"]]
    fig, axes = C.new_figure(size=(max(5.0, 1.3 * len(trans)), 3.6))
    ax = axes[0][0]
    bottom = np.zeros(len(trans))
    for c in cats:
        h = np.array([results["sites"][s]["splits"][t]["by_variable"][c] for s, t in trans], float)
        ax.bar(range(len(trans)), h, bottom=bottom, label=c)
        bottom += h
    ax.set_xticks(range(len(trans)), [f"{s}\n{t}" for s, t in trans])
    ax.set_ylabel("parents that split")
    ax.set_title("Splits by the variable that separates the children")
    ax.legend(fontsize=7)
    figs += C.save_figure(fig, out, "splits_by_variable")
    C.close(fig)
    ex = _clearest_split(cfg, results)
    if ex is not None:
        site, t, row, v = ex
        wc = int(t.split("->")[1])
        f = codes[(site, wc)][:, row["children"]]
        fig, axes = C.new_figure(size=(6.0, 3.6))
        ax = axes[0][0]
        vals = np.unique(var[v])
        for j, c in enumerate(row["children"]):
            ax.plot(vals, [f[var[v] == u, j].mean() for u in vals], marker="o", ms=3,
                    label=f"child {c}")
        ax.set_xlabel(v)
        ax.set_ylabel("mean activation")
        ax.set_title(f"{site} {t}: parent {row['parent']} splits along {v} "
                     f"(score {row[v]:.2f})", fontsize=9)
        ax.legend(fontsize=7)
        figs += C.save_figure(fig, out, "example_split")
        C.close(fig)
    return figs


def _clearest_split(cfg, results):
    """The best-scoring split along a non-max variable, else along the max (None if none)."""
    cands = [(v != "max", row[v], site, t, row, v)
             for site in cfg.sites for t, s in results["sites"][site]["splits"].items()
             for row in s["splits"] for v in [row["variable"]] if v in M.VARIABLES]
    if not cands:
        return None
    best = max(cands, key=lambda c: (c[0], c[1]))
    return best[2:]


def _markdown(cfg, r, figs) -> str:
    toy = cfg.toy
    lines = ["# Feature splitting on a max-of-K toy", "",
             "**Question.** When an SAE on a max-of-K transformer's output grows wider, which "
             "features split, and along which task variable: the true max, the query (last) "
             "token, the largest non-max token, or the number of copies of the max?", "",
             "**Setup.** Transformer: d_vocab %d, K %d, d_model %d, %d layer(s) (attention + MLP), "
             "%d Adam steps; trained on a mix of i.i.d.-uniform and max-balanced sequences. "
             "Activations at the last position of %d max-balanced sequences: the logits (after the "
             "unembedding, d_vocab) and the final residual (d_model). TopK SAEs (k = %d) at "
             "widths %s, %d rows each. Per latent: adjusted eta^2 (variance explained) per "
             "variable, exact over the rows. A wider latent is a child of the narrower latent of "
             "highest decoder cosine (>= %.2f); a parent with >= 2 children has split; the split's "
             "variable maximises the bias-corrected normalised MI between the most active child "
             "and the variable (given the max, for the non-max variables); \"none\": every score below "
             "%.2f; \"unscored\": fewer than %d rows where a child fires, or a single child takes "
             "them all." % (
                 toy.d_vocab, toy.n_ctx, toy.d_model, toy.n_layers, toy.steps, cfg.n_samples,
                 cfg.k, [toy.d_vocab * m for m in cfg.width_mults], cfg.sae_tokens, cfg.child_cos,
                 cfg.min_score, cfg.min_rows),
             "", "**Toy accuracy** (held-out): i.i.d. uniform %.4f, max-balanced %.4f." % (
                 r["accuracy"]["uniform"], r["accuracy"]["balanced"]), ""]
    for site in cfg.sites:
        s = r["sites"][site]
        rows = [dict(width=w, fvu=x["fvu"], l0=x["l0"], dead=x["dead"], span=x["mean_max_span"],
                     **{f"eta2 {v}": x["mean_eta2"][v] for v in M.VARIABLES},
                     **{f"best={v}": x["best_variable_counts"][v] for v in M.VARIABLES})
                for w, x in sorted(s["widths"].items(), key=lambda kv: int(kv[0]))]
        cols = (["width", "fvu", "l0", "dead", "span"] + [f"eta2 {v}" for v in M.VARIABLES]
                + [f"best={v}" for v in M.VARIABLES])
        lines += [f"## Site: {site}", "", "Per width: FVU, L0, dead latents, mean eta^2 over live "
                  "latents, and how many latents each variable explains best.", "",
                  C.md_table(rows, cols, {c: ".3f" for c in cols if c.startswith(("fvu", "eta2"))}
                             | {"l0": ".2f", "span": ".2f"}), "",
                  "`span`: mean over live latents of the fewest max values that hold 90% of the "
                  "latent's activation mass.", ""]
        srows = [dict(transition=t, splits=x["n_splits"], **x["by_variable"])
                 for t, x in s["splits"].items()]
        lines += ["Splits by variable:", "",
                  C.md_table(srows, ["transition", "splits", *M.VARIABLES, "none", "unscored"]), ""]
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figs if f.endswith(".png")] + [""]
    lines += ["## Answer", "", _answer(cfg, r), "", "## Caveats", "",
              "- One toy, one seed, one SAE architecture (TopK); splitting depends on k and on the "
              "input distribution (max-balanced here, so every max value is common).",
              "- The four variables are correlated (the non-max token is below the max; copies and "
              "the non-max token interact); the non-max scores are conditional on the max to "
              "separate them, and every MI has its shuffled-variable bias subtracted.",
              "- Parent-child matching by decoder cosine is a heuristic: a child that is a new "
              "feature rather than a refinement can still be attached to its nearest parent.",
              "- Results are from the `full` configuration unless the header config says otherwise "
              "(see results.json).", ""]
    return "\n".join(lines)


def _answer(cfg, r) -> str:
    parts = []
    for site in cfg.sites:
        s = r["sites"][site]
        tot = {v: 0 for v in M.VARIABLES + ("none", "unscored")}
        other = []
        for t, x in s["splits"].items():
            for v, c in x["by_variable"].items():
                tot[v] += c
            other += [f"{t} parent {row['parent']} along {row['variable']} "
                      f"({row[row['variable']]:.2f})" for row in x["splits"]
                      if row["variable"] in M.VARIABLES[1:]]
        ws = sorted(s["widths"], key=int)  # (results.json sorts keys as strings)
        w0, w1 = s["widths"][ws[0]], s["widths"][ws[-1]]
        lead = max(M.VARIABLES, key=lambda v: w0["best_variable_counts"][v])
        n = sum(x["n_splits"] for x in s["splits"].values())
        parts.append(
            f"**{site}**: at width {ws[0]}, `{lead}` explains most latents best "
            f"({w0['best_variable_counts'][lead]} of {sum(w0['best_variable_counts'].values())} "
            f"live; mean eta^2 of the max {w0['mean_eta2']['max']:.2f}); a latent's activation "
            f"spans {w0['mean_max_span']:.1f} max values on average, {w1['mean_max_span']:.1f} at "
            f"width {ws[-1]}, where " + ", ".join(
                f"{w1['best_variable_counts'][v]} latents are best explained by `{v}`"
                for v in M.VARIABLES[1:]) + ". "
            f"Of {n} splits, " + ", ".join(
                f"{c} along {v}" if v in M.VARIABLES else f"{c} {v}" for v, c in tot.items() if c)
            + (". Splits along another variable than the max: " + "; ".join(other) if other
               else "; none along another variable than the max") + ".")
    parts.append("Of the scored splits, at least 80% separate their children by the max on "
                 "every site: on this toy, widening mostly refines features along the max (children take "
                 "narrower ranges of max values); splits along the query token, the largest "
                 "non-max token or the copies are rare (listed above; per-split scores in "
                 "results.json)." if all(
                     sum(x["by_variable"]["max"] for x in r["sites"][s]["splits"].values())
                     >= 0.8 * max(1, sum(x["n_splits"] - x["by_variable"]["unscored"]
                                         for x in r["sites"][s]["splits"].values()))
                     for s in cfg.sites) else
                 "Splits are not dominated by the max on every site; see the per-site counts.")
    return " ".join(parts)


if __name__ == "__main__":
    raise SystemExit(C.cli("maxk_splitting", run, {"full": full, "small": small}))
