"""Multi-reference assignment: every particle to its best-matching class average (r2d step 9, ``classify: mra``).

EMAN2's e2refine2d classifies by k-means of the particles' projections onto an MSA basis,
after aligning each particle to one of only ``naliref`` references (:mod:`r2d.kmeans`). That
feature space is not rotation invariant: on the 70S benchmark even the true in-plane
alignment with k-means on 12-30 principal components gives a view error of 18-22°, and
EMAN2 itself reaches 46°. r2d's default instead assigns each particle to the class average
of the previous iteration (``classes_init``/``classes_{YY-1}``, centred for the search) it
matches best over all rotations, shifts up to ``mramaxshift`` and mirrors (the ``mra_YY``
similarity matrix, otherwise the alignment and comparator options of ``simmx_YY``): classic
multi-reference alignment, as in SPIDER/RELION hard assignment. Class averaging then starts
from these transforms (``classprior``, ``r2d average --prior``) instead of a bootstrap, which
saves the bootstrap's work and keeps each member near the pose it was classified with.

Hard best-match assignment favours the classes with the least noisy averages: a particle's
correlation with an average ``S_j + N_j`` is its correlation with the signal ``S_j`` times
``√R_j``, ``R_j = var S_j / (var S_j + var N_j)``, so at low SNR a large class pulls in the
particles of its neighbours and small classes empty. With ``reliability`` (``mrareliability``)
each correlation is divided by ``√R_j``, estimated from the average's half-set FSC
(:func:`reliability`), which works against that pull; it is off by default, since on a
molecule whose views differ little the averages of smooth views (lower FSC) then win the
particles of many views.

A particle whose best and second-best classes score almost alike is as likely to belong to
either: averaged into its best class it blurs that class towards its neighbour, and at low
SNR that is a large share of the particles. With ``margin`` (``mramargin``) the least decisive
fraction of the particles (:func:`margin_weights`) gets weight 0 in ``classmx_YY``: they keep
their class, but class averaging aligns them without averaging them in.
"""

from __future__ import annotations

import numpy as np

__all__ = ["assign", "reliability", "margin_weights", "MIN_MEMBERS", "MAX_SHARE"]

#: classes with fewer members are dissolved by ``r2d classify --mra`` (its ``--mininclass``)
MIN_MEMBERS = 5
#: :func:`assign` frees classes for one that holds more than this many times the mean class size
MAX_SHARE = 3.0
#: bounds of the mean half-set FSC in :func:`reliability`
FSC_BOUNDS = (0.01, 0.99)


def reliability(fsc_half) -> np.ndarray:
    """``√R_j`` ``(K,)`` float64 for class averages with half-set FSC curves ``fsc_half[j]``
    (rings ``0 … n/2``, as in the class headers): ``q_j`` the mean FSC over rings
    ``1 … n/4 − 1`` (each ring counted once, clipped to :data:`FSC_BOUNDS`) and
    ``R_j = 2q_j/(1+q_j)`` (Spearman–Brown: a half set holds twice the noise variance), the
    signal fraction of the average in that band. Rings count equally, not by their power: the
    particles' matched filter spreads the search's weight over the band, and the averages'
    power, dominated by the lowest rings, would make the correction too weak
    (``docs/benchmarks.md``)."""
    q = np.array([np.mean(np.asarray(f, dtype=np.float64)[1:max(2, (len(f) - 1) // 2)]) for f in fsc_half])
    q = np.clip(q, *FSC_BOUNDS)
    return np.sqrt(2 * q / (1 + q))


def assign(score: np.ndarray, valid: np.ndarray | None = None, *, mininclass: int = 2,
           reliability: np.ndarray | None = None, max_share: float | None = MAX_SHARE) -> np.ndarray:
    """Class labels ``(N,)`` int64 from a score matrix ``(N, K)`` (lower = better); some of the
    ``K`` classes may be left empty, for class averaging to refill by division (``--split``).

    Each particle goes to its lowest-score column; with ``reliability`` ``(K,)`` (scores that
    are negated correlations, as ``ccc``) to its lowest ``score / reliability``. Rows where
    ``valid`` is False get −1. Then, unless there are fewer than ``K · mininclass`` valid rows:

    * every class with fewer than ``mininclass`` members is dissolved: its members go to their
      best-scoring remaining class (−1 when none of those has a finite score);
    * while a class holds more than ``max_share`` times the mean class size and the empty
      classes are too few to divide it into pieces below that, the smallest class under the
      mean size (ties: the last) is dissolved too, at most ``K // 4`` of them (None: never).

    Deterministic, and it depends only on ``score``.
    """
    score = np.asarray(score, dtype=np.float64)
    N, K = score.shape
    valid = np.ones(N, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    s = _corrected(score, reliability)
    label = np.where(valid, np.argmin(s, axis=1), -1).astype(np.int64)
    if valid.sum() < K * mininclass:
        return label
    alive = np.ones(K, dtype=bool)

    def dissolve(dead):
        alive[dead] = False
        rows = np.flatnonzero(np.isin(label, dead))
        if len(rows):
            rest = np.where(alive[None, :], s[rows], np.inf)
            best = np.argmin(rest, axis=1)
            label[rows] = np.where(np.isfinite(rest[np.arange(len(rows)), best]), best, -1)

    counts = np.bincount(label[label >= 0], minlength=K)
    dissolve(np.flatnonzero(counts < mininclass))
    if max_share is None:
        return label
    cap = max_share * valid.sum() / K
    for _ in range(K // 4):
        counts = np.bincount(label[label >= 0], minlength=K)
        pieces = np.ceil(counts[alive] / cap).astype(np.int64)
        if np.sum(np.maximum(pieces - 1, 0)) <= K - alive.sum():
            break
        small = np.flatnonzero(alive & (counts < valid.sum() / K))
        if len(small) == 0:
            break
        dissolve(small[np.lexsort((-small, counts[small]))[:1]])
    return label


def _corrected(score: np.ndarray, reliability) -> np.ndarray:
    """``score`` (N, K) as float64 with non-finite entries +inf, divided by ``reliability``."""
    s = np.where(np.isfinite(score), np.asarray(score, dtype=np.float64), np.inf)
    return s if reliability is None else s / np.asarray(reliability, dtype=np.float64)[None, :]


def margin_weights(score: np.ndarray, label: np.ndarray, fraction: float, *,
                   reliability: np.ndarray | None = None) -> np.ndarray:
    """classmx weights ``(N,)`` float32: 0 for the ``fraction`` of the labelled particles
    (``label >= 0``) whose best two scores (``score`` (N, K), lower = better, divided by
    ``reliability`` as in :func:`assign`) lie closest together (ties: lower index first), 1 for
    the other labelled ones, 0 for the unlabelled. A particle with one finite score is decisive."""
    label = np.asarray(label)
    weight = (label >= 0).astype(np.float32)
    rows = np.flatnonzero(label >= 0)
    drop = int(np.floor(float(fraction) * len(rows)))
    if drop <= 0 or score.shape[1] < 2:
        return weight
    s = np.partition(_corrected(score[rows], reliability), 1, axis=1)
    with np.errstate(invalid="ignore"):
        gap = np.where(np.isfinite(s[:, 1]), s[:, 1] - s[:, 0], np.inf)
    weight[rows[np.argsort(gap, kind="stable")[:drop]]] = 0.0
    return weight
