"""Features of a single text, and texts that activate a given feature.

``top_features``:
  1. Encode the text (BOS kept); if it is longer than the model's context, warn
     (``TruncationWarning``) and keep the first ``max_context`` tokens.
  2. One capture forward at the dictionary's site; encode the latents [T, m].
  3. Per position (BOS left out by default), the ``k`` largest activations above
     ``threshold`` (``argpartition``) become rows (pos, token, feature, activation), sorted by position then activation;
     tokens are spaced as in the text (``tokens.token_strings``).
``feature_examples``:
  1. Each text is one context (truncated with a warning as above); latents are streamed
     in batches through ``stream.iter_latents`` with BOS excluded.
  2. Per text, the feature's max activation and its position; texts are ranked by it and
     a ±``window`` token excerpt around the max (decoded by the tokenizer) is returned.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from attribution.sites import Site
from sae.features.errors import EmptyDatasetError, FeatureIndexError, TruncationWarning
from sae.features.stream import (
    PAD,
    StreamConfig,
    check_dictionary,
    encode_batch,
    iter_latents,
)
from sae.features.tokens import token_strings


def check_feature(dictionary, feature: int) -> int:
    """``feature`` as an int in [0, width), else ``FeatureIndexError``."""
    f = int(feature)
    if not 0 <= f < int(dictionary.width):
        raise FeatureIndexError(f"feature {feature} is out of range: the dictionary has "
                                f"{dictionary.width} features (0..{int(dictionary.width) - 1})")
    return f


def _text_tokens(model, text) -> np.ndarray:
    ids = list(model.encode(text)) if isinstance(text, str) else [int(i) for i in np.ravel(text)]
    if not ids:
        raise EmptyDatasetError("the text encodes to no tokens")
    cap = getattr(model, "max_context", None)
    if cap and len(ids) > cap:
        warnings.warn(f"text has {len(ids)} tokens; truncated to the model's context of {cap} "
                      "(features past that point are not computed)", TruncationWarning, stacklevel=3)
        ids = ids[:cap]
    return np.asarray(ids, np.int32)


def text_latents(model, dictionary, text, site: Site | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [T], latents [T, m]) of one text (steps 1-2)."""
    site = check_dictionary(model, dictionary, site)
    toks = _text_tokens(model, text)
    acts = encode_batch(model, {0: dictionary}, {0: site}, toks[None])[0][0]
    return toks, acts


def top_features(model, dictionary, text, site: Site | str | None = None, k: int = 5,
                 threshold: float = 0.0, drop_bos: bool = True) -> pd.DataFrame:
    """Which features fire at which tokens: DataFrame (pos, token, feature, activation) with at
    most ``k`` features per position, each with activation > ``threshold``; ``drop_bos`` leaves
    out BOS tokens (their activations are outliers, as in ``feature_stats``)."""
    toks, acts = text_latents(model, dictionary, text, site)
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    if drop_bos and bos is not None:
        acts = np.where((toks == bos)[:, None], -np.inf, acts)
    k = max(1, min(int(k), acts.shape[1]))
    part = np.argpartition(-acts, k - 1, axis=1)[:, :k]               # [T, k]
    vals = np.take_along_axis(acts, part, axis=1)
    pos = np.broadcast_to(np.arange(acts.shape[0])[:, None], part.shape)
    keep = vals > threshold
    strs = token_strings(model, toks)
    df = pd.DataFrame({"pos": pos[keep], "token": [strs[p] for p in pos[keep]],
                       "feature": part[keep].astype(np.int64), "activation": vals[keep].astype(np.float64)})
    return df.sort_values(["pos", "activation"], ascending=[True, False], ignore_index=True)


def feature_examples(model, dictionary, texts, feature: int, site: Site | str | None = None,
                     n: int = 10, window: int = 8, batch_size: int = 8) -> pd.DataFrame:
    """Texts that most activate ``feature``: DataFrame (text_id, max_activation, pos, token,
    excerpt), best first; texts where it never fires are omitted."""
    f = check_feature(dictionary, feature)
    site = check_dictionary(model, dictionary, site)
    rows = []
    cfg = StreamConfig(pack=False, batch_size=batch_size)
    for batch in iter_latents(model, {0: dictionary}, texts, cfg, sites={0: site}):
        a = np.where(batch.mask, batch.acts[0][..., f], -np.inf)
        best = a.argmax(axis=1)
        for r, t in enumerate(best):
            v = float(a[r, t])
            if v > 0:
                rows.append((batch.first_context + r, v, int(t), batch.tokens[r]))
    rows.sort(key=lambda x: -x[1])
    out = []
    for tid, v, t, toks in rows[:n]:
        valid = toks[toks != PAD]
        # the decoder joins the excerpt: a per-token " ".join doubled BPE spaces ("the  cat")
        excerpt = model.decode(valid[max(0, t - window):t + window + 1]).strip()
        out.append({"text_id": tid, "max_activation": v, "pos": t, "token": token_strings(model, [valid[t]])[0],
                    "excerpt": excerpt})
    return pd.DataFrame(out, columns=["text_id", "max_activation", "pos", "token", "excerpt"])
