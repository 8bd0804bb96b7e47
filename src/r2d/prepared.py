"""The prepared particles of class averaging: phase-flipped in their own frame and filtered
once, then kept in memory or, when they do not fit in one block, in an anonymous temporary
file read back block by block (memory stays about one block, whatever the class sizes)."""

from __future__ import annotations

import logging

import numpy as np
import scipy.fft as sfft

from r2d import transforms as tf
from r2d.averagers import member_batch
from r2d.ctf import ParticleCTF
from r2d.masks import particle_mask
from r2d.options import Option, parse

log = logging.getLogger(__name__)


class Prepared:
    """Blocks of prepared images of ``rows`` (in order, ``block`` rows each), computed by
    ``make(rows) -> tuple of (b, *shape) arrays`` on the first pass through :meth:`blocks`
    and read back afterwards: kept in memory when ``rows`` fit in one block, else written
    (float32) to an anonymous temporary file in ``$TMPDIR`` (gone when closed, also when
    the process dies) and read one block at a time, so memory stays about one block."""

    def __init__(self, rows, block, make, shape):
        self.rows, self.block, self.make, self.shape = np.asarray(rows), int(block), make, tuple(shape)
        self.mem = None
        self.file = None
        self.count = 0  # arrays per block; set once every block has been written

    def blocks(self):
        n_px = int(np.prod(self.shape))
        for lo in range(0, len(self.rows), self.block):
            rows = self.rows[lo:lo + self.block]
            if self.mem is not None:
                yield rows, self.mem
            elif self.count:
                out = []
                for k in range(self.count):
                    self.file.seek(4 * n_px * (self.count * lo + k * len(rows)))
                    a = np.fromfile(self.file, dtype=np.float32, count=len(rows) * n_px)
                    out.append(a.reshape((len(rows),) + self.shape))
                yield rows, tuple(out)
            else:
                arrays = tuple(np.ascontiguousarray(a, dtype=np.float32) for a in self.make(rows))
                if len(rows) == len(self.rows):
                    self.mem = arrays
                else:
                    if self.file is None:
                        import tempfile

                        self.file = tempfile.TemporaryFile(prefix="r2d-average-")
                    self.file.seek(4 * n_px * len(arrays) * lo)
                    for a in arrays:
                        a.tofile(self.file)
                    if lo + self.block >= len(self.rows):
                        self.count = len(arrays)  # every block written: read back from now on
                yield rows, arrays

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def flip_and_filter(images: np.ndarray, ctf: ParticleCTF | None, weight: np.ndarray | None, *, workers: int = 1,
                     batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(Xc, Xs)``, each ``(N, n, n)`` float32: ``Xc`` the images phase-flipped in their own
    frame (Fourier coefficients times ``sign(c)``: the sign of the CTF for raw images, unchanged
    for phase-flipped or premultiplied ones; the images themselves without ``ctf``), ``Xs``
    those filtered by the radial ``weight`` (:func:`r2d.transforms.radial_filter`; ``Xc`` itself
    without ``weight``); one forward FFT per image for both."""
    images = np.asarray(images, dtype=np.float32)
    if ctf is None:
        return images, images if weight is None else tf.radial_filter(images, weight, workers=workers)
    N, n, _ = images.shape
    H = None if weight is None else tf.radial_weight_grid(n, weight)
    Xc = np.empty_like(images)
    Xs = Xc if H is None else np.empty_like(images)
    batch = batch or member_batch(n)
    for lo in range(0, N, batch):
        sel = np.arange(lo, min(N, lo + batch))
        c, _ = ctf.take(sel).wiener_terms(n)
        F = sfft.rfft2(images[sel], workers=workers)
        F *= np.sign(c)
        Xc[sel] = sfft.irfft2(F, s=(n, n), workers=workers)
        if H is not None:
            F *= H
            Xs[sel] = sfft.irfft2(F, s=(n, n), workers=workers)
    return Xc, Xs


def normalize_particles(P: np.ndarray, norm: Option | None, mask_radius: float | None = None) -> np.ndarray:
    """Particles ``P`` (b, n, n) normalised by ``norm`` (``classnormproc``; None: as they are), the
    background of ``normalize.edgemean`` outside ``mask_radius`` px when given."""
    if norm is None:
        return P
    kw = {"radius": norm.get("radius")} if "radius" in norm.params else {}
    if norm.name == "normalize.edgemean":
        kw["mask_radius"] = mask_radius
    return tf.normalize(P, norm.name, **kw)


def search_images(particles: np.ndarray, ctf: ParticleCTF | None, *, norm: Option | None,
                  weight: np.ndarray | None, mask: np.ndarray | None = None, mask_radius: float | None = None,
                  workers: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, Xc, Xs)`` of ``particles`` (b, n, n), each (b, n, n) float32: normalised by ``norm``
    (:func:`normalize_particles`, background outside ``mask_radius``), those phase-flipped in
    their own frame with their ``ctf`` (:func:`flip_and_filter`), and those filtered by the radial
    ``weight`` and multiplied by ``mask`` ((n, n) or None): the images that class averaging
    averages, bootstraps from and aligns."""
    X = normalize_particles(np.asarray(particles, dtype=np.float32), norm, mask_radius)
    Xc, Xs = flip_and_filter(X, ctf, weight, workers=workers)
    if mask is not None:
        Xs = Xs * mask
    return X, Xc, Xs


def search_view(particles, *, normproc: str | Option | None = "normalize.edgemean",
                averager: str | Option = "ctf.weight.autofilt", ctf: ParticleCTF | None = None,
                search_weight: np.ndarray | None = None, mask_radius: float | None = None, workers: int = 1,
                **_other):
    """The function ``rows`` → search images ``(b, n, n)`` float32 of ``particles[rows]`` as
    :func:`class_averages` with the same options aligns them (normalised, phase-flipped in
    their own frame for a ``ctf.*`` averager, matched-filtered, masked); other options are
    ignored."""
    norm = parse(normproc, "normalizer") if not isinstance(normproc, Option) else normproc
    averager = parse(averager, "averager") if not isinstance(averager, Option) else averager
    ctf = usable_ctf(averager, ctf, len(particles), quiet=True)
    mask = None if mask_radius is None else particle_mask(particles.shape[-1], 2 * mask_radius, 1.0)[0]

    def images(rows):
        return search_images(particles[rows], None if ctf is None else ctf.take(rows), norm=norm,
                             weight=search_weight, mask=mask, mask_radius=mask_radius, workers=workers)[2]

    return images


def usable_ctf(averager: Option, ctf: ParticleCTF | None, N: int, quiet: bool = False) -> ParticleCTF | None:
    """The CTF the class averaging uses: ``ctf`` (one entry per particle, N) for a ``ctf.*``
    averager, else None (logged when a ``ctf.*`` averager has none, unless ``quiet``)."""
    if not averager.name.startswith("ctf."):
        return None
    if ctf is not None and len(ctf) != N:
        raise ValueError(f"{len(ctf)} CTF entries for {N} particles")
    if quiet:
        return ctf
    if ctf is None:
        log.warning("averager %s: no CTF parameters, so no CTF correction: %s", averager.name,
                    "averaging as 'mean' with the automatic half-set FSC low-pass (EMAN2 without CTF)"
                    if averager.name == "ctf.weight.autofilt" else "averaging as 'mean'")
    else:
        log.info("averager %s: CTF-weighted (%d of %d particles phase-flipped, %d premultiplied)",
                 averager.name, int(ctf.phase_flipped.sum()), N, int(ctf.premultiplied.sum()))
    return ctf
