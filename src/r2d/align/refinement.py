"""EMAN2's second-stage aligner ``refine``: local continuous refinement of angle and shift
(:func:`refine`), after a first-stage search."""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from r2d import stable
from r2d import transforms as tf
from r2d.align.correlate import _parabolic
from r2d.cmp import compare
from r2d.options import Option, parse


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
