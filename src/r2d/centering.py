"""Centring of class averages and references (docs/algorithm.md §3.9): integer shifts that put each
image's centre of density on the box centre (:func:`center_shift`; apply them with
:func:`r2d.transforms.integer_shift`)."""

from __future__ import annotations

import numpy as np

from r2d import transforms as tf


def center_shift(images: np.ndarray, mode: str = "xform.center") -> tuple[np.ndarray, np.ndarray]:
    """Integer shifts ``(dx, dy)`` that centre each image (``nocenter`` → zeros); images ``(K, n, n)``,
    density white (positive). The shift moves the centre to pixel ``(n//2, n//2)``.

    ``xform.center``: centre of mass of the image's density above its background — Gaussian
    low-pass (σ = n/32 px), minus the mean of the rim ``r ≥ n/2 − 4``, positive part, within
    ``r < n/2 − 2``. docs/algorithm.md §5.2 allows any robust centre-of-mass method in place of
    EMAN2's silhouette procedure (§3.9). A version of that procedure (the value-weighted
    centre of the brightest 10 % of a squared high-pass) put noise-free 70S projections 7.6 px
    (median; up to 15 px at 64 px) off their centre, each view by a different amount, so class
    averages drifted apart and alignment needed large searches; this one is within 1 px
    (median; ≤ 3.2 px) noise-free and 1.4 px (≤ 3.6 px) at SNR 1 (tests/test_average.py).
    ``xform.centerofmass``: centre of mass of the positive part of the image.
    """
    images = np.asarray(images, dtype=np.float32)
    K, n, _ = images.shape
    if mode in (None, "nocenter", "None", "xform.centeracf"):
        return np.zeros(K, int), np.zeros(K, int)
    if mode == "xform.centerofmass":
        g = np.clip(images, 0, None).astype(np.float64)
    else:
        from scipy import ndimage

        sigma = max(1.0, n / 32)
        g = ndimage.gaussian_filter(images.astype(np.float64), (0, sigma, sigma), mode="nearest")
        r = tf.radius_grid(n)
        rim = g[:, r >= n / 2 - 4].mean(axis=1)
        g = np.clip(g - rim[:, None, None], 0, None) * (r < n / 2 - 2)
    tot = g.reshape(K, -1).sum(1)
    v, u = np.mgrid[0:n, 0:n]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (g * u).reshape(K, -1).sum(1) / tot
        cy = (g * v).reshape(K, -1).sum(1) / tot
    ok = np.isfinite(cx) & np.isfinite(cy) & (tot > 0)
    dx = np.where(ok, -(np.rint(cx) - n // 2), 0).astype(int)
    dy = np.where(ok, -(np.rint(cy) - n // 2), 0).astype(int)
    return dx, dy
