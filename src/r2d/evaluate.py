"""Scores of a 2-D classification against simulation truth.

**View error.** Views are unit viewing directions ``d`` (``(N, 3)``, volume frame); ``d`` and
``-d`` count as the same view, so the angle between two views is ``arccos(|d1 . d2|)`` in degrees
(0-90). For each class, the *medoid* is the member with the least summed angle to the other
members; the class's error is the mean angle of its members (medoid included, at 0) to the
medoid. The overall view error is the mean over all evaluated particles, i.e. class errors
weighted by class size. Particles with a label < 0 (excluded) or without a view (NaN, e.g.
junk) are ignored. A random assignment of uniformly distributed views scores about 52 degrees
(the mean angle between two random axes is 57.3 degrees); a perfect one scores 0.

**Class-average resolution.** Each class average is aligned (``rotate_translate_flip``) to a
set of noise-free projections of the map; the best-matching one (highest correlation) is
brought onto the average and the resolution where their Fourier ring correlation (running
mean over 3 rings) first falls below 0.5 is the class's resolution in Å (:func:`average_resolution`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["view_angles", "class_view_error", "view_error", "random_view_error", "average_resolution"]

_CHUNK = 1024  # rows of the pairwise angle matrix computed at once


def view_angles(d1, d2) -> np.ndarray:
    """Angles in degrees between views ``(n, 3)`` and ``(k, 3)``: ``(n, k)``, ``d == -d``."""
    d1 = np.asarray(d1, dtype=np.float64)
    d2 = np.asarray(d2, dtype=np.float64)
    return np.degrees(np.arccos(np.clip(np.abs(d1 @ d2.T), 0.0, 1.0)))


def class_view_error(dirs) -> tuple[int, float]:
    """``(medoid row, summed angle of the members to the medoid)`` for one class's ``(k, 3)`` views."""
    d = np.asarray(dirs, dtype=np.float64)
    sums = np.concatenate([view_angles(d[s:s + _CHUNK], d).sum(axis=1)
                           for s in range(0, len(d), _CHUNK)])
    med = int(np.argmin(sums))
    return med, float(sums[med])


def _valid(labels, view_dirs):
    labels = np.asarray(labels).reshape(-1)
    dirs = np.asarray(view_dirs, dtype=np.float64).reshape(-1, 3)
    if len(labels) != len(dirs):
        raise ValueError(f"{len(labels)} labels but {len(dirs)} view directions")
    keep = (labels >= 0) & np.isfinite(dirs).all(axis=1)
    dirs = dirs[keep]
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return labels[keep].astype(np.int64), dirs


def view_error(labels, view_dirs) -> float:
    """View error (degrees) of class ``labels`` (``(N,)`` int, < 0 = excluded) for ``(N, 3)``
    viewing directions; NaN when no particle is evaluated."""
    labels, dirs = _valid(labels, view_dirs)
    if len(labels) == 0:
        return float("nan")
    order = np.argsort(labels, kind="stable")
    labels, dirs = labels[order], dirs[order]
    bounds = np.flatnonzero(np.diff(labels)) + 1
    total = 0.0
    for members in np.split(dirs, bounds):
        total += class_view_error(members)[1]
    return total / len(labels)


def random_view_error(labels, view_dirs, seed: int = 0) -> float:
    """View error of a random permutation of the (valid) labels: same class sizes, random members."""
    labels, dirs = _valid(labels, view_dirs)
    return view_error(np.random.default_rng(seed).permutation(labels), dirs)


def average_resolution(averages, projections, apix: float, *, threshold: float = 0.5,
                       maxshift: float | None = None, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """FRC resolution (Å) of each class average against its best-matching noise-free projection.

    ``averages`` ``(K, n, n)`` and ``projections`` ``(P, n, n)``: each average is aligned to every
    projection (rotation, shift ``|t| ≤ maxshift``, default ``n/8``, and mirror); the projection
    with the highest correlation is transformed onto the average (``T⁻¹``) and the FRC of the
    pair, smoothed by a running mean over 3 rings, is cut at ``threshold``. Returns ``(resolution (K,) Å, best projection index (K,))``;
    empty (all-zero) averages give NaN.
    """
    from r2d.align import search
    from r2d.fsc import fsc_resolution
    from r2d.cmp import frc_curve
    from r2d import transforms as tf

    averages = np.asarray(averages, dtype=np.float32)
    projections = np.asarray(projections, dtype=np.float32)
    n = averages.shape[-1]
    ms = n / 8 if maxshift is None else float(maxshift)
    alpha, tx, ty, mirror, corr = search(averages, projections, maxshift=ms, mirror=True, workers=workers)
    best = np.argmax(corr, axis=1)
    k = np.arange(len(averages))
    moved = tf.transform(projections[best], *tf.invert(alpha[k, best], tx[k, best], ty[k, best], mirror[k, best]))
    curve, _ = frc_curve(averages, moved, workers=workers)
    # running mean over 3 rings: single low-frequency rings hold a dozen samples, one noisy
    # ring must not decide the resolution
    # (ring 0, the images' means, is left out)
    smooth = curve.copy()
    smooth[:, 2:-1] = (curve[:, 1:-2] + curve[:, 2:-1] + curve[:, 3:]) / 3
    smooth[:, 1] = (curve[:, 1] + curve[:, 2]) / 2
    res = fsc_resolution(smooth, n, apix, threshold=threshold)
    empty = averages.reshape(len(averages), -1).std(axis=1) == 0
    return np.where(empty, np.nan, res), best
