"""Image transforms, filters, masks and normalisations on stacks (docs/algorithm.md §3.1, §4).

Stacks are ``(N, n, n)`` float arrays, ``a[y, x]``, centre ``c = n // 2``.

**The transform convention, used everywhere in r2d** (EMAN2's 2-D "MTR" form): parameters
``(alpha, tx, ty, mirror)`` with ``alpha`` in degrees define the point map, in pixel
coordinates ``p = (u, v) = (x - c, y - c)``::

    p' = M^mirror (R_alpha p + t),   R_alpha = [[cos a, sin a], [-sin a, cos a]],  M = diag(-1, 1)

i.e. **rotate, then translate by (tx, ty), then mirror x** (``u -> -u``, a left-right flip
about column ``c``). A feature at angle ``phi`` (from +x towards +y) moves to ``phi - alpha``.
Applying a transform to an image samples the input at ``T^-1(p')`` for every output pixel
(bilinear, zero outside), exactly like EMAN2's ``EMData.transform``.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

# ----------------------------------------------------------------------------------------
# transform parameters


def _arr(*xs):
    return [np.asarray(x, dtype=np.float64) for x in xs]


def invert(alpha, tx, ty, mirror):
    """Inverse of MTR transforms (arrays broadcast). Returns ``(alpha, tx, ty, mirror)``.

    ``m=0``: ``(-a, -R_{-a} t)``; ``m=1``: ``(a, -M R_{-a} t)`` (a mirrored transform keeps its angle).
    """
    alpha, tx, ty, mirror = _arr(alpha, tx, ty, mirror)
    a = np.deg2rad(alpha)
    c, s = np.cos(a), np.sin(a)
    # R_{-a} t
    rx = c * tx - s * ty
    ry = s * tx + c * ty
    m = mirror > 0.5
    new_alpha = np.where(m, alpha, -alpha)
    new_tx = np.where(m, rx, -rx)
    return _wrap(new_alpha), new_tx, -ry, mirror.copy()


def to_matrix(alpha, tx, ty, mirror) -> np.ndarray:
    """2x3 affine matrices ``(..., 2, 3)`` of MTR transforms (acting on centred coordinates)."""
    alpha, tx, ty, mirror = _arr(alpha, tx, ty, mirror)
    a = np.deg2rad(alpha)
    c, s = np.cos(a), np.sin(a)
    sgn = np.where(mirror > 0.5, -1.0, 1.0)
    out = np.empty(np.broadcast(alpha, tx, ty, mirror).shape + (2, 3))
    out[..., 0, 0] = sgn * c
    out[..., 0, 1] = sgn * s
    out[..., 0, 2] = sgn * tx
    out[..., 1, 0] = -s
    out[..., 1, 1] = c
    out[..., 1, 2] = ty
    return out


def from_matrix(mat: np.ndarray):
    """MTR parameters ``(alpha, tx, ty, mirror)`` of 2x3 matrices (alpha in (-180, 180])."""
    mat = np.asarray(mat, dtype=np.float64)
    A = mat[..., :, :2].copy()
    t = mat[..., :, 2].copy()
    det = A[..., 0, 0] * A[..., 1, 1] - A[..., 0, 1] * A[..., 1, 0]
    m = det < 0
    A[..., 0, :] = np.where(m[..., None], -A[..., 0, :], A[..., 0, :])
    t[..., 0] = np.where(m, -t[..., 0], t[..., 0])
    alpha = np.rad2deg(np.arctan2(A[..., 0, 1], A[..., 0, 0]))
    return _wrap(alpha), t[..., 0], t[..., 1], m.astype(np.float64)


def compose(first, second):
    """Parameters of ``second ∘ first`` (apply ``first``, then ``second``); each a 4-tuple."""
    A = to_matrix(*first)
    B = to_matrix(*second)
    lin = B[..., :, :2] @ A[..., :, :2]
    t = (B[..., :, :2] @ A[..., :, 2:3])[..., 0] + B[..., :, 2]
    return from_matrix(np.concatenate([lin, t[..., None]], axis=-1))


def _wrap(alpha):
    """Angles into (-180, 180]."""
    a = np.mod(np.asarray(alpha, dtype=np.float64) + 180.0, 360.0) - 180.0
    return np.where(a == -180.0, 180.0, a)


# ----------------------------------------------------------------------------------------
# applying transforms


def affine(n: int, alpha, tx, ty, mirror) -> tuple[np.ndarray, np.ndarray]:
    """The inverse mapping of one MTR transform per image as ``(A (N, 2, 2), o (N, 2))``: output
    pixel ``(y', x')`` samples the input at ``(y, x) = A (y', x') + o``.

    ``m=0: p = R_{-a}(p' - t)``; ``m=1: p = R_{-a}(M p' - t)`` (coordinates relative to the
    centre ``c = n//2``): with ``u = s(x' - c) - tx``, ``v = y' - c - ty`` (``s = -1`` when
    mirrored), ``x = c + cos a·u - sin a·v`` and ``y = c + sin a·u + cos a·v``.
    """
    alpha, tx, ty, mirror = (np.atleast_1d(v) for v in np.broadcast_arrays(*_arr(alpha, tx, ty, mirror)))
    c = n // 2
    r = np.deg2rad(alpha)
    cs, sn = np.cos(r), np.sin(r)
    s = np.where(mirror > 0.5, -1.0, 1.0)
    u0, v0 = -s * c - tx, -c - ty  # u, v at the output pixel (0, 0)
    mats = np.stack([np.stack([cs, sn * s], -1), np.stack([-sn, cs * s], -1)], -2)
    offs = np.stack([c + sn * u0 + cs * v0, c + cs * u0 - sn * v0], -1)
    return mats, offs


def source_coords(n: int, alpha, tx, ty, mirror) -> tuple[np.ndarray, np.ndarray]:
    """Input-pixel coordinates ``(y, x)``, each ``(N, n, n)``, sampled for each output pixel
    (the mapping of :func:`affine`)."""
    return _source_points(n, *affine(n, alpha, tx, ty, mirror))


def _source_points(n: int, mats: np.ndarray, offs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(y, x)`` float64 ``(N, n, n)``: ``A (y', x') + o`` for every output pixel (``mats``
    ``(N, 2, 2)``, ``offs`` ``(N, 2)`` from :func:`affine`)."""
    g = np.arange(n, dtype=np.float64)
    yo, xo = g[None, :, None], g[None, None, :]
    y = mats[:, 0, 0, None, None] * yo + mats[:, 0, 1, None, None] * xo + offs[:, 0, None, None]
    x = mats[:, 1, 0, None, None] * yo + mats[:, 1, 1, None, None] * xo + offs[:, 1, None, None]
    return y, x


