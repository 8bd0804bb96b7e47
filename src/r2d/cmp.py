"""EMAN2 comparators (algorithm.md §3.13), vectorised over image pairs.

``compare(this, to, option)`` compares ``this[i]`` with ``to[i]`` (both ``(N, n, n)``) and
returns ``(N,)`` float64 values in **EMAN2's sign convention: lower is more similar**
(similarities such as correlations are returned negated). ``this`` plays the role of the
EMAN2 image whose ``cmp`` is called, ``to`` the argument (``this.cmp(name, to, params)``).
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from r2d.options import Option, parse
from r2d.transforms import freq_radius


def _flat(a):
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(len(a), -1)


def ccc(this, to, *, negative=1, mask=None):
    """``-r`` with r the Pearson correlation over all pixels (or where mask > 0.5); NaN → 2."""
    f, g = _flat(this), _flat(to)
    if mask is not None:
        sel = np.asarray(mask).reshape(-1) > 0.5
        f, g = f[:, sel], g[:, sel]
    f = f - f.mean(1, keepdims=True)
    g = g - g.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (f * g).sum(1) / np.sqrt((f * f).sum(1) * (g * g).sum(1))
    r = -r if negative else r
    return np.where(np.isfinite(r), r, 2.0)


def dot(this, to, *, normalize=0, negative=1, mask=None):
    """``-(1/P)Σfg`` or, with ``normalize=1``, ``-Σfg/√(Σf²Σg²)`` (no mean subtraction)."""
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
    """``(1/P)Σ(f-g)²``; ``normto=1`` first fits ``g → a + b·g`` to ``f`` (kept only if b > 0)."""
    f, g = _flat(this), _flat(to)
    w = ((f != 0) & (g != 0)).astype(np.float64) if zeromask else np.ones_like(f)
    cnt = np.maximum(w.sum(1), 1.0)
    if normto:
        mf = (w * f).sum(1) / cnt
        mg = (w * g).sum(1) / cnt
        cov = (w * (f - mf[:, None]) * (g - mg[:, None])).sum(1)
        var = (w * (g - mg[:, None]) ** 2).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            b = np.where(var > 0, cov / var, 1.0)
        b = np.where(b > 0, b, 1.0)
        a = np.where(b > 0, mf - b * mg, 0.0)
        g = a[:, None] + b[:, None] * g
    d = (w * (f - g) ** 2).sum(1) / cnt
    return np.where(np.isfinite(d), d, np.finfo(np.float32).max)


def _band_weight(n, apix, minres, maxres):
    """EMAN2's soft band: (tanh(5(r-pmin)/pmin)+1)/2 · (1-tanh(r-pmax))/2 per ring r."""
    r = np.arange(n // 2 + 1, dtype=np.float64)
    pmin = apix * n / minres
    pmax = apix * n / maxres
    lo = (np.tanh(5.0 * (r - pmin) / pmin) + 1.0) / 2.0 if pmin > 0 else np.ones_like(r)
    hi = (1.0 - np.tanh(r - pmax)) / 2.0
    return lo * hi


def frc_curve(this, to, *, workers=1):
    """Fourier ring correlation per ring ``r = round(|k|)``, ``r = 0 … n/2``: ``(N, n/2+1)``; also ring counts."""
    this = np.asarray(this, dtype=np.float64)
    to = np.asarray(to, dtype=np.float64)
    n = this.shape[-1]
    F = sfft.rfft2(this, workers=workers)
    G = sfft.rfft2(to, workers=workers)
    ring = np.rint(freq_radius(n)).astype(np.int64).ravel()
    nr = n // 2 + 1
    keep = ring < nr
    ring = ring[keep]
    N = len(this)
    Ff = F.reshape(N, -1)[:, keep]
    Gf = G.reshape(N, -1)[:, keep]
    idx = ring[None, :] + nr * np.arange(N)[:, None]

    def rsum(v):
        return np.bincount(idx.ravel(), weights=v.ravel(), minlength=N * nr).reshape(N, nr)

    num = rsum((Ff * np.conj(Gf)).real)
    den = np.sqrt(rsum(np.abs(Ff) ** 2) * rsum(np.abs(Gf) ** 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(den > 0, num / den, 0.0)
    counts = np.bincount(ring, minlength=nr).astype(np.float64)
    return curve, counts


def frc(this, to, *, apix=1.0, ptcl_repr=None, sweight=1, nweight=0, minres=200.0, maxres=8.0,
        ampweight=0, snrweight=0, zeromask=0, pmin=None, pmax=None):
    """Weighted mean FRC, negated; ``nweight=1`` rescales by the ``ptcl_repr`` of ``to``."""
    curve, counts = frc_curve(this, to)
    n = np.asarray(this).shape[-1]
    w = _band_weight(n, apix, minres, maxres)
    if sweight:
        w = w * counts
    w[-1] = 0.0  # rings r = 0 … n/2 - 1 only
    S = (curve * w).sum(1) / w.sum()
    if nweight and ptcl_repr is not None:
        N_g = np.broadcast_to(np.asarray(ptcl_repr, dtype=np.float64), S.shape)
        ok = (N_g > 0) & (S >= 0) & (S < 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = S / (1 - S) / N_g
            S = np.where(ok, q / (1 + q), S)
    return np.where(np.isfinite(S), -S, 2.0)


def phase(this, to, *, apix=1.0, minres=500.0, maxres=10.0, ampweight=0, snrweight=0, snrfn=0, zeromask=0):
    """Weighted mean phase residual in radians over ``round(|k|) < n/2`` (0 = identical)."""
    this = np.asarray(this, dtype=np.float64)
    n = this.shape[-1]
    F = sfft.rfft2(this)
    G = sfft.rfft2(np.asarray(to, dtype=np.float64))
    ring = np.rint(freq_radius(n)).astype(np.int64)
    band = _band_weight(n, apix, minres, maxres)
    a = np.where(ring < n // 2, band[np.minimum(ring, n // 2)], 0.0)[None]
    if ampweight:
        a = a * np.abs(G)
    dphi = np.angle(F * np.conj(G))
    err = np.arccos(np.clip(np.cos(dphi), -1, 1))
    num = (a * err).reshape(len(F), -1).sum(1)
    den = np.broadcast_to(a, F.shape).reshape(len(F), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.pi / 2)


def optvariance(this, to, *, keepzero=1, matchfilt=1, invert=0, matchamp=0, radweight=0):
    """Residual variance of ``f ≈ m·g' + b`` where ``g'`` is ``to`` filtered to ``this``'s power spectrum.

    Uses the standard regression residual (algorithm.md §5.2 allows it instead of EMAN2's
    inverted-line formula). Only used to order alignment references.
    """
    f = np.asarray(this, dtype=np.float64)
    g = np.asarray(to, dtype=np.float64)
    n = f.shape[-1]
    if matchfilt:
        F = sfft.rfft2(f)
        G = sfft.rfft2(g)
        ring = np.rint(freq_radius(n)).astype(np.int64).ravel()
        nr = ring.max() + 1
        N = len(f)
        idx = (ring[None, :] + nr * np.arange(N)[:, None]).ravel()
        pf = np.bincount(idx, (np.abs(F) ** 2).reshape(N, -1).ravel(), N * nr).reshape(N, nr)
        pg = np.bincount(idx, (np.abs(G) ** 2).reshape(N, -1).ravel(), N * nr).reshape(N, nr)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(pg > 0, pf / pg, 0.0)
        ratio = np.minimum(ratio, 10.0 * ratio.mean(1, keepdims=True))
        ratio[:, 0] = 0.0
        G = G * np.sqrt(ratio)[:, ring].reshape(G.shape)
        g = sfft.irfft2(G, s=(n, n))
    ff, gg = _flat(f), _flat(g)
    w = ((ff != 0) & (gg != 0)) if keepzero else np.ones_like(ff, dtype=bool)
    w = w.astype(np.float64)
    cnt = np.maximum(w.sum(1), 1.0)
    mf = (w * ff).sum(1) / cnt
    mg = (w * gg).sum(1) / cnt
    cov = (w * (ff - mf[:, None]) * (gg - mg[:, None])).sum(1)
    var = (w * (gg - mg[:, None]) ** 2).sum(1)
    m = np.where(var > 0, cov / np.where(var > 0, var, 1), 0.0)
    res = w * (ff - (m[:, None] * (gg - mg[:, None]) + mf[:, None])) ** 2
    return res.sum(1) / cnt


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
