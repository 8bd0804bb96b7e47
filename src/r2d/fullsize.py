"""Full-size class averages from known transforms (``classes_final``, docs/algorithm.md §1.7).

The iterations run on the working stack (:mod:`r2d.working`); the averages users look at and
export are made once more from the original particles, at their own box and pixel size,
with the last iteration's classes and transforms: no search, one interpolation per member.
A transform measured on the working stack holds for the input with its shifts times
``scale`` (input px per working px): the Fourier crop keeps the rotation centre, so
rotation and mirror are unchanged.
"""

from __future__ import annotations

import logging

import numpy as np

from r2d import transforms as tf
from r2d.average import ClassAverages, _members, _result, _score_stats
from r2d.averagers import Accumulator
from r2d.ctf import ParticleCTF
from r2d.io import image_block
from r2d.options import Option, parse
from r2d.prepared import normalize_particles, usable_ctf

log = logging.getLogger(__name__)


def fixed_averages(particles, label: np.ndarray, used: np.ndarray, transforms, score: np.ndarray, *,
                   scale: float = 1.0, averager: str | Option = "ctf.weight.autofilt",
                   normproc: str | Option | None = "normalize.edgemean", ctf: ParticleCTF | None = None,
                   apix: float | None = None, workers: int = 1, block: int | None = None,
                   n_classes: int | None = None, mask_radius: float | None = None) -> ClassAverages:
    """Class averages of ``particles`` (N, n, n; an array or row-indexable, e.g.
    :class:`r2d.io.ParticleRows`, read in blocks of ``block`` rows, default 64 MiB) with the
    members' transforms given.

    ``label`` (N,) int class (−1 = in none), ``used`` (N,) bool (the members to average: kept by
    classkeep), ``transforms`` ``(alpha, tx, ty, mirror)`` four (N,) arrays (particle → average,
    MTR convention of :mod:`r2d.transforms`, shifts in the pixels of the images they were
    measured on), ``score`` (N,) float (carried into the result). Shifts are multiplied by
    ``scale`` (pixels of ``particles`` per pixel of the measurement). ``averager``,
    ``normproc``, ``ctf`` (one entry per particle, at ``apix``) as in
    :func:`r2d.average.class_averages`, ``mask_radius`` (px) the background of
    ``normalize.edgemean`` as there; the result has the same fields (half-set FSC and
    resolution from these particles; ``qual`` the mean and σ of ``score`` per class) and its
    transforms in the pixels of ``particles``.
    """
    label = np.asarray(label, dtype=np.int64)
    N, n = len(particles), particles.shape[-1]
    averager = parse(averager, "averager") if not isinstance(averager, Option) else averager
    norm = parse(normproc, "normalizer") if isinstance(normproc, str) else normproc  # "None" -> None
    K = max(int(label.max(initial=-1)) + 1, n_classes or 0)
    m = _members(label, K, None)
    alpha, tx, ty, mirror = (np.asarray(v, dtype=np.float64) for v in transforms)
    final = (alpha, tx * scale, ty * scale, mirror)
    use = np.asarray(used, dtype=bool) & m.valid
    ctf = usable_ctf(averager, ctf, N)
    acc = Accumulator(n, m.lab, use, K, averager, ctf=ctf, workers=workers)
    rows_used = np.flatnonzero(use)
    block = block or image_block(n)
    for lo in range(0, len(rows_used), block):
        rows = rows_used[lo:lo + block]
        X = normalize_particles(np.asarray(particles[rows], dtype=np.float32), norm, mask_radius)
        acc.add(rows, tf.transform(X, *(f[rows] for f in final), workers=workers), alpha[rows], mirror[rows])
        log.info("full-size averages: %d of %d members", min(lo + block, len(rows_used)), len(rows_used))
    avgs, halves = acc.finish(return_halves=True)
    score = np.where(m.valid, np.asarray(score, dtype=np.float64), 0.0)
    qual, qual_sigma = _score_stats(m, score)
    return _result(m, avgs, halves, final, use, score, qual, qual_sigma, apix, ctf_corrected=acc.ctf is not None)
