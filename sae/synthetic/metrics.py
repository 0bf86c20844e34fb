"""Scores of a trained dictionary against synthetic ground truth.

Algorithm (``score``):
  1. Cosines: C[i, j] = |cos(true direction i, decoder row j)| (decoder rows of norm 0
     give 0).
  2. Matching: one-to-one, maximising the summed |cos| (``scipy.optimize.
     linear_sum_assignment`` on 1 − C); min(n_features, width) pairs.
  3. MCC = mean of C over the matched pairs — exactly SAELens's
     ``mean_correlation_coefficient`` (absolute cosine, Hungarian on 1 − |cos|, mean over
     matched pairs).
  4. Firing per matched pair (feature i, latent j): latent fires = activation != 0, feature
     fires = code > 0; precision TP/(TP+FP), recall TP/(TP+FN), F1 their harmonic mean
     (0 where undefined); reported per pair and as means over pairs. SAELens instead pairs
     every latent with its argmax feature (not one-to-one); that variant is ``f1_best``.
  5. Uniqueness = (number of distinct true features that are some latent's argmax-|cos|
     feature) / width — SAELens's ``feature_uniqueness``. Duplicated latents share a
     best feature, so k copies of one latent remove k − 1 from the numerator.
  6. Shrinkage = Σ a_j·‖d_j‖ / Σ c_i over rows where both fire, summed over matched pairs
     with C ≥ ``match_cos`` (1 = magnitudes reproduced; < 1 = shrunk). ``norm_ratio`` is
     SAELens's row-wise mean ‖x̂‖/‖x‖.
  7. Absorption, for each hierarchy pair (parent p, child c) with matched latents j_p, j_c:
       direction: the pair is absorbed when a matched latent's unit decoder carries the
       other feature beyond their true overlap: max(cos(d_jp, w_c), cos(d_jc, w_p)) −
       cos(w_p, w_c) ≥ ``absorb_cos``; ``absorption`` is the fraction of pairs absorbed.
       firing: the parent's latent fires on < 50 % of rows where the child fires while
       firing on ≥ 50 % of rows where the parent fires without the child;
       ``absorption_firing`` is that fraction (NaN when no pair has both kinds of rows).
  8. Dead latents: fraction (and count) that never fire on the evaluated rows; FVU =
     Σ‖x − x̂‖² / Σ‖x − x̄‖² (x̄ the per-dimension mean); L0 = mean active latents per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from sae.errors import ShapeMismatchError


@dataclass(frozen=True)
class SyntheticScores:
    """Scores of one dictionary against the truth (see the module docstring)."""

    mcc: float
    """Mean |cos| over the optimal one-to-one matching (SAELens's definition)."""
    precision: float
    """Mean firing precision over matched pairs."""
    recall: float
    """Mean firing recall over matched pairs."""
    f1: float
    """Mean firing F1 over matched pairs."""
    f1_best: float
    """Mean F1 with every latent paired to its argmax-|cos| feature (SAELens's pairing)."""
    uniqueness: float
    """Distinct argmax features / width (SAELens's ``feature_uniqueness``)."""
    shrinkage: float
    """Σ latent magnitude · decoder norm / Σ true magnitude on co-firing matched pairs."""
    norm_ratio: float
    """Mean ‖x̂‖/‖x‖ over rows (SAELens's shrinkage); NaN without reconstructions."""
    absorption: float
    """Fraction of hierarchy pairs absorbed by decoder direction; NaN without pairs."""
    absorption_firing: float
    """Fraction of hierarchy pairs whose parent latent stops firing with the child."""
    dead: float
    """Fraction of latents that never fire on the evaluated rows."""
    n_dead: int
    """Number of such latents."""
    fvu: float
    """Fraction of variance unexplained; NaN without reconstructions."""
    l0: float
    """Mean number of active latents per row."""
    matched_features: np.ndarray
    """[n_pairs] true feature index of each matched pair."""
    matched_latents: np.ndarray
    """[n_pairs] latent index of each matched pair."""
    matched_cos: np.ndarray
    """[n_pairs] |cos| of each matched pair."""
    pair_precision: np.ndarray
    """[n_pairs] firing precision of each matched pair."""
    pair_recall: np.ndarray
    """[n_pairs] firing recall of each matched pair."""
    pair_f1: np.ndarray
    """[n_pairs] firing F1 of each matched pair."""

    def summary(self) -> dict:
        """The scalar fields as a JSON-ready dict."""
        out = {}
        for k, v in self.__dict__.items():
            if isinstance(v, (float, int)):
                out[k] = v if isinstance(v, int) else (None if np.isnan(v) else round(v, 5))
        return out


def abs_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] |cos| between rows (zero rows give 0)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return np.abs((a / np.where(na > 0, na, 1)) @ (b / np.where(nb > 0, nb, 1)).T)


