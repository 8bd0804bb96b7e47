"""Masks: the particle mask of ``maskdiameter`` (docs/algorithm.md §1.7) and automatic masks
(EMAN2 ``mask.auto2d``, §3.9), vectorised over a stack where possible."""

from __future__ import annotations

import numpy as np

from r2d import transforms as tf


#: width (px) of the particle mask's raised-cosine edge, centred on its diameter
MASK_EDGE = 3.0


def particle_mask(n: int, diameter: float | None, apix: float | None) -> tuple[np.ndarray | None, float | None]:
    """The particle mask of ``diameter`` Å on ``n`` px images of ``apix`` Å/px (1 when None):
    ``(mask (n, n) float32, radius px)``, 1 inside ``radius − 1.5`` px, a raised-cosine edge to
    0 at ``radius + 1.5`` px (:func:`r2d.transforms.soft_circle`); ``(None, None)`` without a
    diameter (the whole disc, no mask)."""
    if not diameter:
        return None, None
    radius = diameter / 2 / (apix or 1.0)
    return tf.soft_circle(n, radius - MASK_EDGE / 2, MASK_EDGE), radius


def automask2d(images: np.ndarray, *, sigma: float = 0.2, nmaxseed: int = 10, nshells: int = 3,
               nshellsgauss: int = 5) -> np.ndarray:
    """Multiply each image by an automatic mask.

    Threshold ``mean + sigma·σ``; keep the 4-connected regions above it that contain one
    of the ``nmaxseed`` highest pixels or touch the central disc (radius n/10); grow by
    ``nshells`` hard shells and ``nshellsgauss`` soft shells ``exp(-(2t/nshellsgauss)²)``.
    ``(K, n, n)`` → ``(K, n, n)`` float32 (K = number of class averages).
    """
    from scipy import ndimage  # only here: every job that imports r2d.masks would pay for it

    images = np.asarray(images, dtype=np.float32)
    out = np.empty_like(images)
    n = images.shape[-1]
    centre = tf.circle_mask(n, max(1, n / 10))
    four = ndimage.generate_binary_structure(2, 1)
    for k, img in enumerate(images):  # one per class average
        thr = img.mean() + sigma * img.std()
        above = img > thr
        lab, nlab = ndimage.label(above, structure=four)
        if nlab == 0:
            out[k] = img
            continue
        seeds = np.argsort(img.ravel())[::-1][:nmaxseed]
        keep_labels = set(lab.ravel()[seeds]) | set(np.unique(lab[centre & above]))
        keep_labels.discard(0)
        mask = np.isin(lab, list(keep_labels)).astype(np.float32)
        if nshells > 0:
            mask = ndimage.binary_dilation(mask > 0, structure=four, iterations=nshells).astype(np.float32)
        soft = mask.copy()
        cur = mask > 0
        for t in range(nshellsgauss):
            grown = ndimage.binary_dilation(cur, structure=four)
            soft[grown & ~cur] = np.exp(-((2.0 * (t + 1) / nshellsgauss) ** 2))
            cur = grown
        out[k] = img * soft
    return out