def transform(images: np.ndarray, alpha, tx, ty, mirror, *, order: int = 1, workers: int = 1) -> np.ndarray:
    """Apply one MTR transform per image: ``(N, n, n)`` -> ``(N, n, n)`` float32.

    Bilinear (``order=1``) inverse mapping (:func:`affine`), zero outside, as EMAN2: an output
    pixel whose source point lies outside ``[0, n-1]²`` is 0 (``scipy.ndimage``'s ``constant``
    mode; agrees with ``ndimage.affine_transform(order=1, prefilter=False)`` to float
    rounding). Vectorised over blocks of images (:func:`_bilinear`: four gathers and three
    linear blends), about 2× faster than one ``ndimage`` call per image; ``order > 1`` uses
    ``ndimage`` (spline, no prefilter). Parameters are scalars or arrays of length ``N``;
    ``workers`` threads share the blocks (numpy releases the GIL). Each image's values depend
    only on that image and its transform.
    """
    images = np.asarray(images)
    N, n, _ = images.shape
    mats, offs = affine(n, *(np.broadcast_to(np.asarray(p, dtype=np.float64), (N,)) for p in (alpha, tx, ty, mirror)))
    src = images.astype(np.float32, copy=False)
    out = np.empty((N, n, n), dtype=np.float32)
    step = max(1, (1 << 17) // (n * n))  # images per block: ~1 MB of float64 coordinates per array

    def work(lo, hi):
        if order == 1:
            for b in range(lo, hi, step):
                e = min(hi, b + step)
                out[b:e] = _bilinear(src[b:e], mats[b:e], offs[b:e])
            return
        from scipy import ndimage  # only for order != 1 (imported here: 50 ms per job otherwise)

        for i in range(lo, hi):
            ndimage.affine_transform(src[i], mats[i], offs[i], output=out[i], order=order, mode="constant",
                                     cval=0.0, prefilter=False)

    workers = max(1, min(int(workers), -(-N // step)))
    if workers == 1:
        work(0, N)
    else:
        from concurrent.futures import ThreadPoolExecutor

        bounds = np.linspace(0, N, workers + 1).astype(int)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, bounds[:-1], bounds[1:]))
    return out


def _bilinear(src: np.ndarray, mats: np.ndarray, offs: np.ndarray) -> np.ndarray:
    """Bilinear samples ``(B, n, n)`` float32 of images ``src`` ``(B, n, n)`` float32 at
    ``(y, x) = A (y', x') + o`` (``mats`` ``(B, 2, 2)``, ``offs`` ``(B, 2)``, float64) for every
    output pixel ``(y', x')``; 0 where the point is outside ``[0, n-1]²``."""
    B, n, _ = src.shape
    y, x = _source_points(n, mats, offs)
    valid = (x >= 0) & (x <= n - 1) & (y >= 0) & (y <= n - 1)
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = (y - y0).astype(np.float32), (x - x0).astype(np.float32)
    yi = np.clip(y0, 0, n - 1).astype(np.intp)
    xi = np.clip(x0, 0, n - 1).astype(np.intp)
    yj, xj = np.minimum(yi + 1, n - 1), np.minimum(xi + 1, n - 1)  # weight 0 where clipped (at n-1)
    base = (np.arange(B, dtype=np.intp) * (n * n))[:, None, None]
    flat = src.reshape(-1)
    ri, rj = base + yi * n, base + yj * n
    top = np.take(flat, ri + xi)
    top += fx * (np.take(flat, ri + xj) - top)
    bot = np.take(flat, rj + xi)
    bot += fx * (np.take(flat, rj + xj) - bot)
    top += fy * (bot - top)
    top *= valid
    return top


def fourier_shift(images: np.ndarray, sx, sy, *, workers: int = 1) -> np.ndarray:
    """Sub-pixel circular shift by ``(sx, sy)`` pixels (content moves to ``+s``) via FFT phases.

    The phase ramp is separable, ``exp(-2πi kx sx)·exp(-2πi ky sy)``: two small complex64
    factors per image instead of one complex exponential per Fourier coefficient.
    """
    images = np.asarray(images, dtype=np.float32)
    N, n, _ = images.shape
    sx = np.broadcast_to(np.asarray(sx, dtype=np.float64), (N,))
    sy = np.broadcast_to(np.asarray(sy, dtype=np.float64), (N,))
    ex = np.exp(-2j * np.pi * sx[:, None] * sfft.rfftfreq(n)[None, :]).astype(np.complex64)  # (N, n//2+1)
    ey = np.exp(-2j * np.pi * sy[:, None] * sfft.fftfreq(n)[None, :]).astype(np.complex64)   # (N, n)
    F = sfft.rfft2(images, workers=workers)
    F *= ey[:, :, None]
    F *= ex[:, None, :]
    return sfft.irfft2(F, s=(n, n), workers=workers).astype(np.float32, copy=False)


def integer_shift(images: np.ndarray, dx, dy) -> np.ndarray:
    """Shift each image by whole pixels ``(dx, dy)`` with zero fill, no wrap-around."""
    images = np.asarray(images)
    N, n, _ = images.shape
    dx = np.broadcast_to(np.asarray(dx, dtype=int), (N,))
    dy = np.broadcast_to(np.asarray(dy, dtype=int), (N,))
    out = np.zeros_like(images)
    for i in range(N):  # N here is the number of class averages, never particles
        sx, sy = int(dx[i]), int(dy[i])
        if abs(sx) >= n or abs(sy) >= n:
            continue
        out[i, max(0, sy):n + min(0, sy), max(0, sx):n + min(0, sx)] = images[
            i, max(0, -sy):n - max(0, sy), max(0, -sx):n - max(0, sx)
        ]
    return out


def xflip(images: np.ndarray) -> np.ndarray:
    """Mirror x about column ``n//2`` (EMAN2 ``xform.flip:axis=x``; column 0 becomes 0)."""
    out = np.zeros_like(images)
    out[..., 1:] = images[..., :0:-1]
    return out


# ----------------------------------------------------------------------------------------
# radii, masks, normalisation


def radius_grid(n: int) -> np.ndarray:
    """Distance of each pixel from the centre ``c = n//2``, ``(n, n)``."""
    v, u = np.mgrid[0:n, 0:n] - n // 2
    return np.hypot(u, v)


def edge_mean(images: np.ndarray) -> np.ndarray:
    """EMAN2's edge mean: rows 0, n-1 and columns 0, n-1 (corners twice) / (2nx + 2ny)."""
    s = (images[:, 0, :].sum(1, dtype=np.float64) + images[:, -1, :].sum(1, dtype=np.float64)
         + images[:, :, 0].sum(1, dtype=np.float64) + images[:, :, -1].sum(1, dtype=np.float64))
    return s / (2 * images.shape[1] + 2 * images.shape[2])


def normalize(images: np.ndarray, mode: str = "normalize", radius: float | None = None, width: float = 2.0,
              mask_radius: float | None = None) -> np.ndarray:
    """EMAN2 ``normalize*`` processors on a stack (float32 copy).

    ``normalize``: (f - mean)/σ; ``normalize.edgemean``: μ = edge mean, or with ``mask_radius``
    (px, the particle mask) the mean of the background outside it (``d ≥ mask_radius``, where
    any pixels are); ``normalize.circlemean``: μ = mean of the ring ``R ≤ d < R + width``
    (negative R counts from n/2, default n/2 - 2); ``normalize.unitlen``: f/‖f‖. Images with
    σ = 0 are left unchanged.
    """
    images = np.asarray(images, dtype=np.float32)
    N, n, _ = images.shape
    if mode == "normalize.unitlen":
        norm = np.linalg.norm(images.reshape(N, -1), axis=1)
        norm[norm == 0] = 1.0
        return (images / norm[:, None, None]).astype(np.float32)
    if mode == "normalize.unitsum":
        s = images.reshape(N, -1).sum(axis=1)
        s[s == 0] = 1.0
        return (images / s[:, None, None]).astype(np.float32)
    sd = images.reshape(N, -1).std(axis=1)
    if mode == "normalize":
        mu = images.reshape(N, -1).mean(axis=1)
    elif mode == "normalize.edgemean":
        outside = None if mask_radius is None else radius_grid(n) >= mask_radius
        mu = edge_mean(images) if outside is None or not outside.any() else images[:, outside].mean(axis=1)
    elif mode == "normalize.circlemean":
        R = n / 2 - 2 if radius is None else (n / 2 + radius if radius < 0 else radius)
        d2 = radius_grid(n) ** 2
        ring = (d2 >= R * R) & (d2 < (R + width) ** 2)
        mu = images[:, ring].mean(axis=1)
    else:
        raise ValueError(f"unknown normalisation {mode!r}")
    ok = sd > 0
    sd = np.where(ok, sd, 1.0).astype(np.float32)
    mu = np.where(ok, mu, 0.0).astype(np.float32)
    out = images - mu[:, None, None]  # float32 throughout (a float64 μ would promote the stack)
    out /= sd[:, None, None]
    return out


def gaussian_mask(n: int, inner: float, width: float) -> np.ndarray:
    """``mask.gaussian``: 1 inside ``inner``, ``exp(-(d-inner)^2/width^2)`` outside, ``(n, n)``."""
    d = radius_grid(n)
    return np.where(d > inner, np.exp(-((d - inner) ** 2) / width**2), 1.0).astype(np.float32)


def soft_circle(n: int, radius: float, edge: float = 3.0) -> np.ndarray:
    """The particle mask: 1 for ``d ≤ radius``, a raised-cosine edge to 0 at ``radius + edge``
    (px, about the centre pixel ``n//2``), ``(n, n)`` float32."""
    d = radius_grid(n)
    t = np.clip((d - radius) / edge, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


def circle_mask(n: int, radius: float) -> np.ndarray:
    """Hard disc mask ``d < radius``, ``(n, n)`` bool."""
    return radius_grid(n) < radius


# ----------------------------------------------------------------------------------------
# Fourier filters


def freq_radius(n: int, rfft: bool = True) -> np.ndarray:
    """|k| in Fourier pixels for the (r)fft2 layout of an ``n×n`` image."""
    ky = sfft.fftfreq(n) * n
    kx = (sfft.rfftfreq(n) if rfft else sfft.fftfreq(n)) * n
    return np.hypot(ky[:, None], kx[None, :])


def gauss_filter(images: np.ndarray, *, lowpass_px: float | None = None, highpass_px: float | None = None,
                 workers: int = 1) -> np.ndarray:
    """Gaussian low/high-pass (``cutoff_pixels``): ``H_lp = exp(-(k/p)^2)``, ``H_hp = 1 - exp(-(k/p)^2)``."""
    images = np.asarray(images, dtype=np.float32)
    n = images.shape[-1]
    k = freq_radius(n)
    H = np.ones_like(k)
    if lowpass_px:
        H *= np.exp(-((k / lowpass_px) ** 2))
    if highpass_px:
        H *= 1.0 - np.exp(-((k / highpass_px) ** 2))
    F = sfft.rfft2(images, workers=workers) * H
    return sfft.irfft2(F, s=images.shape[-2:], workers=workers).astype(np.float32)


def fourier_crop(images: np.ndarray, m: int, *, workers: int = 1) -> np.ndarray:
    """Fourier-downsample ``(N, n, n)`` to ``(N, m, m)`` (m ≤ n, even), keeping the mean level.

    Keeps the frequencies ``-m/2 … m/2-1`` on both axes of the full transform, as the real
    part of the inverse transform of that square (so the Nyquist row is the mean of the
    ``±m/2`` rows); computed with real FFTs in blocks that stay in cache.
    """
    images = np.asarray(images, dtype=np.float32)
    n = images.shape[-1]
    if m == n:
        return images.copy()
    h = m // 2
    rows = np.r_[0:h, n - h:n]
    out = np.empty(images.shape[:-2] + (m, m), dtype=np.float32)
    flat_in = images.reshape(-1, n, n)
    flat_out = out.reshape(-1, m, m)
    step = max(1, (1 << 21) // (n * n))
    for lo in range(0, len(flat_in), step):
        F = sfft.rfft2(flat_in[lo:lo + step], workers=workers)           # (b, n, n//2+1)
        Fc = F[:, rows, :h + 1]
        # the full square holds row -m/2 and column -m/2; its real part is the Hermitian mean
        Fc[:, h, :h] = 0.5 * (Fc[:, h, :h] + F[:, h, :h])
        Fc[:, h, h] = F[:, h, h]
        flat_out[lo:lo + step] = sfft.irfft2(Fc, s=(m, m), workers=workers) * ((m * m) / (n * n))
    return out


def ring_index(n: int) -> np.ndarray:
    """Integer ring ``round(|k|)`` for each coefficient of the rfft2 layout, ``(n, n//2+1)``."""
    return np.rint(freq_radius(n)).astype(np.int64)


# ----------------------------------------------------------------------------------------
# data-derived filtering


def spectral_snr_weight(images: np.ndarray, *, workers: int = 1) -> np.ndarray:
    """Radial weight ``w(r) = snr/(snr+1)`` estimated from a sample of noisy particles, ``(n//2+1,)``.

    The mean power per Fourier ring ``P(r)`` of the (edge-normalised) particles is signal
    plus noise; the noise floor is the median power of the outer rings (``r ≥ 0.8·n/2``,
    where projections of molecules carry almost no signal), so ``snr(r) = P(r)/floor − 1``
    (clipped at 0, then made non-increasing: ``max`` over the rings beyond; scaled to peak 1). Used as a matched filter in
    alignment and classification so that noise-only frequencies do not drive the search
    (reference bias); the DC ring gets weight 0.
    """
    images = normalize(np.asarray(images, dtype=np.float32), "normalize.edgemean")
    n = images.shape[-1]
    P = np.abs(sfft.rfft2(images, workers=workers)) ** 2
    ring = ring_index(n)
    nr = n // 2 + 1
    keep = ring < nr
    prof = np.bincount(ring[keep], P.mean(0)[keep], nr) / np.maximum(np.bincount(ring[keep], minlength=nr), 1)
    floor = np.median(prof[int(0.8 * (n // 2)):nr])
    snr = np.clip(prof / max(floor, 1e-30) - 1.0, 0.0, None)
    # a low-pass, not a band-pass: below the best ring keep the best weight (the CTF and the
    # amplitude contrast make low-frequency power small, but it is not noise)
    snr = np.maximum.accumulate(snr[::-1])[::-1]
    w = snr / (snr + 1.0)
    w = w / max(w.max(), 1e-12)
    w[0] = 0.0
    return w


def radial_filter(images: np.ndarray, weight: np.ndarray, *, workers: int = 1) -> np.ndarray:
    """Multiply each image's transform by ``weight[round(|k|)]`` (0 beyond the last ring)."""
    images = np.asarray(images, dtype=np.float32)
    n = images.shape[-1]
    H = radial_weight_grid(n, weight)
    out = np.empty(images.shape, dtype=np.float32)
    flat, res = images.reshape(-1, n, n), out.reshape(-1, n, n)
    step = max(1, int(4e6 // (n * (n // 2 + 1))))  # ~32 MB of single-precision transforms per batch
    for lo in range(0, len(flat), step):
        res[lo:lo + step] = sfft.irfft2(sfft.rfft2(flat[lo:lo + step], workers=workers) * H, s=(n, n),
                                        workers=workers)
    return out


def radial_weight_grid(n: int, weight: np.ndarray) -> np.ndarray:
    """``(n, n//2+1)`` float32 rfft2 grid of ``weight[round(|k|)]`` (0 beyond the last ring)."""
    ring = ring_index(n)
    w = np.asarray(weight, dtype=np.float64)
    return np.where(ring < len(w), w[np.minimum(ring, len(w) - 1)], 0.0).astype(np.float32)


def sample_indices(n: int, k: int = 1000) -> np.ndarray:
    """Up to ``k`` evenly spaced indices of ``range(n)`` (a deterministic sample of a stack)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).astype(np.int64))
