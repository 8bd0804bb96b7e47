"""Simulated particle images with exactly known views, shifts, CTF and junk flags.

Conventions (RELION's, so the truth can be written to a STAR file as is):

* Volumes are ``vol[z, y, x]`` with centre voxel ``m // 2``; images are ``img[y, x]`` with
  centre pixel ``box // 2``. Coordinates are in pixels relative to those centres.
* A rotation ``A`` (3x3) maps volume coordinates to image coordinates,
  ``r_image = A @ r_volume``; the projection is ``P(x, y) = integral V(A.T @ (x, y, z)) dz``.
  ``A = Rz(psi) @ Ry(tilt) @ Rz(rot)`` with ``Rz(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]`` and
  ``Ry(b) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]`` -- RELION's ``Euler_angles2matrix``.
* The viewing direction is ``d = A.T @ (0, 0, 1) = A[2] =
  (sin tilt cos rot, sin tilt sin rot, cos tilt)`` in the volume frame (x, y, z): the direction
  along which the projection integrates. ``psi`` is the in-plane rotation.
* A shift ``(shift_x, shift_y)`` moves the projected particle centre from ``(c, c)`` to
  ``(c + shift_x, c + shift_y)``: ``image(x, y) = P(x - shift_x, y - shift_y)``. (RELION's
  ``rlnOriginX/Y`` that re-centres it would be the negative.)

Projection uses the Fourier-slice theorem: the volume is zero-padded to ``M = 2 * max(m, box)``
and Fourier transformed once; each central slice ``F(A.T @ (kx, ky, 0))`` is sampled by cubic
B-spline interpolation of the real and imaginary parts (periodic; accurate to ~1e-3 against a
real-space projection, where trilinear interpolation is off by 1-7 % towards the box edge),
band-limited to Nyquist, shifted (phase ramp) and CTF-filtered on the padded ``M x M`` grid (as
on a micrograph: no wrap-around inside the box), inverse transformed and cropped to ``box``.

Images at another pixel size than the map's (``render(..., map_pixel_size=...)``, "Fourier
padding"): the central slice is sampled at the target image's frequencies ``j / (N * apix)``
on a padded target grid ``N = 2 * max(box, ceil(m * r))`` (``r = map_pixel_size / apix``),
which is the map-pixel projection's spectrum placed into the big target spectrum: zero beyond
the map's Nyquist circle (finer target, ``r > 1``) or cut at the target's Nyquist circle
(coarser target, Fourier cropping). Coefficients are scaled by ``r**2`` so that pixel values
keep the map-pixel projection's scale. Shift (target px), CTF and envelope (at ``apix``) and
junk are then made on the ``N x N`` target grid, as for ``r = 1``; for particles only on the
block of the spectrum inside the map's Nyquist (:func:`band_block`), the rest being zero. The
volume is padded to at least ``2 m`` and to the target's field of view ``N / r``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from scipy import ndimage

from r2d.ctf import ctf_2d, ctf_from_freqs
from r2d.rotations import cap_angles, euler_to_matrix, matrix_to_euler, random_rotations, view_directions

__all__ = [
    "euler_to_matrix",
    "matrix_to_euler",
    "random_rotations",
    "view_directions",
    "Projector",
    "project",
    "draw_truth",
    "truth_rotations",
    "render",
    "target_grid",
    "band_block",
    "simulate",
    "signal_variance",
    "add_noise",
    "junk_kinds",
    "particle_radius",
    "TRUTH_COLUMNS",
    "JUNK_KINDS",
]

#: columns of the truth table, in order
TRUTH_COLUMNS = [
    "index", "rot", "tilt", "psi", "view_x", "view_y", "view_z", "shift_x", "shift_y",
    "defocus_u", "defocus_v", "defocus_angle", "junk", "junk_kind",
]

#: what a junk image can be (``junk_kind``; particles have ``"particle"``):
#: ``noise`` an empty pick (noise only), ``blobs`` 2-6 random Gaussian blobs, ``aggregate`` two
#: particles of random views overlapping, ``edge`` a carbon or ice edge across the box (a soft
#: step), ``fragment`` part of a particle (a random view cut by a soft straight line)
JUNK_KINDS = ("noise", "blobs", "aggregate", "edge", "fragment")


# --------------------------------------------------------------------------- projection
def _n_threads() -> int:
    """Worker threads for interpolation: the CPUs this process may use (at most 8)."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, min(8, os.cpu_count() or 1))


