"""EMAN2 comparators (docs/algorithm.md §3.13), vectorised over image pairs.

``compare(this, to, option)`` compares ``this[i]`` with ``to[i]`` (both ``(N, n, n)``) and
returns ``(N,)`` float64 values in **EMAN2's sign convention: lower is more similar**
(similarities such as correlations are returned negated). ``this`` plays the role of the
EMAN2 image whose ``cmp`` is called, ``to`` the argument (``this.cmp(name, to, params)``).

Each comparator follows the definition in EMAN2's ``libEM/cmp.cpp`` (2.99.72), including the
details that change its value: ``frc`` sums each Fourier coefficient of the half plane once
(``calc_fourier_shell_correlation``), ``phase`` takes EMAN2's tabulated arc cosine
(``Util::fast_acos``, 2001 entries), ``optvariance`` filters ``to`` by the ratio of the radial
power spectra and scores the inverted least-squares line, and ``sqeuclidean:normto=1`` undoes
the fit when its slope is not positive. tests/test_eman2.py checks the values against
EMAN2's own on 80 image pairs (``ccc``, ``dot``, ``sqeuclidean`` within 1e-7, ``frc`` 5e-5,
``phase`` 2e-6, ``optvariance`` 2e-4 relative).

Not supported (accepted and ignored, as before): ``snrweight`` of ``frc``/``phase`` (it needs
CTF parameters on the images) and a ``mask`` image of ``ccc``/``dot``.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from r2d.options import Option, parse


def _flat(a):
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(len(a), -1)


def ccc(this, to, *, negative=1, mask=None):
    """``-r`` with r the Pearson correlation over all pixels (or where mask > 0.5).

    An undefined correlation (a constant image) is EMAN2's ``-2``, negated with the rest:
    ``2`` by default."""
    f, g = _flat(this), _flat(to)
    if mask is not None:
        sel = np.asarray(mask).reshape(-1) > 0.5
        f, g = f[:, sel], g[:, sel]
    f = f - f.mean(1, keepdims=True)
    g = g - g.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (f * g).sum(1) / np.sqrt((f * f).sum(1) * (g * g).sum(1))
    r = np.where(np.isfinite(r), r, -2.0)
    return -r if negative else r


def dot(this, to, *, normalize=0, negative=1, mask=None):
    """``-(1/P)Σfg`` or, with ``normalize=1``, ``-Σfg/√(Σf²Σg²)`` (no mean subtraction; 0
    where an image is all zero, where EMAN2 divides by zero)."""
    f, g = _flat(this), _flat(to)
    if mask is not None:
        sel = np.asarray(mask).reshape(-1) > 0.5
        f, g = f[:, sel], g[:, sel]
    s = (f * g).sum(1)
    if normalize:
        with np.errstate(invalid="ignore", divide="ignore"):
            s = s / np.sqrt((f * f).sum(1) * (g * g).sum(1))
        s = np.where(np.isfinite(s), s, 0.0)
    else:
        s = s / f.shape[1]
    return -s if negative else s


def sqeuclidean(this, to, *, normto=0, zeromask=0):
    """``(1/P)Σ(f-g)²``; ``zeromask=1``: only over pixels non-zero in both.

    ``normto=1`` first replaces ``g`` by ``a + b·g``, the least-squares fit to ``f`` (EMAN2's
    ``normalize.toimage``, over pixels non-zero in both with ``zeromask``), and keeps the
    original ``g`` where the slope ``b`` is not positive (the fit would invert the image)."""
    f, g = _flat(this), _flat(to)
    if normto:
        w = ((f != 0) & (g != 0)).astype(np.float64) if zeromask else np.ones_like(f)
        cnt = np.maximum(w.sum(1), 1.0)
        mf = (w * f).sum(1) / cnt
        mg = (w * g).sum(1) / cnt
        cov = (w * (f - mf[:, None]) * (g - mg[:, None])).sum(1)
        var = (w * (g - mg[:, None]) ** 2).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            b = np.where(var > 0, cov / np.where(var > 0, var, 1.0), 0.0)
        keep = b > 0
        a = np.where(keep, mf - b * mg, 0.0)
        b = np.where(keep, b, 1.0)
        g = a[:, None] + b[:, None] * g
    if zeromask:
        w = ((f != 0) & (g != 0)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = (w * (f - g) ** 2).sum(1) / w.sum(1)
    else:
        d = ((f - g) ** 2).mean(1)
    return np.where(np.isfinite(d), d, np.finfo(np.float32).max)


def _band_weight(n, apix, minres, maxres, pmin=None, pmax=None, rings=None):
    """EMAN2's soft band per ring r: ``(tanh(5(r-pmin)/pmin)+1)/2 · (1-tanh(r-pmax))/2``.

    ``pmin``/``pmax`` (rings) default to ``apix·n/minres`` and ``apix·n/maxres``; a factor is
    left out where its limit is 0 (``minres``/``maxres`` 0 or less). Rings ``0 … rings-1``
    (default ``n/2``)."""
    r = np.arange(n // 2 + 1 if rings is None else rings, dtype=np.float64)
    if not pmin:
        pmin = apix * n / minres if minres and minres > 0 else 0.0
    if not pmax:
        pmax = apix * n / maxres if maxres and maxres > 0 else 0.0
    w = np.ones_like(r)
    if pmin > 0:
        w = w * (np.tanh(5.0 * (r - pmin) / pmin) + 1.0) / 2.0
    if pmax > 0:
        w = w * (1.0 - np.tanh(r - pmax)) / 2.0
    return w


def _kgrid(n):
    """``(kx, |ky|)`` of the ``rfft2`` layout (``(1, n/2+1)``, ``(n, 1)``) and the row's signed ky
    as EMAN2 counts it (row ``n/2`` is ``+n/2``)."""
    kx = np.arange(n // 2 + 1)[None, :]
    iy = np.arange(n)[:, None]
    ky = np.where(iy > n // 2, iy - n, iy)
    return kx, np.abs(ky), ky


def _zero_masked(this, to):
    """Both images with every pixel set to 0 where either is 0 (EMAN2's ``zeromask``)."""
    f = np.asarray(this, dtype=np.float64)
    g = np.asarray(to, dtype=np.float64)
    z = (f == 0) | (g == 0)
    return np.where(z, 0.0, f), np.where(z, 0.0, g)


def _radial_mean(F, nbins, power):
    """EMAN2's ``calc_radial_dist(nbins, 0, 1, inten)`` of ``rfft2`` spectra ``F`` ``(N, n, n/2+1)``:
    the amplitude (``power=False``) or power per ring, each coefficient of the half plane split
    linearly between rings ``floor(|k|)`` and ``floor(|k|)+1``; ``(N, nbins)``."""
    N, n = F.shape[0], F.shape[1]
    kx, aky, _ = _kgrid(n)
    keep = ~((kx == 0) & (np.arange(n)[:, None] > n // 2))      # Friedel duplicates of column 0
    r = np.hypot(kx, aky).astype(np.float32)
    f = np.floor(r).astype(np.int64)
    frac = (r - f).astype(np.float64)
    ok = keep & (f < nbins)
    up = ok & (f < nbins - 1)
    v = (np.abs(F) ** 2 if power else np.abs(F)).reshape(N, -1)
    base = nbins * np.arange(N)[:, None]

    def acc(idx, wt, sel):
        s = sel.ravel()
        i = (idx.ravel()[s][None, :] + base).ravel()
        vals = (v[:, s] * wt.ravel()[s][None, :]).ravel()
        return (np.bincount(i, vals, N * nbins).reshape(N, nbins),
                np.bincount(idx.ravel()[s], wt.ravel()[s], nbins))

    s1, n1 = acc(f, 1.0 - frac, ok)
    s2, n2 = acc(f + 1, frac, up)
    norm = n1 + n2
    return (s1 + s2) / np.where(norm == 0, 1.0, norm)[None, :]


def frc_curve(this, to, *, workers=1):
    """EMAN2's Fourier ring correlation (``calc_fourier_shell_correlation``, ring width 1):
    every coefficient of the half plane once (column ``kx = 0`` for ``ky ≥ 0`` only), ring
    ``round(|k|)`` for ``0 … n/2``. Returns ``(curve (N, n/2+1), counts (N, n/2+1))`` with
    counts ``2 × coefficients`` as EMAN2 reports them, and 0 for both on a ring where either
    image has no power (as EMAN2 leaves them)."""
    this = np.asarray(this, dtype=np.float64)
    to = np.asarray(to, dtype=np.float64)
    N, n = this.shape[0], this.shape[-1]
    nr = n // 2 + 1
    kx, aky, ky = _kgrid(n)
    ring = np.floor(np.hypot(kx, aky) + 0.5).astype(np.int64)
    sel = (((kx > 0) | (ky >= 0)) & (ring < nr)).ravel()
    ring = ring.ravel()[sel]
    F = sfft.rfft2(this, workers=workers).reshape(N, -1)[:, sel]
    G = sfft.rfft2(to, workers=workers).reshape(N, -1)[:, sel]
    idx = (ring[None, :] + nr * np.arange(N)[:, None]).ravel()

    def rsum(v):
        return np.bincount(idx, weights=v.ravel(), minlength=N * nr).reshape(N, nr)

    num = rsum((F * np.conj(G)).real)
    n1 = rsum(np.abs(F) ** 2)
    n2 = rsum(np.abs(G) ** 2)
    ok = (n1 > 0) & (n2 > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(ok, num / np.sqrt(np.where(ok, n1 * n2, 1.0)), 0.0)
    counts = np.where(ok, 2.0 * np.bincount(ring, minlength=nr)[None, :], 0.0)
    return curve, counts


def frc(this, to, *, apix=1.0, ptcl_repr=None, sweight=1, nweight=0, minres=200.0, maxres=8.0,
        ampweight=0, snrweight=0, zeromask=0, pmin=None, pmax=None):
    """EMAN2's ``frc``: the negated weighted mean of the ring correlation (:func:`frc_curve`)
    over rings ``0 … n/2-1``, weights = ring count (``sweight``) × radial mean amplitude of
    ``this`` (``ampweight``) × soft band between ``minres`` and ``maxres`` Å (or rings
    ``pmin``/``pmax``). ``nweight=1`` rescales by the ``ptcl_repr`` of ``to`` (where > 0):
    ``s → q/(1+q)``, ``q = s/(1-s)/ptcl_repr``, for ``0 ≤ s < 1``. ``zeromask``: pixels zero in
    either image are zeroed in both first. NaN (no weight) → 2."""
    if zeromask:
        this, to = _zero_masked(this, to)
    curve, counts = frc_curve(this, to)
    n = np.asarray(this).shape[-1]
    h = n // 2
    w = np.broadcast_to(_band_weight(n, apix, minres, maxres, pmin, pmax, rings=h)[None, :], (len(curve), h))
    if sweight:
        w = w * counts[:, :h]
    if ampweight:
        F = sfft.rfft2(np.asarray(this, dtype=np.float64))
        w = w * _radial_mean(F, h, power=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        S = (curve[:, :h] * w).sum(1) / w.sum(1)
    if nweight and ptcl_repr is not None:
        N_g = np.broadcast_to(np.asarray(ptcl_repr, dtype=np.float64), S.shape)
        ok = (N_g > 0) & (S >= 0) & (S < 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = S / (1 - S) / N_g
            S = np.where(ok, q / (1 + q), S)
    return np.where(np.isfinite(S), -S, 2.0)


#: EMAN2's ``Util::fast_acos`` table: ``acos(i/1000 - 1)``, ``i = 0 … 2000`` (float32)
_ACOS_TABLE = np.arccos(np.arange(2001) / 1000.0 - 1.0).astype(np.float32)


def _fast_acos(c):
    """EMAN2's tabulated arc cosine (nearest of 2001 entries; 0 for c ≥ 1, π for c ≤ -1)."""
    c = np.asarray(c, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        g = np.floor(c * np.float32(1000.0) + np.float32(1000.0) + np.float32(0.5))
    g = np.clip(np.nan_to_num(g, nan=1000.0), 0, 2000).astype(np.int64)
    return np.where(c >= 1, np.float32(0.0), np.where(c <= -1, np.float32(np.pi), _ACOS_TABLE[g]))


def phase(this, to, *, apix=1.0, minres=500.0, maxres=10.0, ampweight=0, snrweight=0, snrfn=0, zeromask=0,
          pmin=None, pmax=None):
    """EMAN2's ``phase``: weighted mean phase error (radians, 0 = identical) over every
    ``rfft2`` coefficient with ``round(|k|) < n/2`` (column ``kx = 0`` with both signs of ky,
    as EMAN2 loops), the error from EMAN2's tabulated arc cosine of the normalised
    cross-power (0 where either coefficient is 0); weights = soft band between ``minres`` and
    ``maxres`` Å per ring (× ``r'e^{-r'}``, ``r' = 10r/(n/2)``, with ``snrfn=1``; × ``|G|`` of
    ``to`` with ``ampweight``). ``zeromask``: pixels zero in either image are zeroed in both."""
    if zeromask:
        this, to = _zero_masked(this, to)
    this = np.asarray(this, dtype=np.float64)
    N, n = this.shape[0], this.shape[-1]
    h = n // 2
    F = sfft.rfft2(this)
    G = sfft.rfft2(np.asarray(to, dtype=np.float64))
    kx, aky, _ = _kgrid(n)
    ring = np.floor(np.hypot(kx, aky) + 0.5).astype(np.int64)
    snr = np.ones(h)
    if snrfn == 1:
        x2 = 10.0 * np.arange(h) / h
        snr = x2 * np.exp(-x2)
    snr = (snr * _band_weight(n, apix, minres, maxres, pmin, pmax, rings=h)).astype(np.float32)
    a = np.where(ring < h, snr[np.minimum(ring, h - 1)], 0.0)[None]
    if ampweight:
        a = a * np.abs(G)
    na = np.abs(F) * np.abs(G)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (F.real * G.real + F.imag * G.imag) / na
    err = np.where(na > 0, _fast_acos(c), 0.0)
    num = (a * err).reshape(N, -1).sum(1)
    den = np.broadcast_to(a, F.shape).reshape(N, -1).sum(1) + np.finfo(np.float32).tiny
    return num / den


def optvariance(this, to, *, keepzero=1, matchfilt=1, invert=0, matchamp=0, radweight=0):
    """EMAN2's ``optvariance``: the residual of ``to`` (``x``) against ``this`` (``y``) along the
    inverted least-squares line.

    ``matchfilt=1``: ``x`` is ``to`` with its Fourier coefficients multiplied by the ratio of
    the radial mean power of ``this`` to that of ``to`` (rings ``0 … n/2-1``, EMAN2's
    ``calc_radial_dist``; a ratio above 10× their mean set to 10, ring 0 to 0; applied by
    EMAN2's ``apply_radial_func``, linear between rings, whose x frequency is counted in units
    of the complex row length ``n+2``). ``matchamp=1`` instead gives ``to`` the Fourier
    amplitudes of ``this``. Then ``y ≈ m·x + b`` is fitted by least squares (over pixels
    non-zero in both with ``keepzero``) and the value is the mean of ``((x - b)/m - y)²``
    (``invert=1``: ``(x - m·y - b)²``), weighted by ``hypot(i, j) + n/4`` (pixel indices from
    the corner) with ``radweight``. Lower is better; the value scales with ``1/m²``. Where
    EMAN2's value is not finite (an all-zero image) it is the largest float32.
    """
    f = np.asarray(this, dtype=np.float64)
    g = np.asarray(to, dtype=np.float64)
    N, n = f.shape[0], f.shape[-1]
    h = n // 2
    x = g
    if matchfilt or matchamp:
        F = sfft.rfft2(f)
        G = sfft.rfft2(g)
    if matchfilt:
        rf, rg = _radial_mean(F, h, True), _radial_mean(G, h, True)
        with np.errstate(invalid="ignore", divide="ignore"):
            rat = np.where(rg == 0, 0.0, rf / np.where(rg == 0, 1.0, rg)).astype(np.float32)
        avg = rat.mean(1, keepdims=True, dtype=np.float32)
        rat = np.where(rat > avg * np.float32(10.0), np.float32(10.0), rat)
        rat[:, 0] = 0.0
        kx, aky, _ = _kgrid(n)
        r = (np.hypot(kx / (2 * (n // 2 + 1)), aky / n) * n).astype(np.float32)
        lo = np.floor(r).astype(np.int64)
        t = (r - lo)[None]
        top = lo >= h - 2
        lc = np.minimum(lo, h - 2)
        fac = np.where(top[None], rat[:, h - 1, None, None], rat[:, lc] * (1.0 - t) + rat[:, lc + 1] * t)
        x = sfft.irfft2(G * fac, s=(n, n))
    if matchamp:
        x = sfft.irfft2(np.abs(F) * np.exp(1j * np.angle(G)), s=(n, n))
    xs = x.astype(np.float32).reshape(N, -1).astype(np.float64)
    ys = f.astype(np.float32).reshape(N, -1).astype(np.float64)
    w = ((xs != 0) & (ys != 0)).astype(np.float64) if keepzero else np.ones_like(xs)
    s, sx, sy = w.sum(1), (w * xs).sum(1), (w * ys).sum(1)
    sxx, sxy = (w * xs * xs).sum(1), (w * xs * ys).sum(1)
    div = s * sxx - sx * sx
    div = np.where(div == 0, 1e-7, div)
    b0 = ((sxx * sy - sx * sxy) / div).astype(np.float32)
    m0 = ((s * sxy - sx * sy) / div).astype(np.float32)
    m0 = np.where(m0 == 0, np.finfo(np.float32).tiny, m0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        b = (-b0 / m0).astype(np.float32)[:, None].astype(np.float64)
        m = (np.float32(1.0) / m0).astype(np.float32)[:, None].astype(np.float64)
        res = (xs - (ys - b) / m) ** 2 if invert else (xs * m + b - ys) ** 2
    if radweight:
        jj, ii = np.mgrid[0:n, 0:n]
        res = res * (np.hypot(ii, jj) + n / 4.0).reshape(1, -1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        v = (w * res).sum(1) / (w.sum(1) if keepzero else xs.shape[1])
    # an all-zero image leaves no pixels (EMAN2: 0/0) or an infinite slope: the worst value, never NaN
    return np.where(np.isfinite(v), v, np.finfo(np.float32).max)


_FUNCS = {
    "ccc": ccc,
    "dot": dot,
    "sqeuclidean": sqeuclidean,
    "frc": frc,
    "phase": phase,
    "optvariance": optvariance,
}
_NEEDS_APIX = {"frc", "phase"}


def compare(this, to, option: Option | str, *, apix: float | None = None, ptcl_repr=None) -> np.ndarray:
    """Compare ``this[i]`` with ``to[i]`` with an EMAN2 comparator; ``(N,)``, lower is better.

    ``apix`` (Å/px, default 1 as in EMAN2 when unknown) is used by ``frc``/``phase`` band
    limits; ``ptcl_repr`` (particles in each ``to`` image) by ``frc:nweight=1``.
    """
    opt = parse(option, "comparator") if isinstance(option, str) else option
    fn = _FUNCS[opt.name]
    params = dict(opt.params)
    if opt.name in _NEEDS_APIX:
        params["apix"] = float(apix) if apix else 1.0
    if opt.name == "frc":
        params["ptcl_repr"] = ptcl_repr
    if opt.name == "ccc" and "mask" in params:
        params.pop("mask")  # a mask file is not supported; the whole image is used
    this = np.asarray(this)
    to = np.asarray(to)
    if this.ndim == 2:
        this = this[None]
    if to.ndim == 2:
        to = to[None]
    if len(to) == 1 and len(this) > 1:
        to = np.broadcast_to(to, this.shape)
    if len(this) == 1 and len(to) > 1:
        this = np.broadcast_to(this, to.shape)
    # in blocks of about 1 M pixels: the float64 temporaries stay in cache (several times
    # faster than one pass over a large stack); every value depends on its own pair only
    rows = max(1, (1 << 20) // max(1, int(np.prod(this.shape[1:]))))
    if len(this) <= rows:
        return fn(this, to, **params)
    rep = params.get("ptcl_repr")
    per_row = rep is not None and np.ndim(rep) > 0 and len(rep) == len(this)

    def block(lo):
        kw = dict(params, ptcl_repr=np.asarray(rep)[lo:lo + rows]) if per_row else params
        return fn(this[lo:lo + rows], to[lo:lo + rows], **kw)

    return np.concatenate([block(lo) for lo in range(0, len(this), rows)])
