"""Correlation over the in-plane angle and peak finding (steps 3–4 of :mod:`r2d.align`).

Per angular frequency, the particle–reference cross-power summed over rings is one complex
matrix product (:func:`_correlate`, through :mod:`r2d.stable`); the angular synthesis
(:func:`_angular_ifft`: a real matrix product for short outputs, :func:`_synthesis`, else an
inverse FFT) turns it into the correlation as a function of the angle. :func:`_peaks` finds
the best (angle, shift, mirror) and refines it to sub-sample/sub-pixel precision (a parabola
along the angle, a quadratic surface over the 3 x 3 shift neighbourhood, :func:`_subpixel`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft as sfft

from r2d import stable
from r2d import transforms as tf


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
