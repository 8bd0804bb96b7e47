"""Polar resampling and angular Fourier transforms of the alignment engine (steps 1–2 of
:mod:`r2d.align`).

Images are resampled onto a polar grid (rings ``r = 1 … n/2-1``, ``L`` angles from +x towards
+y) by one sparse bilinear matrix (:func:`polar_matrix`) applied to columns of whole-pixel
shifted images (:func:`_columns`), then Fourier transformed along the angle and normalised
(:func:`_polar_block`): references at every candidate shift (:func:`polar_ft`,
:func:`_ref_ft`), particles shifted by a previous answer (:func:`_spectra`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft as sfft
import scipy.sparse as sp


def n_angles(n: int) -> int:
    """Angular samples: a power of two ≥ 2π·(n/2) (n=64 → 256, 1.4°)."""
    return int(2 ** np.ceil(np.log2(2 * np.pi * (n // 2))))


def shift_grid(maxshift: float) -> np.ndarray:
    """Integer shifts ``(S, 2)`` as ``(sx, sy)`` with ``sx² + sy² ≤ maxshift²`` (``(0, 0)`` first)."""
    m = int(np.floor(maxshift))
    g = np.array([(x, y) for y in range(-m, m + 1) for x in range(-m, m + 1) if x * x + y * y <= maxshift * maxshift + 1e-9])
    if len(g) == 0:
        g = np.zeros((1, 2), dtype=int)
    order = np.argsort(np.hypot(g[:, 0], g[:, 1]), kind="stable")
    return g[order].astype(np.float64)


@lru_cache(maxsize=64)
def polar_matrix(n: int, L: int, mirror: bool = False, ox: float = 0.0, oy: float = 0.0) -> sp.csr_matrix:
    """Sparse bilinear matrix ``(R·L, n²)`` sampling an image at polar points ``M^m p + o``.

    ``p = c + r(cos θ, sin θ)``, ``c = (n/2, n/2)``, rings ``r = 1 … n/2-1``, ``θ = 2πl/L``;
    the mirror ``M`` negates x about the centre; ``o = (ox, oy)`` a sub-pixel offset (px).
    Cached per ``(n, L, mirror, ox, oy)``.
    """
    c = n // 2
    radii = np.arange(1, n // 2, dtype=np.float64)
    theta = 2 * np.pi * np.arange(L) / L
    x = radii[:, None] * np.cos(theta)[None, :]
    y = radii[:, None] * np.sin(theta)[None, :]
    if mirror:
        x = -x
    x = (x + c + ox).ravel()
    y = (y + c + oy).ravel()
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = x - x0
    fy = y - y0
    rows = np.arange(x.size)
    ri, ci, wi = [], [], []
    for dy, dx, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        xx, yy = x0 + dx, y0 + dy
        ok = (xx >= 0) & (xx < n) & (yy >= 0) & (yy < n) & (w > 0)
        ri.append(rows[ok])
        ci.append((yy * n + xx)[ok])
        wi.append(w[ok])
    return sp.csr_matrix(
        (np.concatenate(wi), (np.concatenate(ri), np.concatenate(ci))), shape=(x.size, n * n), dtype=np.float32
    )


def _columns(images: np.ndarray, rows, sx, sy, *, circular: bool, pad: int = 0) -> np.ndarray:
    """``(n², B)`` float32 image columns: column ``j`` is image ``rows[j]`` sampled at
    ``q + (sx[j], sy[j])`` for every pixel ``q`` (whole-pixel shifts), wrapped around the box
    (``circular``: exactly a Fourier shift by ``-s``) or zero outside it (then ``images`` come
    zero-padded by ``pad ≥ |s|`` px on every side, box ``n + 2·pad``). One gather, in the
    layout the polar resampling matrix multiplies."""
    m = images.shape[-1]
    n = m - 2 * pad
    rows = np.asarray(rows, dtype=np.int64)
    sx = np.rint(np.asarray(sx, dtype=np.float64)).astype(np.int64)
    sy = np.rint(np.asarray(sy, dtype=np.float64)).astype(np.int64)
    ar = np.arange(n)
    y = ar[:, None] + sy[None, :] + pad                                        # (n, B)
    x = ar[:, None] + sx[None, :] + pad
    if circular:
        y, x = y % n, x % n
    idx = rows * (m * m) + y[:, None, :] * m + x[None, :, :]
    return np.take(images.reshape(-1), idx.reshape(n * n, -1))


def _ring_weights(n: int) -> np.ndarray:
    return np.sqrt(np.arange(1, n // 2, dtype=np.float64))


def _polar_block(cols: np.ndarray, n: int, L: int, K: int, mirror: bool, workers: int,
                 offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Normalised polar spectra ``(R, K, B)`` complex64 of image columns ``cols`` ``(n², B)``
    sampled at the polar points ``M^m p + offset`` (:func:`polar_matrix`).

    Each polar image is area-weighted (√r per ring on both sides gives weight r in a
    product), mean-subtracted and scaled to unit norm (over all ``L`` angles, also when only
    the first ``K`` angular frequencies are kept), so the inner product of two is their
    correlation coefficient over the disc. The images are the fastest axis throughout: the
    angular FFTs run vectorised across them (about 3x faster than image by image).
    """
    R = n // 2 - 1
    B = cols.shape[1]
    if B == 1:  # the sums below run along a strided axis only with 2+ columns (same rounding for all B)
        return _polar_block(np.hstack([cols, np.zeros_like(cols)]), n, L, K, mirror, workers, offset)[..., :1]
    pol = (polar_matrix(n, L, bool(mirror), *offset) @ cols).reshape(R, L, B)  # float32
    ft = sfft.rfft(pol, axis=1, workers=workers)                               # (R, L//2+1, B)
    w = _ring_weights(n)[:, None]
    w2 = w**2
    # every sum runs over an axis other than the images' (sequential, so each column's value
    # does not depend on the other columns or their number: chunked runs are bit-identical)
    rsum = ft[:, 0, :].real.astype(np.float64)                                 # Σ_θ x per ring
    rsq = np.square(pol).sum(axis=1, dtype=np.float64)                         # Σ_θ x² per ring
    mean = (w2 * rsum).sum(axis=0) / (L * w2.sum())                            # (B,) area-weighted
    energy = (w2 * (rsq - 2 * mean * rsum + L * mean**2)).sum(axis=0)          # Σ_r w² Σ_θ (x - mean)²
    norm = np.sqrt(np.maximum(energy, 0.0))
    norm[norm <= 1e-30] = 1.0
    scale = (w / norm[None, :]).astype(np.float32)                            # (R, B)
    out = ft[:, :K, :] * scale[:, None, :]
    out[:, 0, :] -= (L * mean).astype(np.float32)[None, :] * scale
    return out


