"""The alignment engine: rotation + translation + mirror search, vectorised (docs/algorithm.md §3.7).

Every function here finds, for particle ``i`` and reference ``j``, the MTR transform ``T``
(see :mod:`r2d.transforms`) with ``T(particle_i) ≈ reference_j``: **the particle is brought
into the reference frame** (what EMAN2 stores in ``simmx`` and ``classmx``, and what an
aligner's ``xform.align2d`` means for ``this=particle, to=reference``).

How the search works (no Python loop over particles or angles):

1. Particles are resampled once onto a polar grid (rings ``r = 1 … n/2-1``, ``L`` angles
   from +x towards +y) by one sparse bilinear interpolation matrix, and Fourier transformed
   along the angle (``scipy.fft.rfft``, batched).
2. References are resampled onto the same polar grid **at every candidate shift** ``s`` on
   the integer grid (whole-pixel windows of the zero-padded reference) and, for the mirror
   search, mirrored, each normalised to zero mean and unit norm with area weights ``r``, so
   a correlation value is a correlation coefficient over the disc.
3. For each angular frequency the particle–reference cross-power summed over rings is one
   complex matrix product (BLAS); an inverse transform along the angle (:func:`_angular_ifft`)
   gives the correlation as a function of the in-plane angle for all shifts, mirrors and references at once.
4. The best (shift, angle, mirror) is refined to sub-pixel/sub-sample precision by parabolic
   interpolation of the correlation peak.

Large shift ranges are searched as a tree (:func:`search`): steps 1–4 over the whole range
on Fourier-downsampled images (:func:`coarse_factor`), then at every factor of two up to the
full images all angles and the shifts within ``LOCAL_RADIUS`` px of the previous level's
answer, for the kept mirror, with every pair's particle shifted by that answer (whole pixels
by a circular gather, the rest, in quarter pixels, as an offset of the polar sampling points;
:func:`_local_level`).

Every value computed for a pair depends only on its particle and reference, never on the
other pairs in the call (sums run along axes that do not mix images; matrix products go
through :mod:`r2d.stable`), so chunked runs are bit-identical to unchunked ones.

Rotating the particle by ``alpha`` moves polar sample ``θ+alpha`` to ``θ``, so a correlation peak at
angular lag ``τ`` gives ``alpha = τ·360/L``; the shifted reference ``ref(p + s)`` matched by
the rotated particle gives translation ``t = s``; a mirrored reference sampled at
``M(p + s)`` gives the mirror flag.

Where the code is:

* :mod:`r2d.align.polar`: steps 1–2, the polar grid (:func:`polar_matrix`), the normalised polar
  spectra of references at every shift (:func:`polar_ft`) and of shifted particles (``_spectra``);
* :mod:`r2d.align.correlate`: steps 3–4, the correlation products (``_correlate``), the angular
  synthesis (:func:`_angular_ifft`) and the peak with its sub-pixel fit (``_peaks``);
* :mod:`r2d.align.bands`: the angular frequencies a correlation keeps (:func:`angular_band`,
  per reference ``_ref_bands``, :func:`coarse_band`);
* :mod:`r2d.align.tree`: the search itself (:func:`search`): one exhaustive level on a shift grid
  (``_grid_search``), the tree's coarse level and finer local levels (``_local_level``), pruning;
* :mod:`r2d.align.refinement`: the second-stage aligner ``refine`` (:func:`refine`);
* :mod:`r2d.align.aligners`: the EMAN2-named aligners (:func:`align`, :class:`Alignment`,
  :func:`default_maxshift`, :func:`tree_reach`) and scoring (:func:`score_pairs`).

This package re-exports their public names (and ``_angular_ifft``, which the tests use). The
tuning constants (``SUBPIXEL_STEP``, ``SYNTHESIS_MAX``, ``LOCAL_RADIUS``, ``CACHE_BYTES``,
``BAND_STEP``, ``PRUNE_TO``) are read from the module that defines them: to change one at run
time, set it there (e.g. ``r2d.align.tree.CACHE_BYTES``), not on this package.
"""

from __future__ import annotations

from r2d.align.aligners import Alignment, _search_kwargs, align, default_maxshift, score_pairs, tree_reach
from r2d.align.bands import BAND_STEP, angular_band, coarse_band
from r2d.align.correlate import SYNTHESIS_MAX, _angular_ifft
from r2d.align.polar import SUBPIXEL_STEP, n_angles, polar_ft, polar_matrix, shift_grid
from r2d.align.refinement import refine
from r2d.align.tree import CACHE_BYTES, LOCAL_RADIUS, PRUNE_TO, coarse_factor, search

__all__ = [
    "Alignment", "align", "default_maxshift", "score_pairs", "tree_reach", "refine", "search",
    "coarse_factor", "angular_band", "coarse_band", "n_angles", "polar_ft", "polar_matrix", "shift_grid",
    "SUBPIXEL_STEP", "SYNTHESIS_MAX", "LOCAL_RADIUS", "CACHE_BYTES", "BAND_STEP", "PRUNE_TO",
]
