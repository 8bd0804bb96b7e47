"""Fourier shell (ring) correlation of 2-D half-set sums and the resolution it gives
(docs/algorithm.md §3.11)."""

from __future__ import annotations

import numpy as np

from r2d import transforms as tf


def ring_fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FSC per ring ``r = round(|k|)`` between ``a`` and ``b``, each ``(K, n, n//2+1)`` complex
    (rfft2 layout): ``(K, n//2+1)`` float64 (0 where a ring of either is empty)."""
    n = a.shape[-2]
    ring = tf.ring_index(n).ravel()
    nr = n // 2 + 1
    keep = ring < nr
    K = a.shape[0]
    a = a.reshape(K, -1)[:, keep]
    b = b.reshape(K, -1)[:, keep]
    r = ring[keep]

    def rsum(v):
        return np.stack([np.bincount(r, weights=row, minlength=nr) for row in v]) if len(v) else np.zeros((0, nr))

    num = rsum((a * np.conj(b)).real)
    den = np.sqrt(rsum(np.abs(a) ** 2) * rsum(np.abs(b) ** 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, 0.0)


def fsc_resolution(fsc: np.ndarray, n: int, apix: float | None, threshold: float = 0.143) -> np.ndarray:
    """Resolution (Å; pixels when ``apix`` is None) where each FSC curve ``(K, n//2+1)`` first
    falls below ``threshold``, linearly interpolated between rings: ``n·apix/r``. A curve that
    never falls below gives Nyquist (``2·apix``); one below at ring 1 gives ``n·apix``."""
    fsc = np.atleast_2d(np.asarray(fsc, dtype=np.float64))
    apix = 1.0 if apix is None else float(apix)
    nr = fsc.shape[1]
    out = np.empty(len(fsc))
    for k, c in enumerate(fsc):
        below = np.flatnonzero(c[1:] < threshold) + 1
        if len(below) == 0:
            r = nr - 1
        else:
            j = below[0]
            r = float(j) if j == 1 else (j - 1) + (c[j - 1] - threshold) / max(c[j - 1] - c[j], 1e-12)
        out[k] = n * apix / max(r, 1.0)
    return out
