"""The alignment engine: rotation + translation + mirror search, vectorised (algorithm.md §3.7).

Every function here finds, for particle ``i`` and reference ``j``, the MTR transform ``T``
(see :mod:`r2d.transforms`) with ``T(particle_i) ≈ reference_j``: **the particle is brought
into the reference frame** (what EMAN2 stores in ``simmx`` and ``classmx``, and what an
aligner's ``xform.align2d`` means for ``this=particle, to=reference``).

How the search works (no Python loop over particles or angles):

1. Particles are resampled once onto a polar grid (rings ``r = 1 … n/2-1``, ``L`` angles
   from +x towards +y) by one sparse bilinear interpolation matrix, and Fourier transformed
   along the angle (``scipy.fft.rfft``, batched).
2. References are resampled onto the same polar grid **at every candidate shift** ``s`` on
   the integer grid (whole-pixel windows of the zero-padded reference) and, for the mirror
   search, mirrored, each normalised to zero mean and unit norm with area weights ``r``, so
   a correlation value is a correlation coefficient over the disc.
3. For each angular frequency the particle–reference cross-power summed over rings is one
   complex matrix product (BLAS); an inverse transform along the angle (:func:`_angular_ifft`)
   gives the correlation as a function of the in-plane angle for all shifts, mirrors and references at once.
4. The best (shift, angle, mirror) is refined to sub-pixel/sub-sample precision by parabolic
   interpolation of the correlation peak.

Large shift ranges are searched as a tree (:func:`search`): steps 1–4 over the whole range
on Fourier-downsampled images (:func:`coarse_factor`), then at every factor of two up to the
full images all angles and the shifts within ``LOCAL_RADIUS`` px of the previous level's
answer, for the kept mirror, with every pair's particle shifted by that answer (whole pixels
by a circular gather, the rest, in quarter pixels, as an offset of the polar sampling points;
:func:`_local_level`).

Every value computed for a pair depends only on its particle and reference, never on the
other pairs in the call (sums run along axes that do not mix images; matrix products go
through :mod:`r2d.stable`), so chunked runs are bit-identical to unchunked ones.

Rotating the particle by ``alpha`` moves polar sample ``θ+alpha`` to ``θ``, so a correlation peak at
angular lag ``τ`` gives ``alpha = τ·360/L``; the shifted reference ``ref(p + s)`` matched by
the rotated particle gives translation ``t = s``; a mirrored reference sampled at
``M(p + s)`` gives the mirror flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft as sfft
import scipy.sparse as sp

from r2d import stable
from r2d import transforms as tf
from r2d.cmp import compare
from r2d.errors import ConfigError
from r2d.options import Option, parse


@dataclass(frozen=True)
class Alignment:
    """Best transforms ``T(particle) ≈ reference`` (angles in degrees, shifts in pixels).

    All arrays share one shape: ``(N, R)`` for all-versus-all, ``(N,)`` for pairwise.
    ``score`` is the comparator value (lower is better); ``corr`` the search correlation.
    """

    alpha: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    mirror: np.ndarray
    score: np.ndarray
    corr: np.ndarray

    def params(self, index=...):
        return (self.alpha[index], self.tx[index], self.ty[index], self.mirror[index])


# ----------------------------------------------------------------------------------------
# polar grids


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


# ----------------------------------------------------------------------------------------
# the search


def _parabolic(cm, c0, cp):
    """Offset in (-0.5, 0.5) of the vertex of the parabola through (-1, cm), (0, c0), (1, cp)."""
    den = cm - 2 * c0 + cp
    with np.errstate(invalid="ignore", divide="ignore"):
        off = np.where(den < 0, 0.5 * (cm - cp) / den, 0.0)
    return np.clip(np.nan_to_num(off), -0.5, 0.5)


def _out_len(L: int, K: int) -> int:
    """Angular samples of the correlation function: twice the band ``K`` rounded up to a power
    of two (at least 32, at most ``L``); the peak is refined by parabolic interpolation."""
    return int(min(L, max(32, 2 ** int(np.ceil(np.log2(max(2 * (K - 1), 1)))))))


@lru_cache(maxsize=32)
def _synthesis(K: int, Lo: int, L: int) -> np.ndarray:
    """``(Lo, 2K)`` float64 real matrix ``[A_r A_i]``: ``A_r·Re X + A_i·Im X`` is the
    band-limited correlation ``(1/L)·Σ_{|k|<K} X_k e^{2πikτ/Lo}`` of two length-``L`` polar
    signals (``X_{-k} = conj X_k``; the term ``k = L/2`` counted once) at the lags
    ``τ·L/Lo`` samples, ``τ = 0 … Lo-1``."""
    k = np.arange(K)
    tau = np.arange(Lo)[:, None]
    w = np.where((k == 0) | (2 * k == L), 1.0, 2.0) / L
    ph = 2 * np.pi * tau * k[None, :] / Lo
    return np.hstack([w * np.cos(ph), -w * np.sin(ph)])


#: longest angular output synthesised by a matrix product; longer ones use the inverse FFT
SYNTHESIS_MAX = 64


def _ifft_scale(K: int, Lo: int, L: int) -> float:
    """Factor from ``_angular_ifft(..., scaled=False)`` to the correlation coefficient."""
    return 1.0 if Lo <= SYNTHESIS_MAX else Lo / L


def _angular_ifft(X: np.ndarray, Lo: int, L: int, workers: int = 1, scaled: bool = True) -> np.ndarray:
    """Correlation functions ``(Lo, ...)`` float32 from band-limited cross-spectra ``X``
    ``(K, ...)`` (complex) of length-``L`` polar signals: the band-limited correlation
    ``(1/L)·Σ_{|k|<K} X_k e^{2πikτ/Lo}`` (``X_{-k} = conj X_k``) at ``Lo ≥ 2(K-1)`` equally spaced
    lags (``Lo = 1``: the zero lag only).

    Up to ``Lo = SYNTHESIS_MAX`` as one real matrix product (:func:`_synthesis`, BLAS; 5×
    faster than many short inverse FFTs at 32 lags), longer ones by a length-``Lo`` inverse
    FFT along the first axis: when the band reaches ``Lo/2 < L/2``, that term stands for
    ``±Lo/2`` (two frequencies of the length-``L`` signal) where irfft takes it once as its
    Nyquist term, so it is doubled first. ``scaled=False``: the FFT route leaves out the
    constant factor :func:`_ifft_scale` (the caller scales only the peak values it keeps).

    Both routes compute in float64 and round once (:mod:`r2d.stable`), so a column's values
    do not depend on the other columns, their number or the threads.
    """
    K = X.shape[0]
    rest = X.shape[1:]
    if Lo <= SYNTHESIS_MAX:
        Xf = X.reshape(K, -1)
        C = stable.matmul(_synthesis(K, Lo, L), np.concatenate([Xf.real, Xf.imag]))
        return C.astype(np.float32).reshape((Lo,) + rest)
    if 2 * (K - 1) > Lo:
        raise ValueError(f"{Lo} lags cannot hold a band of {K} frequencies")
    X = stable.wide(X)
    if 2 * (K - 1) == Lo < L:
        X = X.copy()
        X[K - 1] *= 2
    C = sfft.irfft(X, n=Lo, axis=0, workers=workers).astype(np.float32)
    return C * np.float32(Lo / L) if scaled else C


def _ref_layout(ref_ft: np.ndarray, nm: int) -> np.ndarray:
    """Conjugated reference FTs ``(nm·J, S, R, K)`` (mirror-major) → ``(K, R, J, nm, S)``
    complex128, the type :func:`r2d.stable.matmul` multiplies in (contiguous: all versus all
    multiplies it as one ``(K, R, J·nm·S)`` matrix)."""
    JM, S, R, K = ref_ft.shape
    q = np.conj(ref_ft).reshape(nm, JM // nm, S, R, K)
    return np.ascontiguousarray(q.transpose(4, 3, 1, 0, 2), dtype=np.complex128)


def _correlate(P: np.ndarray, Q: np.ndarray, Lo: int, L: int, pairs, workers: int = 1) -> np.ndarray:
    """Angular correlation of particles with shifted references, as one product per frequency.

    ``P``: ``(K, b, R)`` particle polar spectra (:func:`_spectra`); ``Q``: ``(K, R, J, nm, S)``
    from :func:`_ref_layout`. Returns ``C`` float32 ``(Lo, b, J', nm, S)``: all versus all
    (``J' = J``) or particle i with reference ``pairs[i]`` (``J' = 1``). ``C[τ]`` times
    :func:`_ifft_scale` is the correlation coefficient with the particle rotated by ``τ·360/Lo`` degrees:
    Σ_θ p(θ+τ)·q(θ) over rings.
    """
    K, b, R = P.shape
    _, _, J, nm, S = Q.shape
    if pairs is None:
        X = stable.matmul(P, Q.reshape(K, R, J * nm * S)).reshape(K, b, J, nm, S)
    else:
        X = np.empty((K, b, 1, nm, S), dtype=np.complex128)
        pairs = np.asarray(pairs)
        for j in np.unique(pairs):  # loop over references (classes), not particles
            sel = np.flatnonzero(pairs == j)
            X[:, sel] = stable.matmul(P[:, sel], Q[:, :, j].reshape(K, R, nm * S)).reshape(K, len(sel), 1, nm, S)
    return _angular_ifft(X, Lo, L, workers, scaled=False)


_NB = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # 3 x 3 block, row-major, centre at 4
_Q2 = np.linalg.pinv(np.array([[1, x, y, x * x, x * y, y * y] for x, y in _NB], dtype=np.float64))  # (6, 9)


def _shift_neighbours(shifts: np.ndarray) -> np.ndarray:
    """``(S, 9)`` index of each grid shift's 3 x 3 neighbourhood (``_NB`` order), or -1."""
    look = {tuple(v): i for i, v in enumerate(shifts)}
    return np.array([[look.get((sx + dx, sy + dy), -1) for dx, dy in _NB]
                     for sx, sy in shifts], dtype=np.int64).reshape(len(shifts), 9)


def _subpixel(v: np.ndarray, nb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel peak offset from the angle-maximised correlation ``v`` ``(..., 9)`` on the 3 x 3
    block around the grid maximum (``nb`` ``(..., 9)`` neighbour indices, -1 = off the grid).

    A least-squares quadratic surface ``a + bx + cy + dx² + exy + fy²`` through the nine
    values and its vertex (a peak that is not aligned with the axes is found where two 1-D
    parabolas are biased); where the block is incomplete or the surface has no maximum
    within ±1 px, the 1-D parabolas through the axis neighbours.
    """
    ox = np.where((nb[..., 3] >= 0) & (nb[..., 5] >= 0), _parabolic(v[..., 3], v[..., 4], v[..., 5]), 0.0)
    oy = np.where((nb[..., 1] >= 0) & (nb[..., 7] >= 0), _parabolic(v[..., 1], v[..., 4], v[..., 7]), 0.0)
    coef = sum(v[..., i, None] * _Q2[:, i] for i in range(9))                 # (..., 6), fixed order
    _, b, c, d, e, f = np.moveaxis(coef, -1, 0)
    det = 4 * d * f - e * e
    with np.errstate(invalid="ignore", divide="ignore"):
        qx = (-2 * f * b + e * c) / det
        qy = (-2 * d * c + e * b) / det
    ok = (nb >= 0).all(axis=-1) & (d < 0) & (det > 0) & (np.abs(qx) <= 1) & (np.abs(qy) <= 1)
    return np.where(ok, qx, ox), np.where(ok, qy, oy)


def _peaks(C: np.ndarray, shifts: np.ndarray, nbr: np.ndarray, rotate: bool):
    """Best (angle, shift, mirror) of correlations ``C`` ``(Lo, b, J, nm, S)`` on a shift grid.

    Returns ``alpha (deg), sx, sy, mirror index, corr``, each ``(b, J)``: the grid maximum,
    refined by a parabola through its angular neighbours and a quadratic surface through the
    angle-maximised correlation of its 3 x 3 grid neighbourhood (``nbr`` from
    :func:`_shift_neighbours`, see :func:`_subpixel`).
    """
    Lo, b, J, nmc, S = C.shape
    cmax = C.max(axis=0)                                                       # (b, J, nmc, S)
    k = cmax.reshape(b, J, nmc * S).argmax(axis=2)
    im, isf = np.divmod(k, S)
    bi, ji = np.meshgrid(np.arange(b), np.arange(J), indexing="ij")
    cbest = cmax[bi, ji, im, isf]
    if rotate and Lo > 2:
        it = C[:, bi, ji, im, isf].argmax(axis=0)                               # (b, J)
        cm = C[(it - 1) % Lo, bi, ji, im, isf]
        cp = C[(it + 1) % Lo, bi, ji, im, isf]
        tau = it + _parabolic(cm, cbest, cp)
    else:
        tau = np.zeros((b, J))
    nb = nbr[isf]                                                              # (b, J, 9)
    v = cmax[bi[..., None], ji[..., None], im[..., None], np.maximum(nb, 0)]
    ox, oy = _subpixel(v, nb)
    alpha = tf._wrap(tau * 360.0 / Lo) if rotate else np.zeros_like(tau)
    return alpha, shifts[isf, 0] + ox, shifts[isf, 1] + oy, im, cbest


def _grid_search(particles, ref_ft, L, shifts, nm, *, pairs=None, rotate=True, workers=1, cap=None):
    """One level of the exhaustive search on a fixed shift grid.

    ``ref_ft``: ``(nm·Rn, S, R, K)`` polar FTs of the references (mirror-major), ``L`` the
    polar angular sampling. All versus all when ``pairs`` is None (outputs ``(N, Rn)``; the
    angular band is the references' joint :func:`angular_band`); otherwise particle i against
    reference ``pairs[i]`` (``(N,)``; each reference keeps its own band, so a pair's numbers
    never depend on the other references). Bands are capped at ``cap``. Returns
    ``alpha, sx, sy, mirror, corr``.
    """
    N = len(particles)
    Rn = len(ref_ft) // nm
    Kf = ref_ft.shape[-1]
    cap = Kf if cap is None else min(cap, Kf)
    if pairs is None:
        return _grid_level(particles, ref_ft[..., :min(angular_band(ref_ft), cap)], L, shifts, nm, None, rotate,
                           workers)
    pairs = np.asarray(pairs)
    ft = ref_ft.reshape((nm, Rn) + ref_ft.shape[1:])
    power = (np.abs(ft.reshape(nm, Rn, -1, Kf)) ** 2).sum(axis=(0, 2), dtype=np.float64)   # (Rn, K)
    Kr = np.array([_rounded_band(p, cap) for p in power])
    out = [np.zeros(N) for _ in range(5)]
    for K in np.unique(Kr[pairs]):
        sel = np.flatnonzero(Kr[pairs] == K)
        js, local = np.unique(pairs[sel], return_inverse=True)  # the references of this band only
        sub = ft[:, js, ..., :K].reshape((nm * len(js),) + ft.shape[2:-1] + (K,))
        for o, v in zip(out, _grid_level(particles[sel], sub, L, shifts, nm, local.ravel(), rotate, workers)):
            o[sel] = v
    return tuple(out)


def _grid_level(particles, ref_ft, L, shifts, nm, pairs, rotate, workers):
    """:func:`_grid_search` at the band of ``ref_ft`` ``(nm·Rn, S, R, K)``."""
    N = len(particles)
    S = len(shifts)
    Rn = len(ref_ft) // nm
    K = ref_ft.shape[-1]
    Q = _ref_layout(ref_ft, nm)
    Lo = _out_len(L, K) if rotate else 1
    per = (Rn if pairs is None else 1) * nm * S * (Lo + 3 * K)
    batch = int(max(1, min(N, 5e6 // max(per, 1))))  # small blocks stay in cache (measured)
    out_shape = (N, Rn) if pairs is None else (N,)
    res = {k: np.zeros(out_shape) for k in ("alpha", "tx", "ty", "mirror", "corr")}
    nbr = _shift_neighbours(shifts)
    for lo in range(0, N, batch):
        hi = min(N, lo + batch)
        P = _spectra(particles[lo:hi], L, K, workers=workers)
        C = _correlate(P, Q, Lo, L, None if pairs is None else pairs[lo:hi], workers)  # (Lo, b, J, nm, S)
        alpha, sx, sy, im, cbest = _peaks(C, shifts, nbr, rotate)
        cbest = cbest * _ifft_scale(K, Lo, L)
        vals = {"alpha": alpha, "tx": sx, "ty": sy, "mirror": im.astype(np.float64), "corr": cbest}
        for key, v in vals.items():
            res[key][lo:hi] = v if pairs is None else v[:, 0]
    return res["alpha"], res["tx"], res["ty"], res["mirror"], res["corr"]


#: radius (px of each finer level) of the local shift search around the previous level's answer
LOCAL_RADIUS = 2.0


def _local_level(particles, refs, pi, ri, mi, a0, x0, y0, rotate, mirrors, workers, cache=None):
    """One finer level of the tree, or a local search around a prior: pair ``p`` (particle
    ``pi[p]``, reference ``ri[p]``, previous answer ``a0, x0, y0`` in this level's pixels)
    searched for each of its mirrors ``mi[p, c]`` (``mi`` ``(P, M)`` ints) over all angles and
    the shifts within ``LOCAL_RADIUS`` px of the previous answer. Returns ``alpha, tx, ty,
    corr``, each ``(P, M)``.

    The particle is shifted by ``d = R_a0⁻¹ t0`` (rounded to ``SUBPIXEL_STEP``: a circular
    whole-pixel gather and sub-pixel polar sampling points, no FFT, :func:`_spectra`), so
    that only a small residual ``δ`` on the local grid remains; ``t = δ + R_a d``; its polar
    spectra are computed once for all its mirrors. Each reference keeps its own angular band
    (:func:`_ref_bands`); pairs go through grouped by band, then sorted by reference, and the
    references' polar tables on the local grid are computed a few at a time as the pairs
    reach them (kept in ``cache``, a dict the caller may keep for further calls with the
    *same* references, up to ``CACHE_BYTES``). (Shifting the references instead was tried:
    no faster at 2,000 particles, and its results depended on which particles shared a chunk.)
    Every pair's numbers depend only on its particle and reference.
    """
    n = particles.shape[-1]
    L = n_angles(n)
    R = n // 2 - 1
    grid = shift_grid(LOCAL_RADIUS)
    cache = {} if cache is None else cache
    mi = np.asarray(mi, dtype=np.int64).reshape(len(pi), -1)
    M = mi.shape[1]
    used = np.unique(ri)
    Kr = np.zeros(len(refs), dtype=np.int64)
    Kr[used] = _ref_bands(refs, used, L, grid, mirrors, workers, cache)
    dx, dy = (_quantised(v) for v in _particle_offset(a0, x0, y0))
    S = len(grid)
    nbr = _shift_neighbours(grid)
    out = [np.empty((len(pi), M)) for _ in range(4)]
    Kp = Kr[ri]
    # pairs grouped by band, then sorted by (reference, first mirror): each batch mixes
    # references, so small groups (pairs mode, a few particles per class) share the particle work
    order = np.lexsort((mi[:, 0], ri, Kp))

    def table(j: int, m: int, upcoming: np.ndarray) -> np.ndarray:
        """``(K_j, R, S)`` complex128 conjugated polar FTs of reference ``j`` (mirror ``m``) on the
        local grid; computed for the next few references of ``upcoming`` (about 32 MB) at once."""
        key = ("table", n, j, m)
        if key not in cache:
            per = max(1, int(32e6 // (S * R * Kr[j] * 16)))
            js = upcoming[np.searchsorted(upcoming, j):][:per]
            js = np.array([k for k in js if ("table", n, k, m) not in cache])
            need = sum(S * R * Kr[k] * 16 for k in js)
            if cache.get("bytes", 0) + need > CACHE_BYTES:  # keep the bands, drop the tables
                for k in [k for k in cache if isinstance(k, tuple) and k[0] == "table"]:
                    del cache[k]
                cache["bytes"] = 0
            ft = np.conj(polar_ft(refs[js], L, grid, bool(m), workers, band=int(Kr[js].max())))  # (j, S, R, K)
            for k, t in zip(js.tolist(), ft):
                cache[("table", n, k, m)] = np.ascontiguousarray(t.transpose(2, 1, 0)[:Kr[k]], dtype=np.complex128)
            cache["bytes"] = cache.get("bytes", 0) + need
        return cache[key]

    for K in np.unique(Kp):
        sel = order[Kp[order] == K]
        upcoming = np.unique(ri[sel])
        Lo = _out_len(L, K) if rotate else 1
        # correlation tables of about 5 M values and at most ~4 M pixels of particle images per batch
        batch = int(max(1, min(5e6 // (S * (Lo + 3 * K)), (1 << 22) // (n * n))))
        for lo in range(0, len(sel), batch):
            s_ = sel[lo:lo + batch]
            P = _spectra(particles, L, K, pi[s_], dx[s_], dy[s_], workers)           # (K, b, R)
            gk = ri[s_] * 2 + mi[s_, 0]
            cut = np.r_[0, np.flatnonzero(gk[1:] != gk[:-1]) + 1, len(s_)]
            for c in range(M):
                X = np.empty((K, len(s_), S), dtype=np.complex128)
                for a, b in zip(cut[:-1], cut[1:]):
                    X[:, a:b] = stable.matmul(P[:, a:b], table(int(ri[s_[a]]), int(mi[s_[a], c]), upcoming))
                C = _angular_ifft(X, Lo, L, workers, scaled=False)
                alpha, sx, sy, _, cbest = _peaks(C.reshape(Lo, len(s_), 1, 1, S), grid, nbr, rotate)
                cbest = cbest * _ifft_scale(K, Lo, L)
                a, r = alpha[:, 0], np.deg2rad(alpha[:, 0])
                tx = sx[:, 0] + np.cos(r) * dx[s_] + np.sin(r) * dy[s_]
                ty = sy[:, 0] - np.sin(r) * dx[s_] + np.cos(r) * dy[s_]
                for o, v in zip(out, (a, tx, ty, cbest[:, 0])):
                    o[s_, c] = v
    return tuple(out)


#: most bytes of reference polar tables a search keeps (:func:`_local_level`'s ``cache``)
CACHE_BYTES = 256 << 20
#: per-reference angular bands are rounded up to a multiple of this (fewer batches)
BAND_STEP = 8


def _rounded_band(power: np.ndarray, cap: int) -> int:
    """One reference's band (:func:`_band_from_power` of its power per angular frequency)
    rounded up to ``BAND_STEP``, at most ``cap``."""
    k = _band_from_power(power, len(power))
    return int(min(cap, -(-k // BAND_STEP) * BAND_STEP))


def _ref_bands(refs, js, L, shifts, mirrors, workers, cache=None) -> np.ndarray:
    """Angular band (:func:`angular_band`) of each reference ``js``, from its own polar FTs
    (unshifted and at up to 8 of the outermost ``shifts``, where off-centre sampling widens
    the band; every mirror), rounded up to ``BAND_STEP``: ``(len(js),)`` ints ≤ ``L//2+1``.
    Each reference's band depends on that reference only (never on the others in the call),
    so pairs give the same numbers whichever references share a call."""
    n = refs.shape[-1]
    cache = {} if cache is None else cache
    js = np.asarray(js, dtype=np.int64)
    todo = np.array([j for j in js if ("band", n, j) not in cache], dtype=np.int64)
    if len(todo):
        shifts = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
        r = np.hypot(shifts[:, 0], shifts[:, 1])
        outer = shifts[r == r.max()]
        outer = outer[np.argsort(np.arctan2(outer[:, 1], outer[:, 0]), kind="stable")]
        pick = np.vstack([np.zeros((1, 2)), outer[np.linspace(0, len(outer) - 1, min(8, len(outer))).astype(int)]])
        pick = np.unique(pick, axis=0)
        Kf = L // 2 + 1
        step = max(1, 128 // len(pick))  # references per call: a few MB of polar tables
        for lo in range(0, len(todo), step):
            sel = todo[lo:lo + step]
            power = np.zeros((len(sel), Kf))
            for m in mirrors:
                ft = polar_ft(refs[sel], L, pick, m, workers)                       # (j, S, R, K)
                power += (np.abs(ft) ** 2).sum(axis=(1, 2), dtype=np.float64)
            for j, p in zip(sel, power):
                cache[("band", n, int(j))] = _rounded_band(p, Kf)
    return np.array([cache[("band", n, int(j))] for j in js], dtype=np.int64)


def _particle_offset(alpha, tx, ty):
    """``d = R_α⁻¹ t``: the shift of the particle in its own frame that a transform
    ``(alpha, tx, ty)`` implies (the same for either mirror, which acts last)."""
    ar = np.deg2rad(alpha)
    return np.cos(ar) * tx - np.sin(ar) * ty, np.sin(ar) * tx + np.cos(ar) * ty


def coarse_factor(n: int, maxshift: float) -> int:
    """Downsampling factor of the coarse level: a power of 2 with ``maxshift/f ≤ 4`` and ``n/f ≥ 16``."""
    f = 1
    while maxshift / f > 4 and n // (2 * f) >= 16 and (n // (2 * f)) % 2 == 0:
        f *= 2
    return f


def coarse_band(L: int, m: int) -> int | None:
    """Angular frequencies the coarse level (box ``m``, ``L`` angles) keeps: ``k ≤ L/8`` when
    ``m ≥ 24``, else all.

    The coarse level only has to land in the right shift and mirror basin; the fine levels
    search all angles again at full band. Measured at 64 px (coarse 32 px, SNR 1 and 0.1,
    2000 particles x 5 references): identical accuracy with 17 of 57 frequencies and about
    1.5x the speed. At 96 px (coarse 24 px, L = 128; 500 trials each at SNR 1, 0.1, 0.03 and
    0.015, the tree aligner's default maxshift and ``maxshift=12``): the same fractions within
    2° / 0.5 px and 10° / 1.5 px with 17 of 65 frequencies as with 33 (differences of one
    trial either way), and 1.4-1.6x the speed of the whole search. Smaller coarse boxes (16 px,
    the tree aligner's default at 64 px) lost accuracy when truncated to ``L/8``, so they keep
    their whole band.
    """
    return L // 8 + 1 if m >= 24 else None


def _ref_ft(refs, L, shifts, mirrors, workers):
    """Polar FTs of the references at every shift and mirror, mirror-major ``(nm·J, S, R, L//2+1)``."""
    return np.concatenate([polar_ft(refs, L, shifts, m, workers) for m in mirrors], axis=0)


def angular_band(ref_ft: np.ndarray, tol: float = 1e-4) -> int:
    """Angular frequencies to keep: the fewest ``k`` holding all but ``tol`` of the references' power.

    Correlations only need the frequencies where the references have signal (the particles'
    other frequencies multiply zero), so truncating there changes a correlation by at most
    ``√tol`` relative. Depends on the references only, so every chunk of a run truncates alike.
    """
    return _band_from_power(_power(ref_ft), ref_ft.shape[-1], tol)


def _power(ref_ft: np.ndarray) -> np.ndarray:
    return (np.abs(ref_ft.reshape(-1, ref_ft.shape[-1])) ** 2).sum(axis=0, dtype=np.float64)


def _band_from_power(power: np.ndarray, K: int, tol: float = 1e-4) -> int:
    power = power.copy()
    power[1:] *= 2  # rfft: every k > 0 stands for ±k
    cum = np.cumsum(power) / max(power.sum(), 1e-300)
    return int(min(K, np.searchsorted(cum, 1.0 - tol) + 2))


#: with ``candidates``, each finer level after the first keeps each particle's best half of its
#: pairs, down to this many (at 96 px: 8 references at 48 px, 4 at 96 px)
PRUNE_TO = 4


def _best_per_particle(pi: np.ndarray, corr: np.ndarray, k: int) -> np.ndarray:
    """Indices of each particle's ``k`` best pairs (highest ``corr``; ties by position), in
    their original order; ``pi`` is grouped by particle."""
    order = np.lexsort((np.arange(len(pi)), -corr, pi))
    start = np.searchsorted(pi[order], pi[order], side="left")
    rank = np.arange(len(pi)) - start
    return np.sort(order[rank < k])


def search(particles: np.ndarray, refs: np.ndarray, *, maxshift: float = 0.0, mirror: bool = True,
           rotate: bool = True, pairs: np.ndarray | None = None, candidates: int | None = None,
           prior=None, cache: dict | None = None, workers: int = 1):
    """Search ``T(particle) ≈ reference`` over angle, shift ``|t| ≤ maxshift`` and mirror.

    Coarse to fine when ``maxshift > 4``: an exhaustive search on Fourier-downsampled
    images (factor ``f``, :func:`coarse_factor`) over the whole shift range, then at the
    sizes ``n·2/f, n·4/f, …, n`` a search per pair over all angles and the shifts within
    ``LOCAL_RADIUS`` px of the previous level's answer (:func:`_local_level`).

    Parameters
    ----------
    particles : (N, n, n); refs : (Rn, n, n).
    pairs : ``None`` (all particles versus all references → outputs ``(N, Rn)``) or ints
        ``(N,)``: particle i versus reference ``pairs[i]`` (outputs ``(N,)``).
    candidates : all versus all with a coarse level only: search only each particle's
        ``candidates`` best references (by coarse correlation) at the finer levels, and at
        each finer level after the first only the best half of those of the level before (at
        least ``PRUNE_TO``: at 96 px and up, 8 at n/2, 4 at n; 99.7 % of 5,000 particles of
        96 px kept their best of 64 class averages, in 80 % of the time); the others get
        ``corr = -inf`` and a zero transform (a pruned tree search).
    prior : ``(alpha, tx, ty, mirror)`` of an earlier answer, pairwise only (each ``(N,)``):
        a local search instead, at full size only (:func:`_local_level`): all angles and the
        shifts within ``LOCAL_RADIUS`` px of the prior's particle offset ``R⁻¹t`` (the mirror
        acts after rotation and translation, so the offset holds for either mirror); both mirrors
        when ``mirror``, else the prior's; a second time around answers whose offset moved more
        than 0.5 px. For repeated
        alignment to a reference that changed little (the passes of class averaging).
    cache : a dict kept by the caller across calls with the *same* ``refs`` (e.g. the blocks of
        one class-averaging pass): the references' polar tables and bands of the finer levels
        are computed once and kept in it (at most ``CACHE_BYTES`` of tables).

    Returns ``(alpha, tx, ty, mirror, corr)``; ``corr`` is the correlation coefficient over
    the disc at the optimum (higher is better).
    """
    particles = np.ascontiguousarray(particles, dtype=np.float32)
    refs = np.ascontiguousarray(refs, dtype=np.float32)
    N, n, _ = particles.shape
    mirrors = [False, True] if mirror else [False]
    nm = len(mirrors)
    if prior is not None:
        if pairs is None:
            raise ValueError("a prior (local search) needs pairs")
        a0, x0, y0, m0 = (np.asarray(v, dtype=np.float64).reshape(N) for v in prior)
        m0 = np.where(mirror, m0, 0).astype(np.int64)
        if not rotate:
            a0 = np.zeros(N)
        pairs = np.asarray(pairs)
        c0 = _particle_offset(a0, x0, y0)
        # both mirrors around the same particle offset when the aligner flips (one polar
        # resampling of the particle for both), else the prior's
        mi = np.stack([np.zeros(N, np.int64), np.ones(N, np.int64)], axis=1) if mirror else m0[:, None]
        mirrors = [False, True] if mi.any() else [False]
        a, x, y, c = _local_level(particles, refs, np.arange(N), pairs, mi, a0, x0, y0, rotate, mirrors,
                                  workers, cache)
        # the better mirror of each pair (the prior's on a tie)
        col = np.where(c[np.arange(N), 1 - m0] > c[np.arange(N), m0], 1 - m0, m0) if mirror else np.zeros(N, int)
        a, x, y, c = (v[np.arange(N), col] for v in (a, x, y, c))
        m0 = mi[np.arange(N), col]
        # answers whose offset moved more than half a pixel sat off the grid's centre, where the
        # peak interpolation is least accurate: once more around them
        cn = _particle_offset(a, x, y)
        far = np.flatnonzero(np.hypot(cn[0] - c0[0], cn[1] - c0[1]) > 0.5)
        if len(far):
            a[far], x[far], y[far], c[far] = (v[:, 0] for v in _local_level(
                particles, refs, far, pairs[far], m0[far, None], a[far], x[far], y[far], rotate, mirrors, workers,
                cache))
        r = np.hypot(x, y)  # the prior may have been at the bound: stay within it
        lim = np.where(r > maxshift, maxshift / np.maximum(r, 1e-12), 1.0) if maxshift > 0 else np.zeros(N)
        return a, x * lim, y * lim, m0.astype(np.float64), c
    f = coarse_factor(n, maxshift)
    if f == 1:
        L = n_angles(n)
        shifts = shift_grid(maxshift)
        return _grid_search(particles, _ref_ft(refs, L, shifts, mirrors, workers), L, shifts, nm,
                            pairs=pairs, rotate=rotate, workers=workers)
    # coarse level
    m = n // f
    cp = tf.fourier_crop(particles, m, workers=workers)
    cr = tf.fourier_crop(refs, m, workers=workers)
    Lc = n_angles(m)
    cs = shift_grid(maxshift / f)
    a0, x0, y0, m0, c0 = _grid_search(cp, _ref_ft(cr, Lc, cs, mirrors, workers), Lc, cs, nm, pairs=pairs,
                                      rotate=rotate, workers=workers, cap=coarse_band(Lc, m))
    x0, y0 = x0 * f, y0 * f
    # fine level: one (particle, reference, mirror) pair per coarse answer
    keep = None
    if pairs is None:
        pi = np.repeat(np.arange(N), len(refs))
        ri = np.tile(np.arange(len(refs)), N)
        if candidates is not None and candidates < len(refs):
            # only the `candidates` best references of each particle at the coarse level
            top = np.argsort(-c0, axis=1, kind="stable")[:, :candidates]
            keep = np.zeros((N, len(refs)), dtype=bool)
            keep[np.arange(N)[:, None], top] = True
            keep = keep.reshape(-1)
            pi, ri = pi[keep], ri[keep]
    else:
        pi, ri = np.arange(N), np.asarray(pairs)
    a0, x0, y0, m0 = (v.reshape(-1) if keep is None else v.reshape(-1)[keep] for v in (a0, x0, y0, m0))
    # finer levels: halve the pixel size each time, searching all angles and the shifts within
    # about one pixel of the previous level's answer (a tree search), down to the full images
    m0 = m0.astype(np.int64)
    x, y, a, c = x0, y0, a0, None
    g = f
    live = np.arange(len(pi)) if keep is None else np.flatnonzero(keep)  # flat (particle, ref) index
    k_live = candidates
    while g > 1:
        g //= 2
        m = n // g
        if keep is not None and g < f // 2 and k_live > PRUNE_TO:
            # a finer level after the first: each particle's best half of its pairs go on
            k_live = max(PRUNE_TO, k_live // 2)
            sel = _best_per_particle(pi, c, k_live)
            pi, ri, m0, a, x, y, live = (v[sel] for v in (pi, ri, m0, a, x, y, live))
        pg = particles if g == 1 else tf.fourier_crop(particles, m, workers=workers)
        rg = refs if g == 1 else tf.fourier_crop(refs, m, workers=workers)
        a, x, y, c = (v[:, 0] for v in _local_level(pg, rg, pi, ri, m0[:, None], a, x / g, y / g, rotate,
                                                     mirrors, workers, cache))
        x, y = x * g, y * g
    if keep is not None:
        keep = np.zeros(N * len(refs), dtype=bool)
        keep[live] = True
    out = [a, x, y, m0.astype(np.float64), c]
    shape = (N, len(refs)) if pairs is None else (N,)
    if keep is not None:  # pruned pairs: zero transform, correlation -inf (score +inf)
        full = [np.zeros(N * len(refs)) for _ in range(4)] + [np.full(N * len(refs), -np.inf)]
        for f_, o in zip(full, out):
            f_[keep] = o
        out = full
    return tuple(o.reshape(shape) for o in out)


# ----------------------------------------------------------------------------------------
# aligners by EMAN2 name


def tree_reach(n: int, maxshift: float) -> float:
    """Translation range (px) that EMAN2's ``rotate_translate_tree`` actually searches (algorithm.md §3.7.5).

    Coarse level ``ss = 32``: ``maxshift // 32`` coarse pixels of ``n/32`` px each; every finer
    level ``ss = 64, 128, … ≤ n`` adds ±4 of its pixels (``n/ss`` px). n=64, maxshift=21 → 4;
    n=128, 42 → 16; n=256, 85 → 44. Boxes below 64 px: ±4 px.
    """
    if n < 64:
        return 4.0
    reach = (int(maxshift) // 32) * (n / 32)
    ss = 64
    while ss <= n:
        reach += 4 * n / ss
        ss *= 2
    return float(reach)


def default_maxshift(opt: Option | None, n: int) -> float:
    """Searched translation bound (px) of an aligner option.

    ``maxshift < 0`` → EMAN2's defaults (``n/4``; tree ``3n/8``). r2d honours ``maxshift`` as a
    true bound ``|t| ≤ maxshift`` (algorithm.md §5.2). Limiting the tree aligner to EMAN2's
    effective range (:func:`tree_reach`, ±4 px at 64 px) was measured on the 70S benchmark and
    made the classification worse (k-means: view error 45–48° instead of 36–38°; one round of
    multi-reference assignment from the initial classes: 39–40° instead of 28–29° with ±12 px):
    class averages are not centred alike, so the needed shifts exceed the particles' own.
    """
    ms = opt.get("maxshift", -1) if opt is not None else -1
    if ms is None or ms < 0:
        ms = n / 4 if opt is None or opt.name != "rotate_translate_tree" else 3 * n / 8
    return float(ms)


def _search_kwargs(opt: Option, n: int) -> dict:
    name = opt.name
    if name == "rotational":
        return dict(maxshift=0.0, mirror=False, rotate=True)
    if name == "translational":
        return dict(maxshift=default_maxshift(opt, n), mirror=False, rotate=False)
    if name == "rotate_translate":
        return dict(maxshift=default_maxshift(opt, n), mirror=False, rotate=True)
    if name == "rotate_translate_flip":
        return dict(maxshift=default_maxshift(opt, n), mirror=True, rotate=True)
    if name == "rotate_translate_tree":
        return dict(maxshift=default_maxshift(opt, n), mirror=bool(opt.get("flip", 1)), rotate=True)
    raise ValueError(f"aligner {name!r} cannot be used as a first-stage aligner")


def align(particles, refs, aligner: Option | str, cmp: Option | str = "ccc", *, pairs=None,
          ralign: Option | str | None = None, raligncmp: Option | str | None = None,
          shrink: int = 1, apix: float | None = None, ref_ptcl_repr=None, candidates: int | None = None,
          prior=None, cache: dict | None = None, workers: int = 1) -> Alignment:
    """Align particles to references with an EMAN2-named aligner and score with ``cmp``.

    Returns an :class:`Alignment` with ``T(particle) ≈ reference`` and
    ``score = cmp(particle, T⁻¹(reference))`` (the particle stays unresampled, as in
    e2simmx). For plain ``ccc`` the score is ``−corr``, the search's own correlation
    coefficient over the disc ``r < n/2 − 1`` (no second resampling). ``shrink > 1`` Fourier-downsamples both stacks for the search and scales the
    translations back. ``pairs``, ``candidates``, ``prior`` (a local search around an
    earlier answer) and ``cache`` as in :func:`search`.
    """
    aligner = parse(aligner, "aligner") if isinstance(aligner, str) else aligner
    cmp = parse(cmp, "comparator") if isinstance(cmp, str) else cmp
    particles = np.asarray(particles, dtype=np.float32)
    refs = np.asarray(refs, dtype=np.float32)
    n = particles.shape[-1]
    kw = _search_kwargs(aligner, n)
    sp_, sr_ = particles, refs
    f = 1.0
    if shrink and shrink > 1:
        m = int(2 * round(n / shrink / 2))
        sp_ = tf.fourier_crop(particles, m, workers=workers)
        sr_ = tf.fourier_crop(refs, m, workers=workers)
        f = n / m
        kw["maxshift"] = kw["maxshift"] / f
        if prior is not None:
            prior = (prior[0], np.asarray(prior[1]) / f, np.asarray(prior[2]) / f, prior[3])
    alpha, tx, ty, mir, corr = search(sp_, sr_, pairs=pairs, candidates=candidates, prior=prior, cache=cache,
                                      workers=workers, **kw)
    tx, ty = tx * f, ty * f
    ralign = parse(ralign, "aligner") if isinstance(ralign, str) else ralign
    refined = ralign is not None
    if refined:
        if ralign.name != "refine":
            raise ConfigError(f"the second-stage aligner must be 'refine', not '{ralign.name}'")
        rcmp = parse(raligncmp, "comparator") if isinstance(raligncmp, str) else raligncmp
        rcmp = parse("ccc", "comparator") if rcmp is None else rcmp
        ms = ralign.get("maxshift", -1)
        pruned = np.isneginf(corr)
        alpha, tx, ty, corr = refine(particles, refs, (alpha, tx, ty, mir), pairs=pairs, cmp=rcmp,
                                     maxshift=n / 4 if ms is None or ms < 0 else float(ms),
                                     precision=float(ralign.get("precision", 0.04)), workers=workers)
        corr = np.where(pruned, -np.inf, corr)
    if cmp.name == "ccc" and not cmp.params and not refined:
        # the search already maximised the correlation coefficient over the disc r < n/2-1;
        # resampling every reference again to score it with ccc would only repeat that number
        score = -corr
    else:
        score = score_pairs(particles, refs, (alpha, tx, ty, mir), cmp, pairs=pairs, apix=apix, ref_ptcl_repr=ref_ptcl_repr,
                            workers=workers)
        score = np.where(np.isneginf(corr), np.inf, score)
    return Alignment(alpha, tx, ty, mir, score, corr)


def _dft_grid(n: int, offsets: np.ndarray) -> np.ndarray:
    """``(T, n)`` complex matrix ``exp(2πi f u)`` for FFT frequencies ``f`` (cycles/px) and shifts ``u``."""
    f = sfft.fftfreq(n)
    return np.exp(2j * np.pi * offsets[:, None] * f[None, :])


def refine(particles, refs, params, *, pairs=None, cmp: Option | None = None, maxshift: float = 16.0,
           precision: float = 0.04, rounds: int = 4, workers: int = 1):
    """EMAN2's second-stage ``refine``: local continuous refinement of angle and shift.

    Starts from the first stage's ``params = (alpha, tx, ty, mirror)`` (``T(particle) ≈ ref``,
    shapes ``(N, R)`` all versus all or ``(N,)`` with ``pairs``) and keeps the mirror. Each
    round (vectorised over all pairs, no loop over particles):

    1. shift: the reference brought back by the current rotation and mirror is
       cross-correlated with the particle in Fourier space, evaluated on a fine grid
       (±1 px around the current shift, ``precision`` px steps, at least 0.02 px) by a matrix
       DFT (exact band-limited interpolation, no FFT upsampling);
    2. angle: ``cmp`` (lower is better) at ``alpha ± δ`` and a parabola through the three
       values; ``δ`` = 1°, 0.5°, 0.25°, 0.125° over the rounds.

    The reference, not the noisy particle, is resampled (interpolation smooths noise by an
    angle-dependent amount, which would bias a normalised comparator), and a pair keeps its
    first-stage transform when refinement does not lower the comparator.

    Shifts stay within ``|t| ≤ maxshift``. Returns ``(alpha, tx, ty, corr)`` where ``corr`` is
    the correlation coefficient of the transformed particle and the reference.
    """
    cmp = parse("ccc", "comparator") if cmp is None else cmp
    particles = np.asarray(particles, dtype=np.float32)
    refs = np.asarray(refs, dtype=np.float32)
    alpha0 = np.asarray(params[0], dtype=np.float64)
    shape = alpha0.shape
    pi, ri = _pair_index(shape, pairs)
    alpha, tx, ty, mir = (np.asarray(p, dtype=np.float64).reshape(-1).copy() for p in params)
    n = particles.shape[-1]
    step = max(0.02, min(precision, 0.1))
    offs = np.arange(-1.0, 1.0 + step / 2, step)
    E = _dft_grid(n, offs)                                                     # (T, n)
    fy = sfft.fftfreq(n)[None, :, None]
    fx = sfft.fftfreq(n)[None, None, :]
    ccc = parse("ccc", "comparator")
    deltas = [1.0 / 2 ** r for r in range(rounds)]
    corr = np.empty(pi.size)
    batch = 512
    for lo in range(0, pi.size, batch):
        sl = slice(lo, min(pi.size, lo + batch))
        P = particles[pi[sl]]
        Fp = np.conj(sfft.fft2(P, workers=workers))
        Rimg = refs[ri[sl]]
        a0, x0, y0, m = alpha[sl], tx[sl], ty[sl], mir[sl]

        def score(a, x, y):  # the reference is moved onto the particle, as e2simmx scores
            return compare(P, tf.transform(Rimg, *tf.invert(a, x, y, m), workers=workers), cmp)

        a, x, y = a0.copy(), x0.copy(), y0.copy()
        for d in deltas:
            # 1. shift: g = (M^m R_a)^-1 ref; find u with p(x - u) ≈ g, then t = R_a u
            g = tf.transform(Rimg, *tf.invert(a, 0.0, 0.0, m), workers=workers)
            ar = np.deg2rad(a)
            c, sn = np.cos(ar), np.sin(ar)
            ux, uy = c * x - sn * y, sn * x + c * y
            X = sfft.fft2(g, workers=workers) * Fp
            X *= np.exp(2j * np.pi * (fy * uy[:, None, None] + fx * ux[:, None, None]))
            cc = stable.matmul(stable.matmul(E, X), E.T).real                  # (b, Ty, Tx)
            iy, ix = np.divmod(cc.reshape(len(a), -1).argmax(axis=1), len(offs))
            ux, uy = ux + offs[ix], uy + offs[iy]
            x, y = c * ux + sn * uy, -sn * ux + c * uy
            r = np.hypot(x, y)
            lim = np.where(r > maxshift, maxshift / np.maximum(r, 1e-12), 1.0)
            x, y = x * lim, y * lim
            # 2. angle: parabola through the comparator at a - d, a, a + d (lower is better)
            vals = [score(a + da, x, y) for da in (-d, 0.0, d)]
            off = _parabolic(-vals[0], -vals[1], -vals[2])
            a = tf._wrap(a + off * d)
        # never worse than the first stage
        better = score(a, x, y) <= score(a0, x0, y0)
        a, x, y = np.where(better, a, a0), np.where(better, x, x0), np.where(better, y, y0)
        alpha[sl], tx[sl], ty[sl] = a, x, y
        corr[sl] = -compare(P, tf.transform(Rimg, *tf.invert(a, x, y, m), workers=workers), ccc)
    return (alpha.reshape(shape), tx.reshape(shape), ty.reshape(shape), corr.reshape(shape))


def _pair_index(shape, pairs):
    if pairs is None:
        N, R = shape
        return np.repeat(np.arange(N), R), np.tile(np.arange(R), N)
    return np.arange(len(pairs)), np.asarray(pairs)


def score_pairs(particles, refs, params, cmp: Option, *, pairs=None, apix=None, ref_ptcl_repr=None,
                batch: int = 2048, workers: int = 1) -> np.ndarray:
    """``cmp(particle_i, T_ij⁻¹(ref_j))`` for every pair; shape of ``params[0]``."""
    alpha = np.asarray(params[0])
    pi, ri = _pair_index(alpha.shape, pairs)
    flat = [np.asarray(p).reshape(-1) for p in params]
    out = np.empty(pi.size)
    reprs = None if ref_ptcl_repr is None else np.asarray(ref_ptcl_repr, dtype=np.float64)
    for lo in range(0, pi.size, batch):
        hi = min(pi.size, lo + batch)
        inv = tf.invert(*(p[lo:hi] for p in flat))
        moved = tf.transform(refs[ri[lo:hi]], *inv, workers=workers)
        out[lo:hi] = compare(particles[pi[lo:hi]], moved, cmp, apix=apix,
                             ptcl_repr=None if reprs is None else reprs[ri[lo:hi]])
    return out.reshape(alpha.shape)
