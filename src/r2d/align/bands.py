"""Angular bands: how many angular frequencies a correlation keeps.

Correlations only need the angular frequencies where the references have signal
(:func:`angular_band`); per reference (:func:`_ref_bands`, rounded up to ``BAND_STEP``) for
pairwise searches, so a pair's numbers never depend on the other references; the coarse
level of the tree keeps fewer still (:func:`coarse_band`).
"""

from __future__ import annotations

import numpy as np

from r2d.align.polar import polar_ft


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
