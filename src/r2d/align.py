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
   the integer grid ``|s| ≤ maxshift`` and, for the mirror search, mirrored (again one
   sparse matrix for all shifts and mirrors), each normalised to zero mean and unit norm
   with area weights ``r``, so a correlation value is a correlation coefficient over the disc.
3. For each angular frequency the particle–reference cross-power summed over rings is one
   complex matrix product (BLAS); an inverse FFT along the angle gives the correlation as
   a function of the in-plane angle for all shifts, mirrors and references at once.
4. The best (shift, angle, mirror) is refined to sub-pixel/sub-sample precision by parabolic
   interpolation of the correlation peak.

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


@lru_cache(maxsize=16)
def _polar_matrix(n: int, L: int, shifts_key: bytes, mirror: bool) -> sp.csr_matrix:
    """Sparse bilinear matrix ``(S·R·L, n²)`` sampling image ``(M^m)(p + s)`` at polar points ``p``."""
    shifts = np.frombuffer(shifts_key, dtype=np.float64).reshape(-1, 2)
    c = n // 2
    radii = np.arange(1, n // 2, dtype=np.float64)
    theta = 2 * np.pi * np.arange(L) / L
    u = radii[:, None] * np.cos(theta)[None, :]
    v = radii[:, None] * np.sin(theta)[None, :]
    x = shifts[:, 0, None, None] + u[None]
    y = shifts[:, 1, None, None] + v[None]
    if mirror:
        x = -x
    x = (x + c).ravel()
    y = (y + c).ravel()
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
    mat = sp.csr_matrix(
        (np.concatenate(wi), (np.concatenate(ri), np.concatenate(ci))), shape=(x.size, n * n), dtype=np.float32
    )
    return mat


def polar_matrix(n: int, L: int, shifts: np.ndarray, mirror: bool = False) -> sp.csr_matrix:
    """Cached sparse polar resampling matrix, see :func:`_polar_matrix`."""
    return _polar_matrix(n, L, np.ascontiguousarray(shifts, dtype=np.float64).tobytes(), bool(mirror))


def _ring_weights(n: int) -> np.ndarray:
    return np.sqrt(np.arange(1, n // 2, dtype=np.float64))


def polar_ft(images: np.ndarray, L: int, shifts=None, mirror: bool = False, workers: int = 1) -> np.ndarray:
    """Normalised polar Fourier transforms ``(N, S, R, L//2+1)`` complex64.

    Each polar image is area-weighted (√r per ring on both sides gives weight r in a
    product), mean-subtracted and scaled to unit norm, so the inner product of two is their
    correlation coefficient over the disc.
    """
    images = np.asarray(images, dtype=np.float32)
    N, n, _ = images.shape
    shifts = np.zeros((1, 2)) if shifts is None else np.asarray(shifts, dtype=np.float64)
    S = len(shifts)
    R = n // 2 - 1
    M = polar_matrix(n, L, shifts, mirror)
    pol = (M @ images.reshape(N, n * n).T).T.reshape(N, S, R, L).astype(np.float64)
    w = _ring_weights(n)
    wmean = (pol.mean(axis=3) * w[None, None, :] ** 2).sum(2) / (w**2).sum()
    pol -= wmean[:, :, None, None]
    pol *= w[None, None, :, None]
    norm = np.sqrt((pol**2).sum(axis=(2, 3)))
    norm[norm == 0] = 1.0
    pol /= norm[:, :, None, None]
    return sfft.rfft(pol, axis=3, workers=workers).astype(np.complex64)


# ----------------------------------------------------------------------------------------
# the search


def _parabolic(cm, c0, cp):
    """Offset in (-0.5, 0.5) of the vertex of the parabola through (-1, cm), (0, c0), (1, cp)."""
    den = cm - 2 * c0 + cp
    with np.errstate(invalid="ignore", divide="ignore"):
        off = np.where(den < 0, 0.5 * (cm - cp) / den, 0.0)
    return np.clip(np.nan_to_num(off), -0.5, 0.5)


def _correlate(Pp: np.ndarray, Qr: np.ndarray, L: int, pairs: np.ndarray | None, workers: int):
    """Angular correlation of particles with shifted references.

    ``Pp``: ``(N, R, K)``; ``Qr``: ``(J, S, R, K)``. Returns ``(N, J', S, L)`` float32 where
    ``J' = J`` (all versus all) or ``1`` (pairwise: particle i with reference ``pairs[i]``).
    Value at lag τ: Σ_θ p(θ+τ)·q(θ).
    """
    N, R, K = Pp.shape
    J, S = Qr.shape[:2]
    if pairs is None:
        P = np.ascontiguousarray(Pp.transpose(2, 0, 1))                  # (K, N, R)
        Q = np.ascontiguousarray(np.conj(Qr).transpose(3, 2, 0, 1)).reshape(K, R, J * S)  # (K, R, J·S)
        C = np.matmul(P, Q)                                               # (K, N, J·S)
        C = C.transpose(1, 2, 0).reshape(N, J, S, K)
    else:
        # group the pairs by reference: one batched (over K) matrix product per reference
        C = np.empty((N, S, K), dtype=np.complex64)
        pairs = np.asarray(pairs)
        for j in np.unique(pairs):  # loop over references (classes), not particles
            sel = np.flatnonzero(pairs == j)
            P = Pp[sel].transpose(2, 0, 1)                                    # (K, nj, R)
            Q = np.conj(Qr[j]).transpose(2, 1, 0)                             # (K, R, S)
            C[sel] = np.matmul(P, Q).transpose(1, 2, 0)
        C = C[:, None]
    return sfft.irfft(C, n=L, axis=-1, workers=workers)


def _grid_search(particles, ref_ft, L, shifts, nm, *, pairs=None, pair_mirror=None, rotate=True, workers=1):
    """One level of the exhaustive search on a fixed shift grid.

    ``ref_ft``: ``(nm·Rn, S, R, K)`` polar FTs of the references (mirror-major). All versus
    all when ``pairs`` is None (outputs ``(N, Rn)``); otherwise particle i against reference
    ``pairs[i]`` (``(N,)``), restricted to mirror ``pair_mirror[i]`` when that is given.
    Returns ``alpha, sx, sy, mirror, corr``.
    """
    N = len(particles)
    S = len(shifts)
    Rn = len(ref_ft) // nm
    K = ref_ft.shape[-1]
    R = ref_ft.shape[2]
    nmc = nm if pair_mirror is None else 1
    per = (Rn * nmc if pairs is None else nmc) * S * (L + 2 * K) + R * K * 4
    batch = int(max(1, min(N, 3e7 // max(per, 1))))
    out_shape = (N, Rn) if pairs is None else (N,)
    res = {k: np.zeros(out_shape) for k in ("alpha", "tx", "ty", "mirror", "corr")}
    for lo in range(0, N, batch):
        hi = min(N, lo + batch)
        b = hi - lo
        Pp = polar_ft(particles[lo:hi], L, None, False, workers)[:, 0]
        if pairs is None:
            C = _correlate(Pp, ref_ft, L, None, workers)                       # (b, nm·Rn, S, L)
            C = C.reshape(b, nm, Rn, S, L).transpose(0, 2, 1, 3, 4)            # (b, Rn, nm, S, L)
            mir_base = np.zeros((b, Rn), dtype=np.int64)
        elif pair_mirror is None:
            idx = np.asarray(pairs[lo:hi])
            C = np.stack([_correlate(Pp, ref_ft, L, idx + m * Rn, workers)[:, 0] for m in range(nm)], 1)[:, None]
            mir_base = np.zeros((b, 1), dtype=np.int64)
        else:
            pm = np.asarray(pair_mirror[lo:hi]).astype(np.int64)
            idx = np.asarray(pairs[lo:hi]) + pm * Rn
            C = _correlate(Pp, ref_ft, L, idx, workers)[:, :, None]            # (b, 1, 1, S, L)
            mir_base = pm[:, None]
        J, nmc_ = C.shape[1], C.shape[2]
        flat = C.reshape(b, J, nmc_ * S * L)
        k = flat.argmax(axis=2)
        cbest = np.take_along_axis(flat, k[..., None], axis=2)[..., 0]
        im, rem = np.divmod(k, S * L)
        isf, it = np.divmod(rem, L)
        bi, ji = np.meshgrid(np.arange(b), np.arange(J), indexing="ij")
        if rotate and L > 2:
            cm = C[bi, ji, im, isf, (it - 1) % L]
            cp = C[bi, ji, im, isf, (it + 1) % L]
            tau = it + _parabolic(cm, cbest, cp)
        else:
            tau = it.astype(np.float64)
        # sub-pixel shift: parabola through the angle-maximised correlation of grid neighbours
        cmax = C.max(axis=4)                                                   # (b, J, nmc, S)
        sx, sy = shifts[isf, 0], shifts[isf, 1]
        offs = []
        for ddx, ddy in ((1, 0), (0, 1)):
            nb = []
            for sgn in (-1, 1):
                tgt = np.stack([sx + sgn * ddx, sy + sgn * ddy], -1)
                match = np.all(shifts[None, None, :, :] == tgt[:, :, None, :], axis=-1)
                has = match.any(-1)
                nb.append(np.where(has, cmax[bi, ji, im, match.argmax(-1)], np.nan))
            ok = np.isfinite(nb[0]) & np.isfinite(nb[1])
            off = _parabolic(np.nan_to_num(nb[0]), cmax[bi, ji, im, isf], np.nan_to_num(nb[1]))
            offs.append(np.where(ok, off, 0.0))
        alpha = tf._wrap(tau * 360.0 / L) if rotate else np.zeros_like(tau)
        vals = {"alpha": alpha, "tx": sx + offs[0], "ty": sy + offs[1],
                "mirror": (im + mir_base).astype(np.float64), "corr": cbest}
        for key, v in vals.items():
            res[key][lo:hi] = v if pairs is None else v[:, 0]
    return res["alpha"], res["tx"], res["ty"], res["mirror"], res["corr"]


def coarse_factor(n: int, maxshift: float) -> int:
    """Downsampling factor of the coarse level: a power of 2 with ``maxshift/f ≤ 4`` and ``n/f ≥ 16``."""
    f = 1
    while maxshift / f > 4 and n // (2 * f) >= 16 and (n // (2 * f)) % 2 == 0:
        f *= 2
    return f


def _ref_ft(refs, L, shifts, mirrors, workers):
    return np.concatenate([polar_ft(refs, L, shifts, m, workers) for m in mirrors], axis=0)


def search(particles: np.ndarray, refs: np.ndarray, *, maxshift: float = 0.0, mirror: bool = True,
           rotate: bool = True, pairs: np.ndarray | None = None, workers: int = 1):
    """Search ``T(particle) ≈ reference`` over angle, shift ``|t| ≤ maxshift`` and mirror.

    Coarse to fine when ``maxshift > 4``: an exhaustive search on Fourier-downsampled
    images (factor :func:`coarse_factor`) over the whole shift range, then, per pair, a
    full-resolution search over all angles and shifts within one coarse pixel of the coarse
    answer (the particle is pre-shifted by that answer, so the reference grids stay shared).

    Parameters
    ----------
    particles : (N, n, n); refs : (Rn, n, n).
    pairs : ``None`` (all particles versus all references → outputs ``(N, Rn)``) or ints
        ``(N,)``: particle i versus reference ``pairs[i]`` (outputs ``(N,)``).

    Returns ``(alpha, tx, ty, mirror, corr)``; ``corr`` is the correlation coefficient over
    the disc at the optimum (higher is better).
    """
    particles = np.asarray(particles, dtype=np.float32)
    refs = np.asarray(refs, dtype=np.float32)
    N, n, _ = particles.shape
    mirrors = [False, True] if mirror else [False]
    nm = len(mirrors)
    f = coarse_factor(n, maxshift)
    if f == 1:
        L = n_angles(n) if rotate else 1
        shifts = shift_grid(maxshift)
        return _grid_search(particles, _ref_ft(refs, L, shifts, mirrors, workers), L, shifts, nm,
                            pairs=pairs, rotate=rotate, workers=workers)
    # coarse level
    m = n // f
    cp = tf.fourier_crop(particles, m, workers=workers)
    cr = tf.fourier_crop(refs, m, workers=workers)
    Lc = n_angles(m) if rotate else 1
    cs = shift_grid(maxshift / f)
    a0, x0, y0, m0, _ = _grid_search(cp, _ref_ft(cr, Lc, cs, mirrors, workers), Lc, cs, nm,
                                     pairs=pairs, rotate=rotate, workers=workers)
    x0, y0 = x0 * f, y0 * f
    # fine level: one (particle, reference, mirror) pair per coarse answer
    if pairs is None:
        pi = np.repeat(np.arange(N), len(refs))
        ri = np.tile(np.arange(len(refs)), N)
    else:
        pi, ri = np.arange(N), np.asarray(pairs)
    a0, x0, y0, m0 = (v.reshape(-1) for v in (a0, x0, y0, m0))
    # pre-shift by d = R_a0^-1 t0 so that the remaining translation is small: t = δ + R_a d
    ar = np.deg2rad(a0)
    dx = np.cos(ar) * x0 - np.sin(ar) * y0
    dy = np.sin(ar) * x0 + np.cos(ar) * y0
    L = n_angles(n) if rotate else 1
    fs = shift_grid(f / 2 + 1)
    rft = _ref_ft(refs, L, fs, mirrors, workers)
    out = [np.empty(pi.size) for _ in range(5)]
    chunk = 2048
    for lo in range(0, pi.size, chunk):
        hi = min(pi.size, lo + chunk)
        moved = tf.fourier_shift(particles[pi[lo:hi]], dx[lo:hi], dy[lo:hi], workers=workers)
        a, dxs, dys, mm, c = _grid_search(moved, rft, L, fs, nm, pairs=ri[lo:hi], pair_mirror=m0[lo:hi],
                                          rotate=rotate, workers=workers)
        r = np.deg2rad(a)
        tx = dxs + np.cos(r) * dx[lo:hi] + np.sin(r) * dy[lo:hi]
        ty = dys - np.sin(r) * dx[lo:hi] + np.cos(r) * dy[lo:hi]
        for o, v in zip(out, (a, tx, ty, mm, c)):
            o[lo:hi] = v
    shape = (N, len(refs)) if pairs is None else (N,)
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
    made the classification worse (view error 45–48° instead of 36–38°): class averages and
    alignment references are not perfectly centred, so the needed shifts exceed the particles' own.
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
          shrink: int = 1, apix: float | None = None, ref_ptcl_repr=None, workers: int = 1) -> Alignment:
    """Align particles to references with an EMAN2-named aligner and score with ``cmp``.

    Returns an :class:`Alignment` with ``T(particle) ≈ reference`` and
    ``score = cmp(particle, T⁻¹(reference))`` (the particle stays unresampled, as in
    e2simmx). ``shrink > 1`` Fourier-downsamples both stacks for the search and scales the
    translations back. ``pairs`` as in :func:`search`.
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
    alpha, tx, ty, mir, corr = search(sp_, sr_, pairs=pairs, workers=workers, **kw)
    tx, ty = tx * f, ty * f
    if (parse(ralign, "aligner") if isinstance(ralign, str) else ralign) is not None:
        raise ConfigError("the 'refine' second-stage aligner is not implemented in this r2d version yet; "
                          "set simralign/classralign to null")
    score = score_pairs(particles, refs, (alpha, tx, ty, mir), cmp, pairs=pairs, apix=apix,
                        ref_ptcl_repr=ref_ptcl_repr)
    return Alignment(alpha, tx, ty, mir, score, corr)


def _pair_index(shape, pairs):
    if pairs is None:
        N, R = shape
        return np.repeat(np.arange(N), R), np.tile(np.arange(R), N)
    return np.arange(len(pairs)), np.asarray(pairs)


def score_pairs(particles, refs, params, cmp: Option, *, pairs=None, apix=None, ref_ptcl_repr=None,
                batch: int = 2048) -> np.ndarray:
    """``cmp(particle_i, T_ij⁻¹(ref_j))`` for every pair; shape of ``params[0]``."""
    alpha = np.asarray(params[0])
    pi, ri = _pair_index(alpha.shape, pairs)
    flat = [np.asarray(p).reshape(-1) for p in params]
    out = np.empty(pi.size)
    reprs = None if ref_ptcl_repr is None else np.asarray(ref_ptcl_repr, dtype=np.float64)
    for lo in range(0, pi.size, batch):
        hi = min(pi.size, lo + batch)
        inv = tf.invert(*(p[lo:hi] for p in flat))
        moved = tf.transform(refs[ri[lo:hi]], *inv)
        out[lo:hi] = compare(particles[pi[lo:hi]], moved, cmp, apix=apix,
                             ptcl_repr=None if reprs is None else reprs[ri[lo:hi]])
    return out.reshape(alpha.shape)
