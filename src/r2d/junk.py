"""Junk likelihood of single particles (the particle step of ``r2d select --auto``).

At realistic SNR junk (noise picks, blobs, aggregates, carbon edges, fragments) spreads over the
good classes, where no class score can reach it. Each particle is therefore judged on its own,
from how its image looks, by a classifier that the class decisions teach:

1. :func:`image_features`: per image, rotation-invariant statistics of its low-passed image.
   The image is shrunk to at most 64 px first (Fourier cropping), then low-passed at
   ``c`` ∈ :data:`CUTOFFS` cycles/px; with the disc ``r < 0.4 · box`` and the corners
   ``r > 0.45 · box`` (as ``r2d.select.contrast``) the features are

   * ``log(var_disc / var_corners)`` at each cutoff (a centred particle has more low-resolution
     signal in the disc than outside; noise has none, an edge has it everywhere);
   * ``log(var_lowpass / var_image)`` at the two ends of :data:`CUTOFFS` (how much of the
     image's power is at low resolution: blobs and aggregates have more, noise less);
   * the radial profile of the image low-passed at :data:`PROFILE_CUTOFF`, in
     :data:`PROFILE_BINS` rings out to the box edge, scaled to unit norm (size and shape of what
     is in the box: fragments are smaller, aggregates larger);
   * the offset of the centroid of ``|lowpass|`` (inside ``0.45 · box``) from the box centre, in
     boxes (off-centre aggregates and fragments).

   The caller adds the particle's score against its class average (``r2dScore``).
2. :func:`junk_probability`: a logistic regression (features standardised, classes balanced)
   learns to tell the members of the classes the class step dropped from those it kept; it is
   fitted a second time on its own calls (probability above :data:`JUNK_P`), so that a good
   particle in a dropped class, or junk in a kept one, no longer teaches the wrong answer. The
   probability of the second fit is each particle's junk likelihood.

The class decisions are noisy labels: the classifier learns what the dropped classes have in
common (no structure, wrong size, an edge), not which class a particle is in, because none of its
features says which class a particle is in. Measurements: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.fft as sfft

log = logging.getLogger(__name__)

CUTOFFS = (0.05, 0.08, 0.12, 0.2)  # low-pass cutoffs, cycles/px of the (shrunk) image
PROFILE_CUTOFF = 0.08
PROFILE_BINS = 8
FEATURE_BOX = 64  # images are shrunk to at most this box for the features
JUNK_P = 0.7  # junk probability at and above which a particle is called junk
MIN_LABELS = 10  # fewest particles on either side for the classifier to be fitted

FEATURES = ([f"ratio_{c:g}" for c in CUTOFFS] + [f"power_{CUTOFFS[0]:g}", f"power_{CUTOFFS[-1]:g}"]
            + [f"profile_{b}" for b in range(PROFILE_BINS)] + ["centroid"])


def _shrink(images: np.ndarray, m: int) -> np.ndarray:
    """Spectra ``(k, m, m//2+1)`` of ``images (k, n, n)`` cropped to the ``m`` lowest frequencies."""
    n = images.shape[-1]
    F = sfft.rfft2(images.astype(np.float64))
    if m == n:
        return F
    h = m // 2  # m = FEATURE_BOX is even; its Nyquist row and column are left out (set to 0)
    out = F[:, np.r_[0:h, n - h:n], :h + 1] * (m / n) ** 2
    out[:, h, :] = 0
    out[:, :, h] = 0
    return out


def image_features(images: np.ndarray) -> np.ndarray:
    """``(k, len(FEATURES))`` float64 features (module docstring) of ``images (k, n, n)``."""
    n = images.shape[-1]
    m = min(n, FEATURE_BOX)
    F = _shrink(np.asarray(images), m)
    fy = np.fft.fftfreq(m)[:, None]
    fx = np.fft.rfftfreq(m)[None, :]
    fr = np.hypot(fy, fx)
    v, u = np.mgrid[0:m, 0:m] - m // 2
    rr = np.hypot(u, v)
    disc, corners, inner = rr < 0.4 * m, rr > 0.45 * m, rr < 0.45 * m
    k = len(F)
    tiny = 1e-30
    full = sfft.irfft2(F, s=(m, m)).reshape(k, -1).var(axis=1) + tiny
    ratios, power = [], []
    for c in CUTOFFS:
        lp = sfft.irfft2(F * (fr < c), s=(m, m))
        ratios.append(np.log((lp[:, disc].var(axis=1) + tiny) / (lp[:, corners].var(axis=1) + tiny)))
        if c in (CUTOFFS[0], CUTOFFS[-1]):
            power.append(np.log(lp.reshape(k, -1).var(axis=1) / full + tiny))
        if c == PROFILE_CUTOFF:
            ring = np.minimum((rr / (m / 2) * PROFILE_BINS).astype(int), PROFILE_BINS)
            prof = np.stack([lp[:, ring == b].mean(axis=1) for b in range(PROFILE_BINS)], axis=1)
            profile = prof / (np.sqrt((prof ** 2).sum(axis=1, keepdims=True)) + tiny)
            w = np.abs(lp) * inner
            tot = w.sum(axis=(1, 2)) + tiny
            centroid = np.hypot((w * u).sum(axis=(1, 2)) / tot, (w * v).sum(axis=(1, 2)) / tot) / m
    return np.column_stack(ratios + power + [profile, centroid])


def stack_features(stack, block: int | None = None) -> np.ndarray:
    """:func:`image_features` of every image of ``stack`` (an ``r2d.io`` Stack), read in blocks
    of ``block`` images (default ``r2d.io.blocks.image_block``: 64 MiB of images)."""
    from r2d.io.blocks import image_block

    block = block or image_block(stack.box)
    parts = []
    for lo in range(0, stack.n, block):
        parts.append(image_features(stack.read(slice(lo, min(stack.n, lo + block)))))
        if (lo // block) % 20 == 19 or lo + block >= stack.n:
            log.info("junk features: %d of %d particles", min(stack.n, lo + block), stack.n)
    return np.concatenate(parts)


def _fit_predict(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced"))
    return clf.fit(X, y).predict_proba(X)[:, 1]


def junk_probability(X: np.ndarray, dropped: np.ndarray, junk_p: float = JUNK_P) -> np.ndarray | None:
    """Junk likelihood ``(N,)`` in [0, 1] of the particles with features ``X (N, F)``, taught by
    ``dropped (N,)`` bool (members of the classes the class step dropped); refitted once on its
    own calls ``p >= junk_p``. None when either side has fewer than :data:`MIN_LABELS` particles."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(dropped, dtype=bool)
    if min(y.sum(), (~y).sum()) < MIN_LABELS:
        return None
    p = _fit_predict(X, y)
    y2 = p >= junk_p
    if min(y2.sum(), (~y2).sum()) >= MIN_LABELS:
        p = _fit_predict(X, y2)
    return p
