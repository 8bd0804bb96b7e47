"""The search (:func:`search`): exhaustive levels on a shift grid and the coarse-to-fine tree.

:func:`_grid_search` / :func:`_grid_level`: one exhaustive level, all angles, shifts of a
grid and mirrors (steps 1–4 of :mod:`r2d.align`). :func:`_local_level`: a finer level of the
tree, or a local search around a prior, per pair over all angles and the shifts within
``LOCAL_RADIUS`` px of the previous answer. :func:`search` puts them together: one grid
level for small shift ranges, else a coarse level on downsampled images
(:func:`coarse_factor`) and local levels at every factor of two up to the full images
(optionally pruned to each particle's best ``candidates`` references).
"""

from __future__ import annotations

import numpy as np

from r2d import stable
from r2d import transforms as tf
from r2d.align.bands import _ref_bands, _rounded_band, angular_band, coarse_band
from r2d.align.correlate import (_angular_ifft, _correlate, _ifft_scale, _out_len, _peaks, _ref_layout,
                                 _shift_neighbours)
from r2d.align.polar import _quantised, _ref_ft, _spectra, n_angles, polar_ft, shift_grid


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
                    Q = _ref_table(refs, int(ri[s_[a]]), int(mi[s_[a], c]), upcoming, Kr, grid, workers, cache)
                    X[:, a:b] = stable.matmul(P[:, a:b], Q)
                C = _angular_ifft(X, Lo, L, workers, scaled=False)
                alpha, sx, sy, _, cbest = _peaks(C.reshape(Lo, len(s_), 1, 1, S), grid, nbr, rotate)
                cbest = cbest * _ifft_scale(K, Lo, L)
                a, r = alpha[:, 0], np.deg2rad(alpha[:, 0])
                tx = sx[:, 0] + np.cos(r) * dx[s_] + np.sin(r) * dy[s_]
                ty = sy[:, 0] - np.sin(r) * dx[s_] + np.cos(r) * dy[s_]
                for o, v in zip(out, (a, tx, ty, cbest[:, 0])):
                    o[s_, c] = v
    return tuple(out)


def _ref_table(refs, j: int, m: int, upcoming: np.ndarray, Kr: np.ndarray, grid: np.ndarray, workers: int,
               cache: dict) -> np.ndarray:
    """``(K_j, R, S)`` complex128 conjugated polar FTs of reference ``j`` (mirror ``m``) on the
    local grid ``grid`` ``(S, 2)``, band ``Kr[j]`` (``Kr`` per reference); computed for the next
    few references of ``upcoming`` (sorted ints, about 32 MB) at once and kept in ``cache``
    (at most ``CACHE_BYTES``: beyond it, the tables are dropped and the bands kept)."""
    n = refs.shape[-1]
    L = n_angles(n)
    R = n // 2 - 1
    S = len(grid)
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


#: most bytes of reference polar tables a search keeps (:func:`_local_level`'s ``cache``)
CACHE_BYTES = 256 << 20


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
    if prior is not None:
        return _prior_search(particles, refs, pairs, prior, maxshift, mirror, rotate, workers, cache)
    f = coarse_factor(n, maxshift)
    if f == 1:
        L = n_angles(n)
        shifts = shift_grid(maxshift)
        return _grid_search(particles, _ref_ft(refs, L, shifts, mirrors, workers), L, shifts, len(mirrors),
                            pairs=pairs, rotate=rotate, workers=workers)
    coarse = _coarse_level(particles, refs, f, maxshift, mirrors, pairs, rotate, workers)
    pi, ri, keep, start = _coarse_pairs(coarse, N, len(refs), pairs, candidates)
    live, found = _finer_levels(particles, refs, f, pi, ri, start, keep, candidates, rotate, mirrors, workers,
                                cache)
    return _scatter(found, keep, live, N, len(refs), pairs)


def _prior_search(particles, refs, pairs, prior, maxshift, mirror, rotate, workers, cache):
    """:func:`search` with a ``prior`` (float32 ``particles`` ``(N, n, n)``, ``pairs`` ``(N,)``;
    ``prior`` four ``(N,)`` arrays): all angles and the shifts within ``LOCAL_RADIUS`` px of the
    prior's particle offset, for both mirrors when ``mirror`` (the better one kept, the prior's
    on a tie), else the prior's; once more around answers whose offset moved more than 0.5 px.
    Returns ``(alpha, tx, ty, mirror, corr)``, each ``(N,)`` float64, ``|t| ≤ maxshift``."""
    N = len(particles)
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