def _block_len(n: int) -> int:
    """Images per polar block: about 2 MB of image columns (128 at 64 px)."""
    return max(8, (1 << 19) // (n * n))


def polar_ft(images: np.ndarray, L: int, shifts=None, mirror: bool = False, workers: int = 1,
             band: int | None = None) -> np.ndarray:
    """Normalised polar Fourier transforms ``(N, S, R, K)`` complex64, ``K = band or L//2+1``,
    of the images at whole-pixel ``shifts`` ``(S, 2)`` (the image at ``M^m(p + s)``, zero
    outside the box), normalised as in :func:`_polar_block`."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    N, n, _ = images.shape
    shifts = np.zeros((1, 2)) if shifts is None else np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    if not np.array_equal(shifts, np.rint(shifts)):
        raise ValueError("polar_ft: shifts must be whole pixels")
    S = len(shifts)
    R = n // 2 - 1
    K = L // 2 + 1 if band is None else int(band)
    # the image at M(p + s) is the window q ↦ image(q + Ms) at M p
    ms = shifts * ([-1.0, 1.0] if mirror else [1.0, 1.0])
    rows = np.repeat(np.arange(N), S)
    sx, sy = np.tile(ms[:, 0], N), np.tile(ms[:, 1], N)
    p = int(np.abs(ms).max(initial=0))
    padded = np.pad(images, ((0, 0), (p, p), (p, p))) if p else images  # padded once for all blocks
    out = np.empty((N * S, R, K), dtype=np.complex64)
    B = _block_len(n)
    for lo in range(0, N * S, B):
        sl = slice(lo, min(N * S, lo + B))
        cols = _columns(padded, rows[sl], sx[sl], sy[sl], circular=False, pad=p)
        out[sl] = _polar_block(cols, n, L, K, mirror, workers).transpose(2, 0, 1)
    return out.reshape(N, S, R, K)


#: sub-pixel shifts of the fine levels are applied in steps of this many pixels
SUBPIXEL_STEP = 0.25


def _spectra(images: np.ndarray, L: int, K: int, rows=None, dx=None, dy=None, workers: int = 1) -> np.ndarray:
    """Particles' normalised polar spectra ``(K, B, R)`` complex64 (the layout of the
    correlation products) of image ``rows[j]`` shifted by ``(dx[j], dy[j])`` px (content moves
    to ``+d``; none by default) for ``j`` in ``rows``.

    The shift is a circular whole-pixel gather (:func:`_columns`) and a sub-pixel offset of
    the polar sampling points, ``d`` rounded to ``SUBPIXEL_STEP``: one polar matrix per
    offset, each used for all columns that share it."""
    N, n, _ = images.shape
    rows = np.arange(N) if rows is None else np.asarray(rows)
    out = np.empty((K, len(rows), n // 2 - 1), dtype=np.complex64)
    d = np.zeros((2, len(rows))) if dx is None else _quantised(np.stack([dx, dy]))   # (2, B)
    di = np.rint(d)
    # one group per sub-pixel offset d - di (in SUBPIXEL_STEP steps): the whole-pixel-shifted
    # image is sampled at p - (d - di)
    offsets, group = np.unique((d - di).T, axis=0, return_inverse=True)
    B = _block_len(n)
    for g, (fx, fy) in enumerate(offsets):
        sel = np.flatnonzero(group.ravel() == g)
        for lo in range(0, len(sel), B):
            s_ = sel[lo:lo + B]
            cols = _columns(images, rows[s_], -di[0, s_], -di[1, s_], circular=True)
            out[:, s_] = _polar_block(cols, n, L, K, False, workers, (-float(fx), -float(fy))).transpose(1, 2, 0)
    return out


def _quantised(d):
    """Shifts rounded as :func:`_spectra` applies them."""
    return np.rint(np.asarray(d, dtype=np.float64) / SUBPIXEL_STEP) * SUBPIXEL_STEP


def _ref_ft(refs, L, shifts, mirrors, workers):
    """Polar FTs of the references at every shift and mirror, mirror-major ``(nm·J, S, R, L//2+1)``."""
    return np.concatenate([polar_ft(refs, L, shifts, m, workers) for m in mirrors], axis=0)
