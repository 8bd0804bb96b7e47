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
(:func:`reliability`), which removes that pull.
"""

from __future__ import annotations

import numpy as np

__all__ = ["assign", "reliability"]

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
           reliability: np.ndarray | None = None) -> np.ndarray:
    """Class labels ``(N,)`` int64 from a score matrix ``(N, K)`` (lower = better).

    Each particle goes to its lowest-score column; with ``reliability`` ``(K,)`` (scores that
    are negated correlations, as ``ccc``) to its lowest ``score / reliability``. Rows where
    ``valid`` is False get −1.
    Classes left with fewer than ``mininclass`` members are refilled (deterministically)
    with the worst-fitting particles (highest best score) of the classes that can spare them
    (more than ``2·mininclass`` members), so every one of the ``K`` classes keeps members, as
    EMAN2's k-means does by reseeding.
    """
    score = np.asarray(score, dtype=np.float64)
    N, K = score.shape
    valid = np.ones(N, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    s = np.where(np.isfinite(score), score, np.inf)
    if reliability is not None:
        s = s / np.asarray(reliability, dtype=np.float64)[None, :]
    label = np.where(valid, np.argmin(s, axis=1), -1).astype(np.int64)
    best = np.where(valid, s[np.arange(N), np.maximum(label, 0)], -np.inf)
    counts = np.bincount(label[label >= 0], minlength=K)
    small = np.flatnonzero(counts < mininclass)
    if len(small) == 0 or valid.sum() < K * mininclass:
        return label
    # worst-fitting particles first; ties broken by index (stable)
    for i in np.argsort(-best, kind="stable"):
        if len(small) == 0 or not valid[i]:
            break
        c = label[i]
        if counts[c] <= 2 * mininclass:
            continue
        k = small[0]
        counts[c] -= 1
        counts[k] += 1
        label[i] = k
        if counts[k] >= mininclass:
            small = small[1:]
    return label
