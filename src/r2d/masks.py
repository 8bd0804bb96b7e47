"""Automatic masks (EMAN2 ``mask.auto2d``, docs/algorithm.md §3.9), vectorised over a stack
where possible."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from r2d import transforms as tf


def automask2d(images: np.ndarray, *, sigma: float = 0.2, nmaxseed: int = 10, nshells: int = 3,
               nshellsgauss: int = 5) -> np.ndarray:
    """Multiply each image by an automatic mask.

    Threshold ``mean + sigma·σ``; keep the 4-connected regions above it that contain one
    of the ``nmaxseed`` highest pixels or touch the central disc (radius n/10); grow by
    ``nshells`` hard shells and ``nshellsgauss`` soft shells ``exp(-(2t/nshellsgauss)²)``.
    ``(K, n, n)`` → ``(K, n, n)`` float32 (K = number of class averages).
    """
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
