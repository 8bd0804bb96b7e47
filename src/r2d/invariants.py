"""Rotation/translation/mirror-invariant particle features (docs/algorithm.md §3.2).

Mirrors EMAN2's ``EMData::make_footprint(0)`` (the "EMAN1 rotational footprint") as used by
``e2proc2d.py --fp=0`` in e2refine2d's initial stage. Everything is vectorised over a stack:
batched FFTs (``scipy.fft``) and one precomputed sparse bilinear polar-resampling matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
import scipy.sparse as sp

from r2d.errors import InputError
from r2d.transforms import edge_mean

__all__ = ["footprint", "footprint_shape", "polar_matrix", "good_fft_size"]

# EMAN2's ``good_box_sizes`` (EMAN2.py) up to 512; above that, even 7-smooth numbers.
_GOOD_SIZES = (16, 24, 32, 36, 40, 44, 48, 52, 56, 60, 64, 72, 84, 96, 100, 104, 112, 120, 128,
               132, 140, 168, 180, 192, 196, 208, 216, 220, 224, 240, 256, 260, 288, 300, 320,
               352, 360, 384, 416, 440, 448, 480, 512)

# Upper bound on batch * P * P (float32 elements) per FFT batch, to bound memory (~64 MiB).
_MAX_BATCH_ELEMENTS = 1 << 24


def good_fft_size(m: int) -> int:
    """Smallest FFT-friendly size ``>= m``: EMAN2's ``good_box_sizes`` table up to 512, then the
    next even number whose prime factors are all ``<= 7``. Examples: 100 -> 100, 200 -> 208."""
    m = int(m)
    for s in _GOOD_SIZES:
        if s >= m:
            return s
    s = m + (m % 2)
    while True:
        r = s
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return s
        s += 2


def polar_matrix(size, center, radii, angles) -> sp.csr_matrix:
    """Sparse bilinear polar-resampling operator.

    ``size``: ``n`` (square) or ``(ny, nx)``; ``center``: ``c`` or ``(cx, cy)`` in pixel indices;
    ``radii``, ``angles`` (radians): 1-D sequences. Angle θ is measured from +x towards +y;
    sample point ``x = cx + r cosθ``, ``y = cy + r sinθ`` of an array indexed ``a[y, x]``.
    Returns a ``(len(radii)*len(angles), ny*nx)`` CSR matrix ``M`` (float64) with rows ordered
    radius-major (``row = i_r * len(angles) + i_theta``), so that for a C-contiguous image ``a``
    ``(M @ a.ravel()).reshape(len(radii), len(angles))`` is the polar image, and for a stack
    ``stack.reshape(N, -1) @ M.T`` does all images at once. Bilinear weights; neighbours outside
    the grid contribute 0 (same as ``scipy.ndimage.map_coordinates(order=1,
    mode="grid-constant", cval=0)``).
    """
    if np.ndim(size) == 0:
        ny = nx = int(size)
    else:
        ny, nx = (int(s) for s in size)
    if np.ndim(center) == 0:
        cx = cy = float(center)
    else:
        cx, cy = (float(c) for c in center)
    r = np.asarray(radii, dtype=np.float64).ravel()
    th = np.asarray(angles, dtype=np.float64).ravel()
    x = (cx + r[:, None] * np.cos(th)[None, :]).ravel()
    y = (cy + r[:, None] * np.sin(th)[None, :]).ravel()
    # snap round-off (cos(pi/2) != 0) so exact grid points get exact weights
    for v in (x, y):
        near = np.abs(v - np.round(v)) < 1e-9
        v[near] = np.round(v[near])
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    npts = x.size
    pts = np.arange(npts)
    rows, cols, vals = [], [], []
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi = x0 + dx
        yi = y0 + dy
        ok = (w != 0) & (xi >= 0) & (xi < nx) & (yi >= 0) & (yi < ny)
        rows.append(pts[ok])
        cols.append(yi[ok] * nx + xi[ok])
        vals.append(w[ok])
    m = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(npts, ny * nx))
    return m.tocsr()


@dataclass(frozen=True)
class _Plan:
    n: int
    P: int          # padded size
    cs: int         # pad offset
    Q: int          # crop size
    L: int          # angular samples over 0..180 deg
    radii: np.ndarray
    sqrt_h: np.ndarray   # (P, P//2+1) float32, sqrt of the Gaussian high-pass on the rfft grid
    crop_idx: np.ndarray  # (Q,) indices into the *unshifted* lag array, zero lag at Q//2
    polar: sp.csr_matrix  # (len(radii)*L, Q*Q) float32, radially weighted
    edge_idx: np.ndarray  # (2,) unshifted indices of the shifted array's first/last row/col


@lru_cache(maxsize=8)
def _plan(n: int) -> _Plan:
    if n % 2 or n < 24:
        raise InputError(f"footprints need square images of even size >= 24 pixels; got {n}")
    P = (7 * n // 4) & ~7                 # 1 3/4 n, rounded down to a multiple of 8
    cs = (P - n) // 2
    Q = 3 * n // 2
    r1 = 4
    r2 = Q // 2 - 2
    r2 -= r2 % 2
    m = int(np.floor(np.pi * Q / 3))
    m -= m % 4
    L = good_fft_size(m)
    # rows j = 4 .. R-3 of the unwrap (R = r2 - r1) are kept: radii r1+4 .. r2-3
    radii = np.arange(r1 + 4, r2 - 2, dtype=np.float64)
    angles = np.arange(L) * (np.pi / L)
    c = Q // 2
    pm = polar_matrix(Q, c, radii, angles)
    pm = (sp.diags(np.repeat(radii, L)) @ pm).tocsr().astype(np.float32)   # radial weight r
    fy = np.fft.fftfreq(P)[:, None]
    fx = np.fft.rfftfreq(P)[None, :]
    s2 = fx * fx + fy * fy                                   # cycles/pixel^2 on the padded grid
    h = 1.0 - np.exp(-s2 * (n / 1.5) ** 2)                   # cutoff_abs = 1.5/n (unpadded n)
    sqrt_h = np.sqrt(h).astype(np.float32)
    crop_idx = (np.arange(Q) - c) % P                        # lag l sits at unshifted index l mod P
    edge_idx = np.array([P // 2, P // 2 - 1])                # shifted rows 0 and P-1
    return _Plan(n, P, cs, Q, L, radii, sqrt_h, crop_idx, pm, edge_idx)


def footprint_shape(n: int) -> tuple[int, int]:
    """Footprint shape ``(rows, cols) = (R-6, L/2)`` for box size ``n``: 64 -> (36, 50), 128 -> (84, 104)."""
    p = _plan(int(n))
    return (len(p.radii), p.L // 2)


def _footprint_batch(f: np.ndarray, p: _Plan, workers: int) -> np.ndarray:
    b, n = f.shape[0], p.n
    # 1. pad to P x P with the edge mean
    canvas = np.empty((b, p.P, p.P), dtype=np.float32)
    canvas[...] = edge_mean(f).astype(np.float32)[:, None, None]
    canvas[:, p.cs:p.cs + n, p.cs:p.cs + n] = f
    # 2. "mutual self-correlation": |F| * sqrt(H), back to real space (zero lag at the corner)
    F = scipy.fft.rfft2(canvas, workers=workers)
    del canvas
    A = np.abs(F)
    A *= p.sqrt_h
    del F
    m = scipy.fft.irfft2(A, s=(p.P, p.P), workers=workers)
    del A
    # 3. edge mean of the centred (fftshifted) array, read from the unshifted one
    e0, e1 = p.edge_idx
    edge = (m[:, e0, :].sum(-1, dtype=np.float64) + m[:, e1, :].sum(-1, dtype=np.float64)
            + m[:, :, e0].sum(-1, dtype=np.float64) + m[:, :, e1].sum(-1, dtype=np.float64)) / (4 * p.P)
    # 4. central Q x Q crop (zero lag at Q//2), minus the edge mean
    crop = m[:, p.crop_idx][:, :, p.crop_idx]
    del m
    crop -= edge.astype(np.float32)[:, None, None]
    # 5./6. radially weighted polar unwrap over 0..180 deg, trimmed rows (one sparse matmul)
    polar = (p.polar @ crop.reshape(b, -1).T).T.reshape(b, len(p.radii), p.L)
    # 7. circular autocorrelation of every row along the angle, first L/2 lags
    G = scipy.fft.rfft(polar, axis=-1, workers=workers)
    ac = scipy.fft.irfft(G.real ** 2 + G.imag ** 2, n=p.L, axis=-1, workers=workers)
    return ac[..., : p.L // 2].astype(np.float32)


def footprint(images: np.ndarray, *, workers: int = 1, batch: int = 256) -> np.ndarray:
    """EMAN1 rotational footprint ``make_footprint(0)`` of every image (docs/algorithm.md §3.2).

    ``images``: ``(N, n, n)`` (any real dtype; even ``n >= 24``). Returns ``(N, R-6, L/2)``
    float32 (``footprint_shape(n)``; n=64 -> 36x50): rows = radius 8 .. r2-3, columns = angular
    lag 0 .. L/2-1 of the row autocorrelation. Invariant (up to edge effects) under translation,
    rotation and mirroring. High-pass uses ``sqrt(H)`` as EMAN2 does; the overall scale is
    arbitrary (MSA unit-normalises). Works in batches of ``batch`` images (fewer for large
    ``n``) with ``workers`` FFT threads.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise InputError(f"footprint needs a stack of square images (N, n, n); got shape {images.shape}")
    p = _plan(images.shape[1])
    N = images.shape[0]
    out = np.empty((N, len(p.radii), p.L // 2), dtype=np.float32)
    step = max(1, min(int(batch), _MAX_BATCH_ELEMENTS // (p.P * p.P)))
    for s in range(0, N, step):
        chunk = np.asarray(images[s:s + step], dtype=np.float32)
        out[s:s + chunk.shape[0]] = _footprint_batch(chunk, p, workers)
    return out
