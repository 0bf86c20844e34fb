"""Co-activation report for a circuit's features over a task's prompts.

Algorithm (``coactivation_report``):
  1. Features are (site, index) pairs, possibly at several sites; each site needs a
     dictionary. Indices are checked against the dictionary width.
  2. One stream over the prompts (``pack=False`` by default: each prompt is its own
     context) encodes every needed dictionary from a single forward; the selected
     columns form X [n_tokens, F].
  3. All F(F−1)/2 pairs are accumulated densely (F is small), including pairs that never
     fire together, and get the columns of ``coactivation.pair_statistics`` plus the
     one-sided "apart" Fisher p-value; both p columns are BH-adjusted over the F(F−1)/2
     pairs.
  4. Each pair is labelled: ``silent`` (a feature never fires), ``never`` (both fire but
     never on the same token), ``together`` (q_together <= alpha), ``apart``
     (q_apart <= alpha), else ``independent``.
  5. ``report_tables`` returns plain DataFrames for a caller to render (``sae`` does not
     import ``viz``); ``write_report_csv`` writes them atomically.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from attribution.sites import Site
from sae.errors import ConfigError
from sae.features.coactivation import (
    CoactivationConfig,
    PairAccumulator,
    pair_statistics,
)
from sae.features.errors import (
    DictionaryModelMismatchError,
    EmptyDatasetError,
    FeatureIndexError,
)
from sae.features.significance import benjamini_hochberg, fisher_less
from sae.features.stream import StreamConfig, iter_latents


class CoactivationReport(NamedTuple):
    """Co-activation of a set of circuit features."""

    features: pd.DataFrame
    """One row per feature: name ("L1.mlp_in/12"), site, feature, count, density, mean_activation."""
    pairs: pd.DataFrame
    """One row per unordered pair: a, b (names), count, count_a, count_b, jaccard, pmi, npmi,
    pearson, p_together, q_together, p_apart, q_apart, relation."""
    n_tokens: int
    """Counted tokens."""


def feature_name(site: Site, index: int) -> str:
    """Display name of a feature: ``L{layer}.{kind}/{index}``."""
    return f"{site}/{index}"


def _normalise(dictionaries, features) -> tuple[dict, list]:
    if not isinstance(dictionaries, Mapping):
        dictionaries = {d.in_site: d for d in dictionaries}
    dicts = {(Site.parse(s) if isinstance(s, str) else s): d for s, d in dictionaries.items()}
    feats = []
    for s, idx in features:
        site = Site.parse(s) if isinstance(s, str) else s
        if site not in dicts:
            raise DictionaryModelMismatchError(f"no dictionary for feature site {site}; have {sorted(map(str, dicts))}")
        if not 0 <= int(idx) < int(dicts[site].width):
            raise FeatureIndexError(f"feature {idx} is out of range for the dictionary at {site} "
                                    f"(width {dicts[site].width})")
        feats.append((site, int(idx)))
    if len(feats) < 2 or len(set(feats)) != len(feats):
        raise ConfigError("a co-activation report needs at least two distinct (site, feature) pairs")
    return dicts, feats


def coactivation_report(model, dictionaries, features: Sequence, prompts,
                        config: CoactivationConfig | None = None) -> CoactivationReport:
    """Which circuit features fire together over ``prompts`` (steps 1-4).

    ``dictionaries``: {site: dictionary} or a sequence of dictionaries (keyed by in_site);
    ``features``: (site, index) pairs; ``prompts``: texts or token arrays (or a path/callable).
    """
    config = config or CoactivationConfig(stream=StreamConfig(pack=False))
    dicts, feats = _normalise(dictionaries, features)
    used = {s: dicts[s] for s in dict.fromkeys(s for s, _ in feats)}
    acc = PairAccumulator(len(feats), None, config.threshold, dense_limit=max(config.dense_limit, len(feats) ** 2))
    cols = {s: [i for s2, i in feats if s2 == s] for s in used}
    pos = {s: [k for k, (s2, _) in enumerate(feats) if s2 == s] for s in used}
    sums = np.zeros(len(feats))
    for batch in iter_latents(model, used, prompts, config.stream, sites={s: s for s in used}):
        x = np.empty((int(batch.mask.sum()), len(feats)), np.float32)
        for s in used:
            x[:, pos[s]] = batch.acts[s][batch.mask][:, cols[s]]
        acc.update(x)
        sums += np.where(x > config.threshold, x, 0).sum(axis=0)
    if acc.n == 0:
        raise EmptyDatasetError("the prompts contain no counted tokens")
    return _finish(acc, feats, sums, config)


def _finish(acc: PairAccumulator, feats: list, sums: np.ndarray, config: CoactivationConfig) -> CoactivationReport:
    names = [feature_name(s, i) for s, i in feats]
    cnt = acc.side[0].count
    fdf = pd.DataFrame({"name": names, "site": [str(s) for s, _ in feats], "feature": [i for _, i in feats],
                        "count": cnt, "density": cnt / acc.n, "mean_activation": sums / np.maximum(cnt, 1)})
    i, j = np.triu_indices(len(feats), k=1)
    c, s = np.rint(acc.C[i, j]).astype(np.int64), acc.S[i, j]
    df = pair_statistics(i, j, c, s, acc.side[0], acc.side[0], acc.n)
    df["p_apart"] = fisher_less(c, cnt[i], cnt[j], acc.n)
    df["q_together"] = benjamini_hochberg(df["p_together"].to_numpy(), acc.n_pairs)
    df["q_apart"] = benjamini_hochberg(df["p_apart"].to_numpy(), acc.n_pairs)
    silent = (cnt[i] == 0) | (cnt[j] == 0)
    rel = np.where(silent, "silent", np.where(c == 0, "never", np.where(
        df["q_together"] <= config.alpha, "together",
        np.where(df["q_apart"] <= config.alpha, "apart", "independent"))))
    df.insert(0, "a", [names[k] for k in i])
    df.insert(1, "b", [names[k] for k in j])
    df = df.drop(columns=["i", "j"]).rename(columns={"count_i": "count_a", "count_j": "count_b"})
    df["relation"] = rel
    return CoactivationReport(fdf, df, acc.n)


def coactivation_matrix(report: CoactivationReport, value: str = "jaccard") -> pd.DataFrame:
    """Square [F, F] DataFrame of one pair column (diagonal: 1 for jaccard/npmi/pearson, the
    feature's count for count), indexed by feature name; e.g. for a heatmap."""
    names = list(report.features["name"])
    if value not in report.pairs.columns:
        raise ConfigError(f"unknown pair column {value!r}; choose one of {list(report.pairs.columns)}")
    diag = report.features["count"].to_numpy(np.float64) if value == "count" else np.ones(len(names))
    m = pd.DataFrame(np.diag(diag), index=names, columns=names)
    for a, b, v in zip(report.pairs["a"], report.pairs["b"], report.pairs[value]):
        m.loc[a, b] = m.loc[b, a] = float(v)
    return m


def report_tables(report: CoactivationReport) -> dict[str, pd.DataFrame]:
    """Plain tables for rendering: features, pairs firing together (most significant first),
    pairs that never fire together, and all pairs."""
    p = report.pairs
    together = p[p["relation"] == "together"].sort_values("q_together", kind="stable")
    never = p[p["relation"].isin(["never", "silent"])]
    return {"features": report.features, "together": together.reset_index(drop=True),
            "never": never.reset_index(drop=True), "pairs": p}


def write_csv(df: pd.DataFrame, path) -> Path:
    """Write ``df`` as CSV to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_report_csv(report: CoactivationReport, directory) -> list[Path]:
    """``features.csv`` and ``pairs.csv`` in ``directory`` (each written atomically)."""
    d = Path(directory)
    return [write_csv(report.features, d / "features.csv"), write_csv(report.pairs, d / "pairs.csv")]


def with_stream(config: CoactivationConfig, **stream_changes) -> CoactivationConfig:
    """``config`` with its stream settings changed (a convenience around ``dataclasses.replace``)."""
    return replace(config, stream=replace(config.stream, **stream_changes))
