"""The similarity matrix (step 7, EMAN2's ``e2simmx.py``; docs/algorithm.md §3.7, §3.10): every
particle aligned to every reference and scored.

The matrices, each ``(N, A)`` float32 (row = particle, column = reference): ``score`` (the
comparator of the particle against the aligned reference, lower is better) and ``dx, dy,
dalpha, mirror``, the transform that brings the **particle into the reference frame**
(``T(particle) ≈ reference``, EMAN2's MTR convention, degrees and pixels).

Particles and references are matched-filtered by the stack's radial ``weight``
(:func:`r2d.transforms.spectral_snr_weight`) for the search and the score. References with
σ = 0 can never be the best match: their column keeps score +inf and becomes ``NO_MATCH``
(EMAN2 quirk fixed: not -1e38), as does every other non-finite score of a searched particle
(pairs pruned by ``candidates``); particles never searched (excluded, unreadable) keep +inf.
With ``center``, the references are centred (``xform.center``) for the search, so a small
``maxshift`` suffices against averages that drifted off-centre, and the stored transforms
still bring the particles into the references' own frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from r2d import transforms as tf
from r2d.align import align
from r2d.centering import center_shift

#: the matrices, in the order they are stored
MATRICES = ("dx", "dy", "dalpha", "mirror", "score")
#: score of a searched particle against a reference it cannot match (σ = 0, or pruned)
NO_MATCH = 1e24


@dataclass(frozen=True)
class References:
    """References prepared for the search (:func:`prepare_references`): ``refs`` (A, n, n)
    float32, centred when ``centred`` and filtered; ``good`` (A,) bool (σ > 0 before either, the
    columns searched); ``ptcl_repr`` (A,) float64 (particles behind each reference, for the
    comparators that use it); ``cx, cy`` (A,) int the centring shifts (zeros without) and
    ``centred`` whether they were centred."""

    refs: np.ndarray
    good: np.ndarray
    ptcl_repr: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    centred: bool


def prepare_references(refs: np.ndarray, ptcl_repr=None, weight: np.ndarray | None = None, *,
                       center: bool = False, mask: np.ndarray | None = None) -> References:
    """:class:`References` of ``refs`` (A, n, n): centred (``center``), then filtered by the radial
    ``weight`` (none when None) and multiplied by the particle ``mask`` ((n, n), none when None);
    ``ptcl_repr`` (A,) (default zeros)."""
    A = len(refs)
    good = refs.reshape(A, -1).std(axis=1) > 0
    repr_ = np.zeros(A) if ptcl_repr is None else np.asarray(ptcl_repr, dtype=np.float64)
    cx = cy = np.zeros(A, dtype=int)
    if center:
        cx, cy = center_shift(refs, "xform.center")
        refs = tf.integer_shift(refs, cx, cy)
    if weight is not None:
        refs = tf.radial_filter(refs, weight)
    if mask is not None:
        refs = refs * mask
    return References(refs, good, repr_, cx, cy, bool(center))


def align_block(parts: np.ndarray, refs: References, *, weight: np.ndarray | None = None,
                mask: np.ndarray | None = None, aligner="rotate_translate_tree", aligncmp="ccc", ralign=None, raligncmp="dot", cmp="ccc",
                shrink: int = 0, candidates: int | None = None, apix: float | None = None,
                workers: int = 1) -> dict[str, np.ndarray]:
    """One block of particles ``parts`` (b, n, n) against the searched references (``refs.good``,
    A' of them): the matrices of :data:`MATRICES`, each (b, A') (transforms float64, ``score``
    as the comparator gives it), into the references' own frame. ``weight``: the radial filter
    of the particles and ``mask`` the particle mask (as :func:`prepare_references` got). The
    options are those of :func:`r2d.align.align` (EMAN2 names)."""
    if weight is not None:
        parts = tf.radial_filter(parts, weight, workers=workers)
    if mask is not None:
        parts = parts * mask
    good = refs.good
    a = align(parts, refs.refs[good], aligner, aligncmp, ralign=ralign, raligncmp=raligncmp,
              shrink=shrink, apix=apix, candidates=candidates, ref_ptcl_repr=refs.ptcl_repr[good], workers=workers)
    cols = np.flatnonzero(good)
    alpha, tx, ty, mirror = a.params()
    if refs.centred:  # T = shift(-c) ∘ T_centred: into the given references' frame
        alpha, tx, ty, mirror = tf.compose((alpha, tx, ty, mirror), (0.0, -refs.cx[cols], -refs.cy[cols], 0.0))
        alpha, tx, ty = (np.where(np.isneginf(a.corr), 0.0, v) for v in (alpha, tx, ty))
    return {"score": a.score, "dx": tx, "dy": ty, "dalpha": alpha, "mirror": mirror}


def simmx_blocks(blocks: Iterable[tuple[np.ndarray, np.ndarray]], refs: np.ndarray, n_rows: int, *,
                 ptcl_repr=None, weight: np.ndarray | None = None, center: bool = False,
                 mask: np.ndarray | None = None, **options) -> dict[str, np.ndarray]:
    """The matrices (:data:`MATRICES`, each ``(n_rows, A)`` float32) of particles given block by
    block: ``blocks`` yields ``(rows, parts)``, the rows (b,) ints of the matrices and the
    particles (b, n, n) float32; rows never given keep score +inf and a zero transform.

    ``refs`` (A, n, n) float32 with ``ptcl_repr`` (A,) (default zeros); ``weight``: the radial
    matched filter of particles and references (none when None); ``center``: centre the
    references for the search; ``mask`` (n, n): the particle mask of both (the ``maskdiameter``
    disc, :func:`r2d.transforms.soft_circle`; none when None); ``options``: :func:`align_block`'s (``aligner``, ``aligncmp``,
    ``ralign``, ``raligncmp``, ``cmp``, ``shrink``, ``candidates``, ``apix``, ``workers``).
    """
    A = len(refs)
    out = {k: np.zeros((n_rows, A), dtype=np.float32) for k in ("dx", "dy", "dalpha", "mirror")}
    out["score"] = np.full((n_rows, A), np.inf, dtype=np.float32)
    searched = np.zeros(n_rows, dtype=bool)
    prepared = prepare_references(refs, ptcl_repr, weight, center=center, mask=mask)
    cols = np.flatnonzero(prepared.good)
    for rows, parts in blocks:
        found = align_block(parts, prepared, weight=weight, mask=mask, **options)
        for key in ("score", "dx", "dy", "dalpha", "mirror"):
            out[key][np.ix_(rows, cols)] = found[key]
        searched[rows] = True
    out["score"] = np.where(np.isfinite(out["score"]) | ~searched[:, None], out["score"], NO_MATCH)
    return out


def simmx(particles: np.ndarray, refs: np.ndarray, **kwargs) -> dict[str, np.ndarray]:
    """The matrices (:data:`MATRICES`, each (N, A) float32) of ``particles`` (N, n, n) float32
    against ``refs`` (A, n, n), all in one block; keyword arguments as :func:`simmx_blocks`."""
    return simmx_blocks([(np.arange(len(particles)), particles)], refs, len(particles), **kwargs)