def band_block(size: int, ratio: float) -> tuple[np.ndarray, int]:
    """Rows (int array) and number of leading columns of a ``size x size`` rfft2 grid that hold
    the frequencies inside the map's Nyquist circle (``ratio`` = map voxel / target pixel;
    the whole grid when ``ratio <= 1``)."""
    h = size // 2 if ratio <= 1 else min(size // 2, int(np.ceil(size / (2 * ratio))))
    rows = np.arange(size) if 2 * h >= size else np.r_[0:h + 1, size - h:size]
    return rows, h + 1


class Projector:
    """Fourier-slice projector of one cubic volume ``(m, m, m)``; build once, project often.

    ``pad`` is the padded size ``M`` (default ``2 * m``; ``slices``/``to_images`` work on
    ``M x M`` images, so give ``pad >= 2 * box`` when projecting to a box larger than ``m``).
    """

    def __init__(self, volume, pad: int | None = None):
        vol = np.asarray(volume, dtype=np.float64)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise ValueError(f"volume must be cubic (m, m, m), got shape {vol.shape}")
        m = vol.shape[0]
        big = int(pad) if pad else 2 * m
        big += big % 2
        if big < m:
            raise ValueError(f"pad {big} smaller than the volume {m}")
        self.m, self.size = m, big
        c = big // 2
        o = c - m // 2
        padded = np.zeros((big, big, big))
        padded[o:o + m, o:o + m, o:o + m] = vol
        f3 = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(padded)))
        # cubic B-spline coefficients of the (periodic) transform, real and imaginary parts
        self._re = ndimage.spline_filter(f3.real, order=3, mode="grid-wrap", output=np.float32)
        self._im = ndimage.spline_filter(f3.imag, order=3, mode="grid-wrap", output=np.float32)
        self._grids: dict = {}

    def _grid(self, size: int, ratio: float, band: bool):
        """Sample points of a ``size x size`` target grid (rfft2 layout) whose pixel is ``1/ratio``
        map voxels: ``(kx, ky)`` in units of this volume's ``M``-grid and the bool mask of the
        points inside both Nyquist circles, on the whole grid or (``band``) on the block
        :func:`band_rows` x ``band_cols`` around the origin that holds them."""
        key = (int(size), float(ratio), bool(band))
        if key not in self._grids:
            ky = np.fft.fftfreq(size) * size
            kx = np.fft.rfftfreq(size) * size
            if band:
                rows, cols = band_block(size, ratio)
                ky, kx = ky[rows], kx[:cols]
            kx, ky = np.meshgrid(kx, ky)  # (size, size//2+1), rfft2 layout (or the band block)
            radius = size / 2 * min(1.0, 1.0 / ratio)  # the map's Nyquist or the target's
            inside = (kx**2 + ky**2) < radius**2
            scale = self.size * ratio / size  # M-grid index per target-grid index (1 when size = M)
            self._grids[key] = (kx[inside] * scale, ky[inside] * scale, inside)
        return self._grids[key]

    def slices(self, rotations, size: int | None = None, ratio: float = 1.0,
               band: bool = False) -> np.ndarray:
        """Central slices for ``(B, 3, 3)`` rotations: ``(B, size, size//2 + 1)`` complex128,
        ``rfft2`` layout, origin (image centre) at index 0; zero beyond Nyquist.

        ``size`` (default ``M``) and ``ratio`` (map voxel / target pixel, default 1) give the
        target grid: its frequency ``j / size`` (cycles per target px) is sampled at the map's
        ``j * ratio / size``, zero beyond the map's (or, ``ratio < 1``, the target's) Nyquist
        circle, times ``ratio**2`` (pixel values on the map-pixel projection's scale). With
        ``band``: only the block of rows and columns :func:`band_block` (all that is not zero),
        ``(B, len(rows), cols)``.
        """
        size = self.size if size is None else int(size)
        ratio = float(ratio)
        kx_in, ky_in, inside = self._grid(size, ratio, band)
        a = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
        c = self.size // 2
        # k3 = A.T @ (kx, ky, 0) = kx * A[0] + ky * A[1]; array axes are (z, y, x)
        k3 = (kx_in[None, :, None] * a[:, None, 0, :]
              + ky_in[None, :, None] * a[:, None, 1, :])  # (B, P, 3) as (x, y, z)
        coords = np.stack([k3[..., 2], k3[..., 1], k3[..., 0]]).reshape(3, -1) + c
        vals = np.empty(coords.shape[1], dtype=np.complex64)
        chunks = np.array_split(np.arange(coords.shape[1]), _n_threads())

        def work(part, idx):  # scipy.ndimage releases the GIL: threads scale
            src = self._re if part == 0 else self._im
            res = ndimage.map_coordinates(src, coords[:, idx], order=3, mode="grid-wrap",
                                          prefilter=False, output=np.float32)
            (vals.real if part == 0 else vals.imag)[idx] = res

        with ThreadPoolExecutor(max_workers=_n_threads()) as pool:
            list(pool.map(lambda job: work(*job), [(p, i) for p in (0, 1) for i in chunks]))
        out = np.zeros((a.shape[0],) + inside.shape, dtype=np.complex128)
        out[:, inside] = vals.reshape(a.shape[0], -1)
        if ratio != 1.0:
            out *= ratio * ratio
        return out

    def to_images(self, slices, box: int) -> np.ndarray:
        """Inverse-transform ``(B, S, S//2+1)`` slices (any even ``S``, e.g. ``M``); crop
        ``(B, box, box)`` float32 at the centre."""
        size = slices.shape[-2]
        full = np.fft.irfft2(slices, s=(size, size))
        idx = (np.arange(box) - box // 2) % size
        return full[:, idx][:, :, idx].astype(np.float32)

    def project(self, rotations, box: int, batch: int = 256) -> np.ndarray:
        """Projections ``(N, box, box)`` float32 for ``(N, 3, 3)`` rotations."""
        a = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
        out = np.empty((a.shape[0], box, box), dtype=np.float32)
        for s in range(0, a.shape[0], batch):
            out[s:s + batch] = self.to_images(self.slices(a[s:s + batch]), box)
        return out


def project(volume, rotations, box: int, batch: int = 256) -> np.ndarray:
    """Projections of a cubic ``volume`` for ``(N, 3, 3)`` rotations: ``(N, box, box)`` float32."""
    m = np.shape(volume)[0]
    return Projector(volume, pad=2 * max(m, box)).project(rotations, box, batch)


# --------------------------------------------------------------------------- truth and rendering
def draw_truth(
    n: int,
    rng,
    *,
    shift_max: float = 0.0,
    ctf: str | None = None,
    defocus=(1e4, 3e4),
    astigmatism: float = 500.0,
    junk_fraction: float = 0.0,
    junk_kinds=("noise", "blobs"),
    preferred: float = 0.0,
    preferred_spread: float = 10.0,
) -> pd.DataFrame:
    """Random per-particle truth (see ``TRUTH_COLUMNS``; angles in degrees, shifts in px,
    defocus in A).

    Views uniform on SO(3); shifts uniform in ``[-shift_max, shift_max]``; mean defocus uniform
    in ``defocus`` (min, max), ``defocus_u - defocus_v`` uniform in ``[0, astigmatism]``,
    ``defocus_angle`` uniform in [0, 180). Without CTF the defocus columns are 0. A random
    ``round(junk_fraction * n)`` particles are junk: their angles and view columns are NaN and
    ``junk_kind`` is drawn uniformly from ``junk_kinds`` (:data:`JUNK_KINDS`). With
    ``preferred`` a random ``round(preferred * good)`` of the good particles view the map within
    ``preferred_spread`` degrees of its z axis instead (preferred orientation; drawn last, so the
    other columns are those of the same seed without it).
    """
    bad = sorted(set(junk_kinds) - set(JUNK_KINDS))
    if bad or not len(junk_kinds):
        raise ValueError(f"junk kinds {bad or '(none)'}: choose from {', '.join(JUNK_KINDS)}")
    rng = np.random.default_rng(rng)
    _, ang = random_rotations(n, rng)
    view = view_directions(euler_to_matrix(*ang.T))
    shifts = rng.uniform(-shift_max, shift_max, size=(n, 2)) if shift_max > 0 else np.zeros((n, 2))
    if ctf is None:
        du = dv = dang = np.zeros(n)
    else:
        lo, hi = float(defocus[0]), float(defocus[1])
        mean = rng.uniform(lo, hi, n)
        half = rng.uniform(0.0, astigmatism, n) / 2
        du, dv = mean + half, mean - half
        dang = rng.uniform(0.0, 180.0, n)
    junk = np.zeros(n, dtype=bool)
    n_junk = int(round(junk_fraction * n))
    if n_junk:
        junk[rng.choice(n, size=n_junk, replace=False)] = True
    ang[junk] = np.nan
    view[junk] = np.nan
    kind = np.full(n, "particle", dtype=object)
    kind[junk] = np.asarray(junk_kinds, dtype=object)[rng.integers(0, len(junk_kinds), n_junk)]
    n_pref = int(round(preferred * (n - n_junk)))
    if n_pref:
        rows = rng.choice(np.flatnonzero(~junk), size=n_pref, replace=False)
        ang[rows] = cap_angles(n_pref, rng, preferred_spread)
        view[rows] = view_directions(euler_to_matrix(*ang[rows].T))
    return pd.DataFrame({
        "index": np.arange(n), "rot": ang[:, 0], "tilt": ang[:, 1], "psi": ang[:, 2],
        "view_x": view[:, 0], "view_y": view[:, 1], "view_z": view[:, 2],
        "shift_x": shifts[:, 0], "shift_y": shifts[:, 1],
        "defocus_u": du, "defocus_v": dv, "defocus_angle": dang, "junk": junk, "junk_kind": kind,
    })[TRUTH_COLUMNS]


def truth_rotations(truth: pd.DataFrame) -> np.ndarray:
    """``(N, 3, 3)`` rotation matrices of a truth table's rows (NaN for junk rows)."""
    return euler_to_matrix(truth["rot"].to_numpy(), truth["tilt"].to_numpy(), truth["psi"].to_numpy())


def junk_kinds(truth: pd.DataFrame) -> np.ndarray:
    """Each row's ``junk_kind`` (tables without the column: ``"blobs"`` for every junk row,
    ``"particle"`` for the others)."""
    junk = truth["junk"].to_numpy(dtype=bool)
    if "junk_kind" in truth:
        return truth["junk_kind"].fillna("particle").to_numpy(dtype=object)
    return np.where(junk, "blobs", "particle").astype(object)


def particle_radius(volume, threshold: float = 0.1) -> float:
    """Radius in voxels of the densest part of a map: the largest distance from the centre of a
    voxel above ``threshold`` times the maximum (at least 2)."""
    vol = np.asarray(volume)
    m = vol.shape[0]
    z, y, x = np.nonzero(vol > threshold * vol.max())
    if len(z) == 0:
        return max(2.0, m / 4)
    return float(max(2.0, np.sqrt((x - m // 2) ** 2 + (y - m // 2) ** 2 + (z - m // 2) ** 2).max()))


class _Junk:
    """Makes junk images on the padded target grid ``(size, size)`` (real space, centre at
    ``size // 2``; target pixels, ``ratio`` of them per map voxel), each from its own generator
    ``default_rng([seed, 1, row])`` so an image does not depend on the batch it is drawn in.
    ``scale`` is the standard deviation over the box of a particle's projection (blobs and
    edges are scaled to it); ``radius`` the particle's (target px)."""

    def __init__(self, proj: "Projector", box: int, scale: float, radius: float, seed: int,
                 size: int | None = None, ratio: float = 1.0):
        self.proj, self.box, self.scale, self.radius, self.seed = proj, box, scale, radius, seed
        M = proj.size if size is None else int(size)
        self.size, self.ratio = M, ratio
        self.yy, self.xx = np.mgrid[:M, :M] - M // 2
        self.crop = slice(M // 2 - box // 2, M // 2 - box // 2 + box)

    def _views(self, rng, k: int) -> np.ndarray:
        """``k`` projections ``(k, size, size)`` of random views, centred at ``size // 2``."""
        rots, _ = random_rotations(k, rng)
        ft = self.proj.slices(rots, self.size, self.ratio)
        return np.fft.fftshift(np.fft.irfft2(ft, s=(self.size,) * 2), axes=(-2, -1))

    def image(self, kind: str, row: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, int(row)])
        xx, yy, box, r = self.xx, self.yy, self.box, self.radius
        if kind == "noise":
            return np.zeros(xx.shape)
        if kind == "blobs":
            img = np.zeros(xx.shape)
            for _ in range(rng.integers(2, 7)):
                x0, y0 = rng.uniform(-box / 4, box / 4, 2)
                sx, sy = rng.uniform(1.5, max(2.0, box / 10), 2)
                img += rng.uniform(0.3, 1.0) * np.exp(-(xx - x0) ** 2 / (2 * sx * sx) - (yy - y0) ** 2 / (2 * sy * sy))
            return img * (self.scale / max(img[self.crop, self.crop].std(), 1e-12))
        if kind == "aggregate":  # a second particle 0.8-1.5 radii away (overlapping), both off-centre
            a, b = self._views(rng, 2)
            d, phi = rng.uniform(0.8, 1.5) * r, rng.uniform(0, 2 * np.pi)
            dx, dy = d * np.cos(phi), d * np.sin(phi)
            return ndimage.shift(a, (-dy / 2, -dx / 2), order=1) + ndimage.shift(b, (dy / 2, dx / 2), order=1)
        if kind == "fragment":  # the part of a particle on one side of a line through its disc
            img = self._views(rng, 1)[0]
            phi, off = rng.uniform(0, 2 * np.pi), rng.uniform(-0.5, 0.3) * r
            t = xx * np.cos(phi) + yy * np.sin(phi) - off
            return img / (1 + np.exp(t / 1.5))
        if kind == "edge":  # a soft step (carbon or thick ice) across the box, 1-3x a particle's contrast
            phi, off = rng.uniform(0, 2 * np.pi), rng.uniform(-box / 4, box / 4)
            width = rng.uniform(1.0, 3.0)
            t = xx * np.cos(phi) + yy * np.sin(phi) - off
            return rng.uniform(1.0, 3.0) * 2 * self.scale / (1 + np.exp(-t / width))
        raise ValueError(f"junk kind {kind!r}: choose from {', '.join(JUNK_KINDS)}")


#: working memory of one batch in ``render`` (bytes, about): big boxes get smaller batches
BATCH_BYTES = 256 << 20


def target_grid(m: int, box: int, ratio: float = 1.0) -> int:
    """Padded target grid ``N`` (even) for a map of ``m`` voxels imaged in ``box`` px with
    ``ratio`` = map voxel / target pixel: ``2 * max(box, ceil(m * ratio))``."""
    return 2 * max(int(box), int(np.ceil(m * ratio - 1e-9)))


def render(
    volume,
    truth: pd.DataFrame,
    box: int,
    pixel_size: float,
    *,
    map_pixel_size: float | None = None,
    ctf: str | None = None,
    voltage: float = 300.0,
    cs: float = 2.7,
    amp_contrast: float = 0.1,
    bfactor: float = 0.0,
    seed: int = 0,
    batch: int = 256,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Noise-free images ``(N, box, box)`` float32 for a truth table (``draw_truth``), written
    into ``out`` when given (e.g. a memory-mapped MRC stack: then only one batch is in memory;
    batches shrink to about :data:`BATCH_BYTES` of working memory for big boxes).

    ``pixel_size`` (Å/px) is the images'; ``map_pixel_size`` (Å/voxel, default the same) the
    volume's. When they differ, the projection is Fourier-padded (finer images: zero beyond the
    map's Nyquist) or Fourier-cropped (coarser images) onto the padded target grid (module
    docstring); shifts (truth, px) are target pixels. Particle rows: projection, shift, then
    CTF (``ctf``: None, ``"flip"`` = multiply by |CTF|, ``"full"`` = multiply by CTF, at
    ``pixel_size``) and the envelope ``exp(-bfactor·s²/4)`` (s in 1/Å), all on the padded
    target grid before cropping. Junk rows get their ``junk_kind`` (:data:`JUNK_KINDS`, drawn
    from ``seed`` row by row, made at the target grid) through the same shift, CTF and
    envelope. Same truth and seed, same images, whatever the batch.
    """
    if ctf not in (None, "flip", "full"):
        raise ValueError(f"ctf must be None, 'flip' or 'full', not {ctf!r}")
    if not pixel_size > 0 or (map_pixel_size is not None and not map_pixel_size > 0):
        raise ValueError(f"pixel sizes must be > 0, got {pixel_size} and {map_pixel_size}")
    m = np.shape(volume)[0]
    ratio = 1.0 if map_pixel_size is None else float(map_pixel_size) / float(pixel_size)
    if abs(ratio - 1.0) >= 1e-9:
        return _render_resampled(volume, truth, box, pixel_size, ratio, ctf=ctf, voltage=voltage,
                                 cs=cs, amp_contrast=amp_contrast, bfactor=bfactor, seed=seed,
                                 batch=batch, out=out)
    proj = Projector(volume, pad=2 * max(m, box))
    big = proj.size
    n = len(truth)
    rots = truth_rotations(truth)
    junk = truth["junk"].to_numpy(dtype=bool)
    shifts = truth[["shift_x", "shift_y"]].to_numpy(dtype=np.float64)
    fy = np.fft.fftfreq(big)[:, None]
    fx = np.fft.rfftfreq(big)[None, :]

    kinds = junk_kinds(truth)
    if junk.any():
        maker = _Junk(proj, box, float(proj.project(np.eye(3)[None], box)[0].std()),
                      particle_radius(volume), seed)
    envelope = np.exp(-bfactor * (fx**2 + fy**2) / (4 * pixel_size**2)) if bfactor else None

    if out is None:
        out = np.empty((n, box, box), dtype=np.float32)
    for s in range(0, n, batch):
        rows = np.arange(s, min(n, s + batch))
        jb = junk[rows]
        ft = np.zeros((len(rows), big, big // 2 + 1), dtype=np.complex128)
        if (~jb).any():
            ft[~jb] = proj.slices(rots[rows[~jb]])
        if jb.any():
            imgs = np.stack([maker.image(kinds[r], r) for r in rows[jb]])
            ft[jb] = np.fft.rfft2(np.fft.ifftshift(imgs, axes=(-2, -1)))
        sx, sy = shifts[rows, 0], shifts[rows, 1]
        ft *= np.exp(-2j * np.pi * fx[None] * sx[:, None, None])  # separable phase ramp
        ft *= np.exp(-2j * np.pi * fy[None] * sy[:, None, None])
        if ctf is not None:
            t = truth.iloc[rows]
            c = ctf_2d(big, pixel_size, t["defocus_u"].to_numpy(), t["defocus_v"].to_numpy(),
                       t["defocus_angle"].to_numpy(), voltage=voltage, cs=cs,
                       amp_contrast=amp_contrast, rfft=True)
            ft *= np.abs(c) if ctf == "flip" else c
        if envelope is not None:
            ft *= envelope[None]
        out[rows] = proj.to_images(ft, box)
    return out


def _render_resampled(volume, truth, box, pixel_size, ratio, *, ctf, voltage, cs, amp_contrast,
                      bfactor, seed, batch, out) -> np.ndarray:
    """``render`` when the images' pixel is ``1/ratio`` map voxels: on the padded target grid
    ``big = target_grid(m, box, ratio)``. Particle rows are filtered on the block of the
    spectrum that is not zero (:func:`band_block`) and inverse-transformed by rows, then
    columns (only the ``box`` rows needed); junk rows on the whole grid."""
    m = np.shape(volume)[0]
    big = target_grid(m, box, ratio)
    half = big // 2 + 1
    # volume padded 2x, and at least to the target grid's field of view (no replica in it)
    proj = Projector(volume, pad=max(2 * m, int(np.ceil(big / ratio - 1e-9))))
    band_rows, band_cols = band_block(big, ratio)
    n = len(truth)
    rots = truth_rotations(truth)
    junk = truth["junk"].to_numpy(dtype=bool)
    shifts = truth[["shift_x", "shift_y"]].to_numpy(dtype=np.float64)
    kinds = junk_kinds(truth)
    # frequencies of the whole target grid: cycles/px (phase ramps), 1/Å (CTF), envelope
    fy, fx = np.fft.fftfreq(big), np.fft.rfftfreq(big)
    sy, sx = np.fft.fftfreq(big, d=pixel_size), np.fft.rfftfreq(big, d=pixel_size)
    envelope = (np.exp(-bfactor * (fx[None, :] ** 2 + fy[:, None] ** 2) / (4 * pixel_size**2))
                if bfactor else None)
    idx = (np.arange(box) - box // 2) % big  # the box's rows/columns on the padded grid

    def filtered(ft, sel, rr, cc):
        """Shift, CTF and envelope on ``ft`` (B, len(rr), cc) for truth rows ``sel``, in place."""
        ft *= np.exp(-2j * np.pi * fx[None, None, :cc] * shifts[sel, 0, None, None])
        ft *= np.exp(-2j * np.pi * fy[None, rr, None] * shifts[sel, 1, None, None])
        if ctf is not None:
            t = truth.iloc[sel]
            c = ctf_from_freqs(sx[None, :cc], sy[rr, None], t["defocus_u"].to_numpy(),
                               t["defocus_v"].to_numpy(), t["defocus_angle"].to_numpy(),
                               voltage=voltage, cs=cs, amp_contrast=amp_contrast, dtype=np.float32)
            ft *= np.abs(c) if ctf == "flip" else c
        if envelope is not None:
            ft *= envelope[None][:, rr, :cc]
        return ft

    def to_box(ft, rr, cc):
        """Inverse transform of the block ``ft`` (B, len(rr), cc) of the padded spectrum, cropped
        to ``(B, box, box)`` float32: along y for the ``cc`` columns, keep the box's rows, then
        along x."""
        col = np.zeros((len(ft), big, cc), dtype=np.complex128)
        col[:, rr] = ft
        g = np.fft.ifft(col, axis=-2)[:, idx]
        row = np.zeros((len(ft), box, half), dtype=np.complex128)
        row[:, :, :cc] = g
        return np.fft.irfft(row, n=big, axis=-1)[:, :, idx].astype(np.float32)

    if junk.any():
        one = proj.slices(np.eye(3)[None], big, ratio, band=True)
        scale = float(to_box(one, band_rows, band_cols)[0].std())
        maker = _Junk(proj, box, scale, particle_radius(volume) * ratio, seed, big, ratio)
    # working memory per image: particle block, column and row transforms; a whole-grid junk image
    per = 16 * (len(band_rows) * band_cols + big * band_cols + 2 * box * half) + 8 * box * big
    batch = max(1, min(int(batch), BATCH_BYTES // per))
    jbatch = max(1, BATCH_BYTES // (48 * big * half))
    every = np.arange(big)
    if out is None:
        out = np.empty((n, box, box), dtype=np.float32)
    for s in range(0, n, batch):
        rows = np.arange(s, min(n, s + batch))
        good = rows[~junk[rows]]
        if len(good):
            ft = proj.slices(rots[good], big, ratio, band=True)
            out[good] = to_box(filtered(ft, good, band_rows, band_cols), band_rows, band_cols)
        bad = rows[junk[rows]]
        for j in range(0, len(bad), jbatch):  # junk has every frequency: the whole grid
            sel = bad[j:j + jbatch]
            imgs = np.stack([maker.image(kinds[r], r) for r in sel])
            ft = np.fft.rfft2(np.fft.ifftshift(imgs, axes=(-2, -1)))
            out[sel] = to_box(filtered(ft, sel, every, half), every, half)
    return out


def simulate(
    volume,
    n: int,
    box: int,
    pixel_size: float,
    *,
    snr: float,
    map_pixel_size: float | None = None,
    snr_radius: float | None = None,
    shift_max: float = 0.0,
    ctf: str | None = None,
    defocus=(1e4, 3e4),
    astigmatism: float = 500.0,
    voltage: float = 300.0,
    cs: float = 2.7,
    amp_contrast: float = 0.1,
    bfactor: float = 0.0,
    seed: int = 0,
    junk_fraction: float = 0.0,
    junk_kinds=("noise", "blobs"),
    return_clean: bool = False,
):
    """Simulate ``n`` noisy particle images of ``volume`` (cubic): ``box`` px of ``pixel_size``
    Å, from a map of ``map_pixel_size`` Å/voxel (default ``pixel_size``; see :func:`render`).

    Returns ``(images (n, box, box) float32, truth DataFrame)`` (plus the noise-free images when
    ``return_clean``). White Gaussian noise has variance ``signal_variance / snr`` (see
    :func:`signal_variance`: over the whole box, or inside the disc of ``snr_radius`` px).
    The truth comes from ``draw_truth(n, default_rng([seed, 0]), ...)``, junk content from
    ``render(..., seed=seed)``, noise from ``default_rng([seed, 2])``.
    """
    if snr <= 0:
        raise ValueError("snr must be > 0")
    truth = draw_truth(n, np.random.default_rng([seed, 0]), shift_max=shift_max, ctf=ctf,
                       defocus=defocus, astigmatism=astigmatism, junk_fraction=junk_fraction,
                       junk_kinds=junk_kinds)
    clean = render(volume, truth, box, pixel_size, map_pixel_size=map_pixel_size, ctf=ctf,
                   voltage=voltage, cs=cs, amp_contrast=amp_contrast, bfactor=bfactor, seed=seed)
    images = clean.copy()
    add_noise(images, truth, snr, seed, radius=snr_radius)
    return (images, truth, clean) if return_clean else (images, truth)


def _disc(box: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:box, :box] - box // 2
    return (xx**2 + yy**2) <= radius**2


def _block(images, block: int | None) -> int:
    """Images per block: ``block``, or (None) about 64 MB of float32 (4096 images of 64 px)."""
    return int(block) if block else max(1, (64 << 20) // (4 * int(np.prod(images.shape[1:]))))


def signal_variance(clean: np.ndarray, truth: pd.DataFrame, block: int | None = None,
                    radius: float | None = None) -> float:
    """Mean over the non-junk images (all images if every one is junk) of each noise-free
    image's variance over the box, or over the pixels within ``radius`` px of the centre (the
    particle's disc, where users and most simulators state an SNR), read ``block`` images at a
    time (default: about 64 MB)."""
    block = _block(clean, block)
    junk = truth["junk"].to_numpy(dtype=bool)
    rows = np.flatnonzero(~junk) if (~junk).any() else np.arange(len(clean))
    sel = None if radius is None else _disc(clean.shape[-1], radius)
    var = np.empty(len(rows))
    for lo in range(0, len(rows), block):
        r = rows[lo:lo + block]
        c = np.asarray(clean[r])
        c = c.reshape(len(r), -1) if sel is None else c[:, sel]
        var[lo:lo + block] = c.var(axis=1, dtype=np.float64)
    return float(var.mean())


def add_noise(images: np.ndarray, truth: pd.DataFrame, snr: float, seed: int,
              block: int | None = None, radius: float | None = None) -> None:
    """Add white Gaussian noise of variance ``signal_variance(..., radius) / snr`` to noise-free
    ``images`` in place (an array or a writable memory map), ``block`` images at a time (default:
    about 64 MB); the noise is ``default_rng([seed, 2]).standard_normal`` drawn in image order
    (the same numbers for any ``block``)."""
    block = _block(images, block)
    sigma = np.float32(np.sqrt(signal_variance(images, truth, block, radius) / snr))
    rng = np.random.default_rng([seed, 2])
    for lo in range(0, len(images), block):
        hi = min(len(images), lo + block)
        images[lo:hi] += sigma * rng.standard_normal((hi - lo,) + images.shape[1:], dtype=np.float32)
