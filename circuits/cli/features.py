"""``circuits features``: what each feature of one dictionary means, and what fires together.

Algorithm:
  1. Load the model and one dictionary (``--dicts`` directory, ``--site`` picks it).
  2. ``sae.features.feature_stats`` over the corpus (top and quantile examples,
     density, histograms, logit effects, neighbours, opposing directions).
  3. ``feature_records`` -> ``viz.dashboard.write_dashboards`` (offline HTML,
     searchable index), ``feature_stats.csv``, a log-density histogram.
  4. ``coactivation`` over the same corpus -> ``coactivation_pairs.csv``.
Everything is staged and moved into ``--out`` only on success.
"""

from __future__ import annotations

import time
from pathlib import Path

from circuits.cli._common import CLIError, add_common, add_force, load, load_dicts, positive_int, progress, staged
from circuits.cli._out import emit


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="feature dashboards, statistics and co-activation for one dictionary")
    add_common(p, out_default="out/features")
    add_force(p)
    p.add_argument("--dicts", type=Path, default=Path("out/dictionaries/dictionaries"))
    p.add_argument("--site", default=None, help="input site of the dictionary (default: the first)")
    p.add_argument("--corpus", default=None, help="text file, task:NAME, or organism")
    p.add_argument("--docs", type=positive_int, default=3000, help="documents drawn from a generated corpus")
    p.add_argument("--max-features", type=positive_int, default=None,
                   help="dashboards for the first N features only")


def pick_dictionary(dicts: dict, site: str | None):
    """The dictionary whose input site is ``site`` (or the first)."""
    from attribution.sites import Site

    if not dicts:
        raise CLIError("--dicts holds no dictionaries; pass the dictionaries/ directory of `circuits train`")
    if site is None:
        return next(iter(dicts.items()))
    try:
        want = Site.parse(site)
    except ValueError as exc:
        raise CLIError(f"--site {site!r}: {exc}") from None
    for key, d in dicts.items():
        if getattr(d, "in_site", None) == want or key == want:
            return key, d
    have = ", ".join(str(getattr(d, "in_site", k)) for k, d in dicts.items())
    raise CLIError(f"--site {want}: no dictionary reads it; available: {have}")


def run(args) -> int:
    import numpy as np
    import pandas as pd

    from sae.features import coactivation, feature_records, feature_stats
    from viz.dashboard import write_dashboards
    from viz.feature_plots import log_density_histogram

    from circuits.pipeline.corpus import corpus_texts

    model = load(args)
    key, dic = pick_dictionary(load_dicts(args, model), args.site)
    texts = list(corpus_texts(model, args.corpus, args.docs, seed=7))
    timings = {}
    with staged(args.out) as tmp, progress(args, "feature stats", unit="tok") as bar:
        t0 = time.perf_counter()
        stats = feature_stats(model, dic, texts, progress=lambda n: bar(n))
        timings["stats_s"] = time.perf_counter() - t0
        feats = None if args.max_features is None else list(range(min(args.max_features, dic.width)))
        records = feature_records(stats, model, features=feats)
        t0 = time.perf_counter()
        write_dashboards(records, tmp / "dashboards", title=f"Features of {key}")
        timings["dashboards_s"] = time.perf_counter() - t0
        table = pd.DataFrame({"feature": np.arange(dic.width), "density": stats.density,
                              "mean_activation": stats.mean_activation,
                              "max_activation": stats.max_activation})
        table.to_csv(tmp / "feature_stats.csv", index=False)
        log_density_histogram(stats.density, path=tmp / "log_density.svg")
        t0 = time.perf_counter()
        co = coactivation(model, dic, texts)
        timings["coactivation_s"] = time.perf_counter() - t0
        co.pairs.to_csv(tmp / "coactivation_pairs.csv", index=False)
    alive = int((stats.density > 0).sum())
    rec = {"out": str(args.out), "dictionary": str(key), "features": int(dic.width), "alive": alive,
           "tokens": int(stats.n_tokens), "pairs": int(len(co.pairs)),
           **{k: round(v, 2) for k, v in timings.items()}}
    emit(args, rec, [f"{alive}/{dic.width} features fire on {stats.n_tokens} tokens; "
                     f"{len(co.pairs)} co-activating pairs",
                     f"dashboards: {args.out / 'dashboards' / 'index.html'}",
                     f"timings: " + ", ".join(f"{k}={v:.1f}" for k, v in timings.items())])
    return 0