def _coarse_level(particles, refs, f, maxshift, mirrors, pairs, rotate, workers):
    """The tree's coarse level: the exhaustive search (:func:`_grid_search`) of the images
    Fourier-downsampled by ``f`` over the whole shift range ``maxshift / f``, angular band
    capped at :func:`coarse_band`. Returns ``(alpha, tx, ty, mirror, corr)`` float64, ``(N, Rn)``
    (all versus all) or ``(N,)`` (``pairs``), shifts in full-size pixels."""
    n = particles.shape[-1]
    m = n // f
    cp = tf.fourier_crop(particles, m, workers=workers)
    cr = tf.fourier_crop(refs, m, workers=workers)
    Lc = n_angles(m)
    cs = shift_grid(maxshift / f)
    a0, x0, y0, m0, c0 = _grid_search(cp, _ref_ft(cr, Lc, cs, mirrors, workers), Lc, cs, len(mirrors),
                                      pairs=pairs, rotate=rotate, workers=workers, cap=coarse_band(Lc, m))
    return a0, x0 * f, y0 * f, m0, c0


def _coarse_pairs(coarse, N, Rn, pairs, candidates):
    """The (particle, reference) pairs the finer levels search, one per coarse answer: all
    ``N·Rn`` (all versus all), each particle's ``candidates`` best references by coarse
    correlation, or particle i with ``pairs[i]``.

    Returns ``pi, ri`` (P,) int particle and reference of each pair, ``keep`` ((N·Rn,) bool of
    the kept flat pairs, or None when none were dropped) and the coarse answer of each pair,
    ``(alpha, tx, ty, mirror)`` (P,) float64."""
    a0, x0, y0, m0, c0 = coarse
    keep = None
    if pairs is None:
        pi = np.repeat(np.arange(N), Rn)
        ri = np.tile(np.arange(Rn), N)
        if candidates is not None and candidates < Rn:
            # only the `candidates` best references of each particle at the coarse level
            top = np.argsort(-c0, axis=1, kind="stable")[:, :candidates]
            keep = np.zeros((N, Rn), dtype=bool)
            keep[np.arange(N)[:, None], top] = True
            keep = keep.reshape(-1)
            pi, ri = pi[keep], ri[keep]
    else:
        pi, ri = np.arange(N), np.asarray(pairs)
    start = tuple(v.reshape(-1) if keep is None else v.reshape(-1)[keep] for v in (a0, x0, y0, m0))
    return pi, ri, keep, start


def _finer_levels(particles, refs, f, pi, ri, start, keep, candidates, rotate, mirrors, workers, cache):
    """The tree's finer levels: the pixel size halved each time from ``f`` down to the full
    images, each a :func:`_local_level` search of every pair (all angles, the shifts within
    ``LOCAL_RADIUS`` px of the previous level's answer, the coarse level's mirror). With
    ``candidates`` (``keep`` given), each level after the first keeps each particle's best
    half of its pairs (at least ``PRUNE_TO``).

    ``pi, ri`` (P,) ints and ``start`` (the coarse answers, four (P,) arrays) as from
    :func:`_coarse_pairs`. Returns ``live`` (P',) the flat (particle, reference) index of each
    pair left and ``(alpha, tx, ty, mirror, corr)`` of those, each (P',) (``mirror`` int64)."""
    n = particles.shape[-1]
    a, x, y, m0 = start
    m0 = m0.astype(np.int64)
    c = None
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
    return live, (a, x, y, m0, c)


def _scatter(found, keep, live, N, Rn, pairs):
    """:func:`search`'s outputs from the finer levels' answers ``found`` (five (P',) arrays of
    the pairs ``live``): ``(alpha, tx, ty, mirror, corr)`` float64, ``(N, Rn)`` or ``(N,)``
    (``pairs``); pruned pairs (``keep`` given) get a zero transform and ``corr = -inf``."""
    a, x, y, m0, c = found
    if keep is not None:
        keep = np.zeros(N * Rn, dtype=bool)
        keep[live] = True
    out = [a, x, y, m0.astype(np.float64), c]
    shape = (N, Rn) if pairs is None else (N,)
    if keep is not None:  # pruned pairs: zero transform, correlation -inf (score +inf)
        full = [np.zeros(N * Rn) for _ in range(4)] + [np.full(N * Rn, -np.inf)]
        for f_, o in zip(full, out):
            f_[keep] = o
        out = full
    return tuple(o.reshape(shape) for o in out)