def match(features: np.ndarray, decoder: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature indices, latent indices, |cos|) of the optimal one-to-one matching."""
    c = abs_cosines(features, decoder)
    rows, cols = linear_sum_assignment(1.0 - c)
    return rows, cols, c[rows, cols]


def mcc(features: np.ndarray, decoder: np.ndarray) -> float:
    """Mean |cos| over the optimal one-to-one matching (SAELens's MCC)."""
    return float(match(features, decoder)[2].mean())


def uniqueness(decoder: np.ndarray, features: np.ndarray) -> float:
    """Distinct argmax-|cos| true features over the latents / number of latents."""
    if len(decoder) == 0:
        return 0.0
    return len(np.unique(abs_cosines(decoder, features).argmax(1))) / len(decoder)


def _prf(lat_on: np.ndarray, feat_on: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = (lat_on & feat_on).sum(0).astype(np.float64)
    fp = (lat_on & ~feat_on).sum(0)
    fn = (~lat_on & feat_on).sum(0)
    p = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    r = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=(p + r) > 0)
    return p, r, f


def _check(name: str, a: np.ndarray, shape: tuple) -> None:
    if a.ndim != len(shape) or any(s is not None and a.shape[i] != s for i, s in enumerate(shape)):
        raise ShapeMismatchError(f"{name} has shape {a.shape}, expected {shape} "
                                 "(None = any); pass arrays from the same rows and dictionary")


def score(decoder: np.ndarray, features: np.ndarray, latents: np.ndarray, codes: np.ndarray, *,
          x: np.ndarray | None = None, x_hat: np.ndarray | None = None,
          hierarchy_pairs: np.ndarray | None = None, match_cos: float = 0.5,
          absorb_cos: float = 0.25) -> SyntheticScores:
    """Score a dictionary against the truth.

    decoder [width, d]: decoder rows; features [n_features, d]: true directions;
    latents [n, width]: the dictionary's activations on n generated rows; codes
    [n, n_features]: the true codes of those rows; x, x_hat [n, d]: rows and
    reconstructions (for FVU and norm_ratio); hierarchy_pairs [n_pairs, 2]: (parent,
    child) feature indices (``SyntheticTruth.hierarchy_pairs``).
    """
    decoder, features = np.asarray(decoder, np.float64), np.asarray(features, np.float64)
    latents, codes = np.asarray(latents), np.asarray(codes)
    width, d = decoder.shape
    nf = features.shape[0]
    _check("features", features, (None, d))
    _check("latents", latents, (None, width))
    _check("codes", codes, (latents.shape[0], nf))
    lat_on, feat_on = latents != 0, codes > 0

    fi, lj, cos = match(features, decoder)
    p, r, f = _prf(lat_on[:, lj], feat_on[:, fi])
    best = abs_cosines(decoder, features).argmax(1)
    f_best = _prf(lat_on, feat_on[:, best])[2]

    # Shrinkage: reconstructed magnitude along the feature = activation × decoder norm.
    good = cos >= match_cos
    norms = np.linalg.norm(decoder, axis=1)
    both = lat_on[:, lj[good]] & feat_on[:, fi[good]]
    rec = (np.abs(latents[:, lj[good]]) * norms[lj[good]] * both).sum()
    true = (codes[:, fi[good]] * both).sum()
    shrink = float(rec / true) if true > 0 else float("nan")

    absorb, absorb_fire = float("nan"), float("nan")
    pairs = np.zeros((0, 2), np.int64) if hierarchy_pairs is None else np.asarray(hierarchy_pairs)
    if len(pairs):
        lat_of = np.full(nf, -1, np.int64)
        lat_of[fi] = lj
        unit = decoder / np.where(norms > 0, norms, 1)[:, None]
        flags, fire_flags = [], []
        for par, ch in pairs:
            jp, jc = lat_of[par], lat_of[ch]
            if jp < 0 or jc < 0:
                continue
            base = features[par] @ features[ch]
            mix = max(unit[jp] @ features[ch], unit[jc] @ features[par]) - base
            flags.append(mix >= absorb_cos)
            with_child = feat_on[:, ch]
            parent_only = feat_on[:, par] & ~with_child
            if with_child.any() and parent_only.any():
                fire_flags.append(lat_on[with_child, jp].mean() < 0.5
                                  and lat_on[parent_only, jp].mean() >= 0.5)
        absorb = float(np.mean(flags)) if flags else float("nan")
        absorb_fire = float(np.mean(fire_flags)) if fire_flags else float("nan")

    fvu = norm_ratio = float("nan")
    if x is not None and x_hat is not None:
        x, x_hat = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
        _check("x", x, (latents.shape[0], d))
        _check("x_hat", x_hat, x.shape)
        fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
        nx = np.linalg.norm(x, axis=1)
        ok = nx > 1e-6
        norm_ratio = float((np.linalg.norm(x_hat, axis=1)[ok] / nx[ok]).mean())
    fired = lat_on.any(0)
    return SyntheticScores(
        mcc=float(cos.mean()), precision=float(p.mean()), recall=float(r.mean()),
        f1=float(f.mean()), f1_best=float(f_best.mean()), uniqueness=uniqueness(decoder, features),
        shrinkage=shrink, norm_ratio=norm_ratio, absorption=absorb, absorption_firing=absorb_fire,
        dead=float(1 - fired.mean()), n_dead=int((~fired).sum()), fvu=fvu,
        l0=float(lat_on.sum(1).mean()), matched_features=fi, matched_latents=lj,
        matched_cos=cos, pair_precision=p, pair_recall=r, pair_f1=f)


def score_dictionary(dictionary, truth, n: int = 16384, *, batch_index: int = 10 ** 6,
                     **kw) -> SyntheticScores:
    """Generate ``n`` held-out rows (batch ``batch_index``), encode them and ``score``."""
    import mlx.core as mx

    from sae.synthetic.generator import sample

    b = sample(truth, n, batch_index)
    xm = mx.array(b.x)
    f = dictionary.encode(xm)
    x_hat = dictionary.decode(f)
    return score(np.array(dictionary.W_dec), truth.directions, np.array(f), b.codes, x=b.x,
                 x_hat=np.array(x_hat), hierarchy_pairs=truth.hierarchy_pairs, **kw)
