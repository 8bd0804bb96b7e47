"""View groups of class averages and a cap on each (``r2d select --rebalance``).

With preferred orientation a few views hold most of the particles, and a 3D refinement from
such a set is dominated by them. Rebalancing (cryoSPARC's *Rebalance 2D*) caps the particles
of over-represented views. A *view group* is a set of classes whose averages show the same
view: :func:`similarity` high-passes the class averages (their overall mass distribution
alone makes the averages of different views correlate) and aligns every one to every other
(rotation, translation and mirror, ``rotate_translate_flip``) for the best correlation
coefficient;
:func:`view_groups` joins classes by average linkage on ``1 − ccc`` until the groups' mean
correlation would fall below ``min_ccc`` (or until ``ngroups`` remain). :func:`cap_groups`
then keeps at most ``cap`` particles of each group, drawn uniformly at random (seeded) from
the group's selected particles, so each class of a group keeps about the same fraction.
Groups at or below the cap are kept whole: rare views are never thinned.
"""

from __future__ import annotations

import numpy as np

__all__ = ["highpass", "similarity", "view_groups", "cap_groups", "DEFAULT_GROUP_CCC"]

#: classes whose aligned averages correlate at least this much on average form one view group
DEFAULT_GROUP_CCC = 0.7
#: the high-pass weight is 1 − exp(−(r / r0)²), r0 = box / HIGHPASS rings
HIGHPASS = 20


def highpass(averages: np.ndarray) -> np.ndarray:
    """``averages`` ``(K, n, n)`` float32 with the Fourier weight ``1 − exp(−(r/r0)²)``,
    ``r0 = n /`` :data:`HIGHPASS` rings (the mean goes, detail above about 10 rings stays)."""
    a = np.asarray(averages, dtype=np.float32)
    n = a.shape[-1]
    f = np.fft.fftfreq(n) * n
    r2 = f[:, None] ** 2 + f[None, :] ** 2
    w = 1.0 - np.exp(-r2 / (n / HIGHPASS) ** 2)
    w = w[:, : n // 2 + 1]
    return np.fft.irfft2(np.fft.rfft2(a) * w, s=(n, n)).astype(np.float32)


def similarity(averages, *, workers: int = 1) -> np.ndarray:
    """Symmetric ``(K, K)`` float64 matrix of the correlation coefficients of class averages
    ``(K, n, n)`` (:func:`highpass`-filtered) after the best rotation, translation (up to
    ``n/8`` px) and mirror of one onto the other (EMAN2's ``rotate_translate_flip`` with
    ``ccc``, over the disc ``r < n/2 − 1``); the larger of the two directions, 1 on the diagonal. Averages of zero variance correlate 0."""
    from r2d.align import align

    a = np.asarray(averages, dtype=np.float32)
    K, n = a.shape[0], a.shape[-1]
    if K == 0:
        return np.zeros((0, 0))
    live = a.reshape(K, -1).std(axis=1) > 0
    a = highpass(a)
    res = align(a, a, f"rotate_translate_flip:maxshift={max(1, n // 8)}", "ccc", workers=workers)
    c = np.asarray(res.corr, dtype=np.float64)
    c = np.where(np.isfinite(c), c, 0.0)
    c = np.maximum(c, c.T)
    c[~live, :] = 0.0
    c[:, ~live] = 0.0
    np.fill_diagonal(c, 1.0)
    return c


def view_groups(sim: np.ndarray, *, min_ccc: float = DEFAULT_GROUP_CCC, ngroups: int | None = None) -> np.ndarray:
    """Group labels ``(K,)`` int64, ``0 … G−1`` numbered in the order of each group's first
    class, from a :func:`similarity` matrix: average-linkage clustering of ``1 − sim`` cut at
    ``1 − min_ccc``, or into ``ngroups`` groups when given (at most ``K``)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    sim = np.asarray(sim, dtype=np.float64)
    K = sim.shape[0]
    if K < 2:
        return np.zeros(K, dtype=np.int64)
    d = np.clip(1.0 - (sim + sim.T) / 2, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    tree = linkage(squareform(d, checks=False), method="average")
    if ngroups is not None:
        raw = fcluster(tree, t=min(int(ngroups), K), criterion="maxclust")
    else:
        raw = fcluster(tree, t=1.0 - float(min_ccc), criterion="distance")
    _, first, inv = np.unique(raw, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # renumber by first class
    return order[inv].astype(np.int64)


def cap_groups(group: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """Boolean mask ``(N,)`` of the particles kept: every particle with ``group >= 0`` in a
    group of at most ``cap`` particles, and ``cap`` of a larger group drawn uniformly without
    replacement (``numpy.random.default_rng(seed)``, groups in increasing order), so the same
    input and seed keep the same particles. ``group`` ``(N,)`` ints, −1 = not selected."""
    group = np.asarray(group)
    if int(cap) < 1:
        raise ValueError(f"cap must be at least 1, not {cap}")
    keep = group >= 0
    rng = np.random.default_rng(seed)
    for g in np.unique(group[group >= 0]):
        idx = np.flatnonzero(group == g)
        if len(idx) > cap:
            drop = np.ones(len(idx), dtype=bool)
            drop[rng.choice(len(idx), size=int(cap), replace=False)] = False
            keep[idx[drop]] = False
    return keep
