"""Iterative class averaging, as ``e2classaverage.py`` does it (docs/algorithm.md §3.8, §3.9, §3.11).

All classes are processed together: every alignment pass is one pairwise call of the
alignment engine (particle i against the reference of its class), and averages are sums
by sparse matrix products, so nothing loops over particles.

Stored transforms are ``T(particle) ≈ class average`` (:mod:`r2d.transforms` convention).
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass

import numpy as np

from r2d import transforms as tf
from r2d.io import chunk_index, image_block
from r2d.align import align
from r2d.centering import center_shift
from r2d.cmp import compare
from r2d.ctf import ParticleCTF
from r2d.averagers import Accumulator
from r2d.fsc import fsc_resolution
from r2d.masks import particle_mask
from r2d.options import Option, parse
from r2d.prepared import Prepared, search_images, usable_ctf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassAverages:
    """Result of :func:`class_averages`.

    averages : (K', n, n) float32, one per non-empty class, in increasing class number.
    class_ids : (K',) int, class number (as in classmx) of each average.

    Per particle (N,), in input order: ``label`` (int class number, −1 = not classified),
    ``used`` (bool; in the final average, i.e. kept by classkeep), ``alpha, tx, ty, mirror``
    (float64, final particle → average transform in the MTR convention of
    :mod:`r2d.transforms`; degrees, pixels, 0/1), ``score`` (float64, classcmp of the last
    pass against the class reference, lower is better; 0 for unclassified particles).

    Per class (K',): ``ptcl_repr`` (int, particles averaged = kept), ``n_excluded`` (int,
    members left out by classkeep), ``qual``/``qual_sigma`` (mean and σ of all member scores,
    EMAN2's ``class_ptcl_qual(_sigma)``), ``mean_score`` (mean score of the kept members),
    ``fsc`` ((K', n//2+1) float64, FSC of the even/odd half-set averages per Fourier ring),
    ``resolution`` (float64, Å — pixels without ``apix`` — where ``fsc`` falls below 0.143;
    NaN with fewer than 2 kept members). ``ctf_corrected``: the averager applied the CTF.
    """

    averages: np.ndarray
    class_ids: np.ndarray
    label: np.ndarray
    used: np.ndarray
    alpha: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    mirror: np.ndarray
    score: np.ndarray
    ptcl_repr: np.ndarray
    qual: np.ndarray
    qual_sigma: np.ndarray
    n_excluded: np.ndarray | None = None
    mean_score: np.ndarray | None = None
    fsc: np.ndarray | None = None
    resolution: np.ndarray | None = None
    ctf_corrected: bool = False

    def headers(self) -> list[dict]:
        """EMAN2-style per-average header dicts.

        EMAN2 fields: ``ptcl_repr``, ``class_ptcl_idxs`` (members averaged),
        ``exc_class_ptcl_idxs`` (members excluded, as EMAN2 records them with ``--storebad``),
        ``class_ptcl_qual(_sigma)``. r2d fields: ``class_id``, ``n_kept`` (= ptcl_repr),
        ``n_excluded``, ``mean_score`` (kept members), ``resolution`` (Å, half-set FSC = 0.143),
        ``fsc_half`` (the half-set FSC per ring 0 … n/2), ``ctf_corrected``. Indices are rows of
        the particle array given to :func:`class_averages`.
        """
        out = []
        for k, cid in enumerate(self.class_ids):
            members = np.flatnonzero(self.label == cid)
            h = {
                "class_id": int(cid),
                "ptcl_repr": int(self.ptcl_repr[k]),
                "class_ptcl_idxs": members[self.used[members]].astype(np.int64),
                "exc_class_ptcl_idxs": members[~self.used[members]].astype(np.int64),
                "class_ptcl_qual": float(self.qual[k]),
                "class_ptcl_qual_sigma": float(self.qual_sigma[k]),
                "n_kept": int(self.ptcl_repr[k]),
            }
            if self.n_excluded is not None:
                h["n_excluded"] = int(self.n_excluded[k])
            if self.mean_score is not None:
                h["mean_score"] = float(self.mean_score[k])
            if self.resolution is not None:
                h["resolution"] = float(self.resolution[k])
            if self.fsc is not None:
                h["fsc_half"] = self.fsc[k].astype(np.float32)
            h["ctf_corrected"] = bool(self.ctf_corrected)
            out.append(h)
        return out


# ----------------------------------------------------------------------------------------
# class chunks


def chunk_label(label: np.ndarray, chunk: str) -> np.ndarray:
    """``label`` (N,) with the members of every class outside chunk ``chunk`` (``"i-of-k"``,
    :func:`class_chunks`) set to −1: what one class-averaging chunk job averages."""
    i, k = chunk_index(chunk)
    mine = class_chunks(label, k)[np.maximum(label, 0)] == i - 1
    return np.where(mine, label, -1)


def class_chunks(label: np.ndarray, k: int) -> np.ndarray:
    """Chunk (``0 … k-1``) of every class ``0 … max(label)`` for class averaging in ``k`` jobs:
    classes by decreasing member count (ties: lower class first), each to the chunk with the
    fewest members so far (ties: lower chunk). Balances the work; depends only on ``label``
    (``(N,)`` ints, −1 = in no class), so every chunk job computes the same split."""
    label = np.asarray(label)
    counts = np.bincount(label[label >= 0], minlength=int(label.max(initial=-1)) + 1)
    out = np.zeros(len(counts), dtype=np.int64)
    heap = [(0, c) for c in range(k)]
    for cls in np.lexsort((np.arange(len(counts)), -counts)):
        load, c = heapq.heappop(heap)
        out[cls] = c
        heapq.heappush(heap, (load + int(counts[cls]), c))
    return out


# ----------------------------------------------------------------------------------------
# working references


def _shape_reference(refs: np.ndarray, g: int, automask: bool) -> np.ndarray:
    """Working reference: circle-mean normalise at ``n/2−g`` and soft-mask (or auto-mask)."""
    n = refs.shape[-1]
    refs = tf.normalize(refs, "normalize.circlemean", radius=n / 2 - g)
    if automask:
        from r2d.masks import automask2d

        return automask2d(refs, nshells=g - 2, nshellsgauss=g)
    return refs * tf.gaussian_mask(n, n / 2 - g, g / 1.3)


# ----------------------------------------------------------------------------------------
# the iterative procedure


def _keep_flags(score, label, K, keep, keepsig):
    """``use_i`` from the previous pass's scores, per class (lower score is better)."""
    N = len(score)
    use = np.zeros(N, dtype=bool)
    ok = label >= 0
    for k in range(K):  # loop over classes only
        idx = np.flatnonzero(label == k)
        if len(idx) == 0:
            continue
        s = score[idx]
        if keepsig:
            thr = s.mean() + keep * s.std()
        else:
            srt = np.sort(s)
            pos = int(np.floor(len(s) * keep))
            thr = srt[pos] if pos < len(s) else np.inf
        u = s <= thr
        if not u.any():
            u[np.argmin(s)] = True
        use[idx] = u
    return use & ok


def class_averages(particles: np.ndarray, label: np.ndarray, *, iterations: int = 5, keep: float = 0.85,
                   keepsig: bool = False, aligner: str | Option = "rotate_translate_tree",
                   aligncmp: str | Option = "ccc", ralign=None, raligncmp=None, cmp: str | Option = "ccc",
                   averager: str | Option = "ctf.weight.autofilt", normproc: str | Option | None = "normalize.edgemean",
                   center: str | None = "xform.center", automask: bool = False, maxshift: float | None = None,
                   apix: float | None = None, workers: int = 1,
                   search_weight: np.ndarray | None = None, ctf: ParticleCTF | None = None,
                   block: int | None = None, local: bool = True, prior=None,
                   n_classes: int | None = None, mask_radius: float | None = None,
                   eligible: np.ndarray | None = None, start_order: np.ndarray | None = None) -> ClassAverages:
    """Class averages of ``particles`` (N, n, n) for the classes in ``label`` (N,) int
    (−1 = in no class), e2classaverage-style (docs/algorithm.md §3.11).

    ``particles`` is an array or anything indexable by an array of rows with a ``shape``
    (e.g. :class:`r2d.io.ParticleRows`, which reads them from the stack): every pass goes
    through the particles in blocks of ``block`` rows (default: 64 MiB of float32
    images, :func:`r2d.io.image_block`), so memory is one block plus the class sums, whatever ``N``.

    Per class: bootstrap a reference from its members (aligned in doubling blocks to the
    running sum: first member, then the next 1, 2, 4, …), centre it, then ``iterations + 1``
    passes of align-every-member → score with ``cmp`` → average the kept ones (exclusion
    by ``keep``/``keepsig`` from the previous pass's scores; excluded members can come back),
    with the working reference normalised and masked; finally the reference is centred, the
    transforms composed with the centring shift, and the raw (normalised) particles
    re-averaged with one interpolation each. With plain ``ccc`` as both ``aligncmp`` and ``cmp`` and
    no ``ralign``, a member's score is the search's own correlation coefficient over the disc
    (as e2simmx scores ccc; no second resampling of every member). ``maxshift`` is appended to the aligner as
    e2refine2d does (``n//3`` when None). ``search_weight`` (radial, see
    :func:`r2d.transforms.spectral_snr_weight`) filters the particles and references used for
    alignment and scoring only (r2d addition against reference bias); averages use the
    unfiltered particles.

    Passes after the first search each member only locally (``local``): all angles, both
    mirrors (for a flipping aligner) and the shifts within ``LOCAL_RADIUS`` px of its previous
    pass's particle offset (:func:`r2d.align.search` with ``prior``); the reference changes
    little from pass to pass.
    ``prior`` ``(alpha, tx, ty, mirror)`` (N,) each, NaN where unknown: every member's
    transform into one common frame per class (classmx of the multi-reference assignment:
    into the previous average of its class). Classes whose members all have one skip the
    bootstrap: the first reference is the sum of the members moved by their prior, and the first
    pass is a local search around it too.

    ``mask_radius`` (px, the ``maskdiameter`` disc, :func:`r2d.masks.particle_mask`): the search
    and scoring images of particles and references are multiplied by that mask, and
    ``normalize.edgemean`` takes its mean from the background outside it; None: no mask.

    ``eligible`` (N,) bool (None: all): members with False (classmx weight 0) are aligned and
    scored with their class like the others but never averaged in (unless none of the class
    is); ``keep`` counts among the eligible members only.

    ``start_order`` (N,) float (None: particle order): the bootstrap takes each class's members
    in increasing ``start_order`` instead (a stability repeat's random start, :mod:`r2d.stability`).

    ``n_classes``: at least this many classes (default ``max(label) + 1``; a chunk of the classes
    gives the whole set's count, so its arrays have the same shape as in an unchunked run).
    Every number of a class depends only on its members, so averaging the classes in chunks
    (:func:`class_chunks`; the other classes' members labelled −1) gives bit-identical classes.

    ``ctf`` (:class:`r2d.ctf.ParticleCTF`, one entry per particle, needs ``apix``): used by the
    ``ctf.*`` averagers, which weight every aligned member by its CTF *in the class frame*
    (the astigmatism angle follows the member's rotation and mirror). With CTF, the alignment
    and scoring images (and the bootstrap sums) are the particles phase-flipped in their own
    frame (raw data only; phase-flipped and premultiplied data are used as they are), so
    every frequency correlates with the same sign as the CTF-corrected reference. (Weighting
    them by |CTF| as well, a matched filter on top of ``search_weight``, gave worse classes
    on the 2,000-particle benchmark.) Without ``ctf`` a ``ctf.*`` averager logs that it averages
    without CTF correction. ``apix`` (Å/px) is also the unit of ``resolution``.
    """
    label = np.asarray(label, dtype=np.int64)
    N, n = len(particles), particles.shape[-1]
    aligner = parse(aligner, "aligner") if not isinstance(aligner, Option) else aligner
    averager = parse(averager, "averager") if not isinstance(averager, Option) else averager
    cmp = parse(cmp, "comparator") if not isinstance(cmp, Option) else cmp
    norm = parse(normproc, "normalizer") if not isinstance(normproc, Option) else normproc
    params = dict(aligner.params)
    params["maxshift"] = n // 3 if maxshift is None or maxshift < 0 else maxshift
    aligner = Option(aligner.name, params)
    K = max(int(label.max(initial=-1)) + 1, n_classes or 0)
    ctf = usable_ctf(averager, ctf, N)
    job = _Job(particles, norm=norm, ctf=ctf, search_weight=search_weight, aligner=aligner, aligncmp=aligncmp,
               ralign=ralign, raligncmp=raligncmp, cmp=cmp, apix=apix, block=block or image_block(n),
               workers=workers, mask_radius=mask_radius)
    m = _members(label, K, prior, eligible)
    sums, passes = _bootstrap(job, m, start_order)
    dx, dy = center_shift(sums, center)
    ref = _shape_reference(tf.integer_shift(sums, dx, dy), max(5, n // 16), False)
    par = _first_transforms(m, dx, dy)
    ref, use, score, qual, qual_sigma = _iterate(job, m, passes, ref, par, iterations=iterations, keep=keep,
                                                 keepsig=keepsig, local=local, averager=averager,
                                                 automask=automask)
    avgs, halves, final, used = _final_average(job, m, passes, ref, par, use, center, averager)
    return _result(m, avgs, halves, final, used, score, qual, qual_sigma, apix, ctf_corrected=ctf is not None)


class _Job:
    """The particles of one :func:`class_averages` call and how they are prepared, aligned and
    scored (the options as parsed there).

    ``particles`` (N, n, n), an array or row-indexable (see :func:`class_averages`), go
    through in blocks of ``block`` rows; when they fit in one block they are prepared once,
    for all passes (``whole``).
    """

    def __init__(self, particles, *, norm, ctf, search_weight, aligner, aligncmp, ralign, raligncmp, cmp, apix,
                 block, workers, mask_radius=None):
        self.particles, self.norm, self.ctf, self.search_weight = particles, norm, ctf, search_weight
        self.mask_radius = mask_radius
        self.mask = None if mask_radius is None else particle_mask(particles.shape[-1], 2 * mask_radius, 1.0)[0]
        self.aligner, self.aligncmp, self.raligncmp, self.cmp = aligner, aligncmp, raligncmp, cmp
        self.apix, self.block, self.workers = apix, block, workers
        self.N, self.n = len(particles), particles.shape[-1]
        self.whole = self.prepare(np.arange(self.N)) if self.N <= self.block else None
        if isinstance(ralign, str):
            ralign = parse(ralign, "aligner")  # "None" (the command line's) → None
        self.ralign = ralign
        # plain ccc for both the search and the score, no refinement: the search's own correlation
        # coefficient is the score (as e2simmx's ccc), without resampling every member again
        self.search_scored = (cmp.name == "ccc" and not cmp.params and ralign is None
                              and _plain_ccc(aligncmp))

    def prepare(self, rows):
        """Particles ``rows`` (b,): normalised (X), phase-flipped in their own frame (Xc, for the
        search and the bootstrap), and matched-filtered for the search (Xs); each (b, n, n) float32."""
        return search_images(self.particles[rows], None if self.ctf is None else self.ctf.take(rows),
                             norm=self.norm, weight=self.search_weight, mask=self.mask,
                             mask_radius=self.mask_radius, workers=self.workers)

    def images(self, rows):
        """:meth:`prepare` of ``rows`` (distinct, increasing), from ``whole`` when prepared once."""
        if self.whole is None:
            return self.prepare(rows)
        if len(rows) == self.N:
            return self.whole  # rows are distinct and increasing, so this is every row in order: no copies
        return tuple(v[rows] for v in self.whole)

    def blocks(self, rows):
        """``rows`` in blocks of ``block``."""
        for lo in range(0, len(rows), self.block):
            yield rows[lo:lo + self.block]

    def align(self, Xs, lab, refs, ref_repr=None, scored=True, prior=None, cache=None):
        """Align search images ``Xs`` (b, n, n) to ``refs[lab]`` (``refs`` (K, n, n), ``lab`` (b,);
        a local search around ``prior`` when given; ``cache`` kept across the blocks of one pass,
        see :func:`r2d.align.search`); return the :class:`r2d.align.Alignment` and the scores
        ((b,) float64, lower is better; None when not ``scored``)."""
        workers = self.workers
        frefs = refs if self.search_weight is None else tf.radial_filter(refs, self.search_weight, workers=workers)
        if self.mask is not None:
            frefs = frefs * self.mask
        a = align(Xs, frefs, self.aligner, self.aligncmp, pairs=lab, ralign=self.ralign, raligncmp=self.raligncmp,
                  apix=self.apix, prior=prior, cache=cache, workers=workers)
        if not scored:
            return a, None
        if self.search_scored:
            return a, a.score  # ccc from the search itself: the correlation coefficient over the disc
        moved_s = tf.transform(Xs, a.alpha, a.tx, a.ty, a.mirror, workers=workers)
        score = compare(moved_s, frefs[lab], self.cmp, apix=self.apix,
                        ptcl_repr=None if ref_repr is None else ref_repr[lab])
        return a, score


@dataclass
class _Members:
    """Class membership in one :func:`class_averages` call: ``lab`` (N,) int64 class (−1 = in
    none), ``valid`` (N,) bool (``lab >= 0``), ``K`` classes, ``counts`` (K,) int64 members per
    class, ``prior`` four (N,) float64 arrays ``(alpha, tx, ty, mirror)`` or None, and
    ``from_prior`` (N,) bool: the members of classes whose members all have a prior transform
    (they start from it, the others bootstrap); ``eligible`` (N,) bool: the members that may be
    averaged in."""

    lab: np.ndarray
    valid: np.ndarray
    K: int
    counts: np.ndarray
    prior: tuple | None
    from_prior: np.ndarray
    eligible: np.ndarray


def _members(label: np.ndarray, K: int, prior, eligible=None) -> _Members:
    """:class:`_Members` of ``label`` (N,) int64 with ``K`` classes, the optional ``prior``
    (four (N,) arrays, NaN where unknown) and ``eligible`` ((N,) bool; None: every member)."""
    N = len(label)
    lab = np.where(label >= 0, label, -1)
    valid = lab >= 0
    if prior is not None:
        prior = tuple(np.asarray(v, dtype=np.float64).reshape(N) for v in prior)
        known = valid & np.isfinite(np.stack(prior)).all(axis=0)
        by_prior = np.bincount(lab[valid & ~known], minlength=K) == 0
        from_prior = valid & by_prior[np.maximum(lab, 0)]
    else:
        from_prior = np.zeros(N, dtype=bool)
    eligible = valid.copy() if eligible is None else valid & np.asarray(eligible, dtype=bool).reshape(N)
    eligible |= valid & (np.bincount(lab[eligible], minlength=K) == 0)[np.maximum(lab, 0)]  # none: all
    return _Members(lab, valid, K, np.bincount(lab[valid], minlength=K), prior, from_prior, eligible)


def _class_rank(lab: np.ndarray, valid: np.ndarray, key=None) -> np.ndarray:
    """Rank (N,) int of each member within its class, in particle order or increasing ``key``
    (N,) (0 = first; −1 outside any class)."""
    N = len(lab)
    order = np.lexsort((np.arange(N), lab) if key is None else (np.arange(N), np.asarray(key), lab))
    ranked = lab[order]
    start = np.searchsorted(ranked, ranked, side="left")
    rank = np.full(N, -1)
    rank[order] = np.arange(N) - start
    rank[~valid] = -1
    return rank


def _bootstrap(job: _Job, m: _Members, order=None):
    """First class sums and the passes' images.

    Returns ``sums`` (K, n, n) float32 and the passes' images of every member (a
    :class:`r2d.prepared.Prepared` of ``(X, Xs)``, normalised and search images, (b, n, n) float32 per
    block). Classes that start from their prior sum their phase-flipped members moved by it
    (added as the passes' images are prepared); the others bootstrap from running sums of the
    phase-flipped members: the first member, then members ``2^k … 2^(k+1)-1`` aligned to the
    sum of those before.
    """
    n = job.n
    lab, from_prior, prior = m.lab, m.from_prior, m.prior
    boot = m.valid & ~from_prior
    rank = _class_rank(lab, m.valid, order)
    sums = np.zeros((m.K, n, n), np.float32)

    def make_pass(rows):
        """The passes' images (normalised X, search Xs) of ``rows``; on the way, the phase-flipped
        members that start from their prior are added, moved by it, to their class's first sum."""
        X, Xc, Xs = job.images(rows)
        f = from_prior[rows] & m.eligible[rows]
        if f.any():
            r = rows[f]
            np.add.at(sums, lab[r], tf.transform(Xc[f], *(p[r] for p in prior), workers=job.workers))
        return X, Xs

    # the passes' images, prepared once: in memory for one block, else spilled block by block to
    # an anonymous temporary file (memory stays one block)
    passes = Prepared(np.flatnonzero(m.valid), job.block, make_pass, (n, n))
    for rows in job.blocks(np.flatnonzero(boot & (rank == 0))):
        sums[lab[rows]] = job.images(rows)[1]
    if from_prior.any():
        for _ in passes.blocks():  # prepares every block once (and the prior sums)
            pass
    lo_r = 1
    while True:  # members 2^k … 2^(k+1)-1 of every class are aligned to the sums of those before
        sel = np.flatnonzero(boot & (rank >= lo_r) & (rank < 2 * lo_r))
        if len(sel) == 0:
            break
        delta = np.zeros_like(sums)
        for rows in job.blocks(sel):
            _, Xc, Xs = job.images(rows)
            a, _ = job.align(Xs, lab[rows], sums, scored=False)
            np.add.at(delta, lab[rows], tf.transform(Xc, *a.params(), workers=job.workers))
        sums += delta
        lo_r *= 2
    return sums, passes


def _first_transforms(m: _Members, dx: np.ndarray, dy: np.ndarray) -> list[np.ndarray]:
    """Transforms ``[alpha, tx, ty, mirror]`` (four (N,) float64) before the first pass: the prior
    carried into the centred first reference (class shifts ``dx, dy`` (K,) int) for the members
    that start from it, zeros for the others."""
    N = len(m.lab)
    par = [np.zeros(N) for _ in range(4)]
    if m.from_prior.any():  # first pass local around the prior, carried into the centred reference
        c = np.maximum(m.lab, 0)
        moved = tf.compose(m.prior, (np.zeros(N), dx[c].astype(float), dy[c].astype(float), np.zeros(N)))
        for p, v in zip(par, moved):
            p[m.from_prior] = v[m.from_prior]
    return par


def _member_quality(m: _Members, score: np.ndarray, keep: float, keepsig: bool):
    """From the last pass's ``score`` (N,) float64: ``use`` (N,) bool (kept by ``keep``/``keepsig``,
    :func:`_keep_flags`) and each class's mean and σ of its members' scores, (K,) float64 each."""
    use = _keep_flags(score, np.where(m.eligible, m.lab, -1), m.K, keep, keepsig)
    return (use, *_score_stats(m, score))


def _score_stats(m: _Members, score: np.ndarray):
    """Each class's mean and σ of its members' ``score`` (N,), (K,) float64 each."""
    lab, valid, K = m.lab, m.valid, m.K
    s = np.where(valid, score, 0.0)
    c = np.maximum(m.counts, 1)
    qual = np.bincount(lab[valid], s[valid], K) / c
    qual_sigma = np.sqrt(np.maximum(np.bincount(lab[valid], s[valid] ** 2, K) / c - qual**2, 0))
    return qual, qual_sigma


#: a class has converged when, from one pass to the next, at most this share of its members
#: (and never more than 2 changes of the kept set) moved further than :data:`SETTLED_PX`
SETTLED_SHARE = 0.02
#: px: how far a member may move between passes and still count as settled (the shift plus
#: the rotation's arc at a quarter of the box)
SETTLED_PX = 0.5


def _settled(m: _Members, n: int, before, after, use_before, use_after) -> np.ndarray:
    """(K,) bool: the classes whose members' transforms hardly moved from ``before`` to ``after``
    (four (N,) arrays each; images ``n`` px) and whose kept set ``use_*`` (N,) bool hardly changed (see
    :data:`SETTLED_SHARE`, :data:`SETTLED_PX`). A class's verdict depends on its members only."""
    lab, valid, K = m.lab, m.valid, m.K
    dalpha = np.abs((after[0] - before[0] + 180.0) % 360.0 - 180.0)
    arc = np.deg2rad(dalpha) * (0.25 * n)
    moved = (np.hypot(after[1] - before[1], after[2] - before[2]) + arc > SETTLED_PX) | (after[3] != before[3])
    n_moved = np.bincount(lab[valid & moved], minlength=K)
    n_kept = np.bincount(lab[valid & (use_before != use_after)], minlength=K)
    allowed = SETTLED_SHARE * m.counts
    return (n_moved <= allowed) & (n_kept <= np.maximum(2, allowed))


def _iterate(job: _Job, m: _Members, passes, ref, par, *, iterations, keep, keepsig, local, averager, automask):
    """Up to ``iterations + 1`` passes of align every member → score → average the kept ones.

    A class stops early, after its third pass or later, once a pass left it settled
    (:func:`_settled`): its members, reference and scores stay as that pass left them.
    ``ref`` (K, n, n) float32 the first working reference; ``par`` (four (N,) float64, updated in
    place) the members' transforms. Returns the last working reference, ``use`` (N,) bool (kept
    by the last pass's scores), ``score`` (N,) float64 (the last pass's) and ``qual``,
    ``qual_sigma`` (K,) float64.
    """
    N = job.N
    use = m.eligible.copy()
    score = np.zeros(N)
    qual = np.zeros(m.K)
    qual_sigma = np.ones(m.K)
    idx = np.flatnonzero(m.valid)
    active = m.counts > 0
    before = None
    for it in range(iterations + 2):
        if it > 0:
            last_use = use
            use, qual, qual_sigma = _member_quality(m, score, keep, keepsig)
            if it >= 3:
                active &= ~_settled(m, job.n, before, par, last_use, use)
        if it == iterations + 1 or not active.any():
            break
        # local search around the previous transform: after the first pass, and in the first
        # for members that start from their prior
        near = (m.from_prior if it == 0 else np.ones(N, dtype=bool)) if local else np.zeros(N, dtype=bool)
        before = [p.copy() for p in par]
        ref = _align_pass(job, m, passes, ref, par, score, use, near, averager, automask, active)
        log.info("class averaging pass %d/%d: mean score %.4f, %d of %d kept, %d of %d classes aligned", it + 1,
                 iterations + 1, float(score[idx].mean()) if len(idx) else 0.0, int(use.sum()),
                 int(m.valid.sum()), int(active.sum()), int((m.counts > 0).sum()))
    return ref, use, score, qual, qual_sigma


def _align_pass(job: _Job, m: _Members, passes, ref, par, score, use, near, averager, automask, active):
    """One pass: every member of the ``active`` (K,) bool classes aligned to its class's reference
    ``ref`` (K, n, n) float32 (a local search around ``par`` where ``near`` (N,) bool) and scored;
    ``par`` (four (N,) float64) and ``score`` (N,) float64 are updated in place. Returns the next
    working reference (K, n, n) float32: for the active classes, the average of the members in
    ``use`` (N,) bool, normalised and masked; the others' references as they were."""
    n = job.n
    acc = Accumulator(n, m.lab, use & active[np.maximum(m.lab, 0)], m.K, averager, ctf=job.ctf,
                      workers=job.workers)
    cache: dict = {}  # the reference's polar tables, for every block of this pass
    for rows, (X, Xs) in passes.blocks():
        on = active[m.lab[rows]]
        if not on.any():
            continue
        if not on.all():
            rows, X, Xs = rows[on], X[on], Xs[on]
        sc = np.empty(len(rows))
        params = [np.empty(len(rows)) for _ in range(4)]
        for part, is_local in ((near[rows], True), (~near[rows], False)):
            if not part.any():
                continue
            r = rows[part]
            a, s_ = job.align(Xs[part], m.lab[r], ref, m.counts,
                              prior=tuple(p[r] for p in par) if is_local else None, cache=cache)
            sc[part] = s_
            for q, v in zip(params, a.params()):
                q[part] = v
        score[rows] = sc
        for p, v in zip(par, params):
            p[rows] = v
        u = use[rows]  # only the members this pass averages are interpolated (the others add nothing)
        acc.add(rows[u], tf.transform(X[u], *(q[u] for q in params), workers=job.workers), params[0][u],
                params[3][u])
    new = _shape_reference(acc.finish(), max(5, n // 12), automask)
    return np.where(active[:, None, None], new, ref)


def _final_average(job: _Job, m: _Members, passes, ref, par, use, center, averager):
    """Centre the last reference ``ref`` (K, n, n), compose the members' transforms ``par`` with
    the centring shift and re-average the normalised particles with one interpolation each.

    Returns the averages (K, n, n) float32, their :class:`HalfSums`, the final transforms
    (four (N,) float64) and ``used`` (N,) bool (the members averaged)."""
    N = job.N
    lab, valid = m.lab, m.valid
    dx, dy = center_shift(ref, center)
    cshift = (np.zeros(N), np.where(valid, dx[np.maximum(lab, 0)], 0).astype(float),
              np.where(valid, dy[np.maximum(lab, 0)], 0).astype(float), np.zeros(N))
    final = tf.compose(tuple(par), cshift)
    used = use & valid
    acc = Accumulator(job.n, lab, used, m.K, averager, ctf=job.ctf, workers=job.workers)
    for rows, (X, _) in passes.blocks():
        keep_ = used[rows]
        rows, X = rows[keep_], X[keep_]
        acc.add(rows, tf.transform(X, *(f[rows] for f in final), workers=job.workers), final[0][rows], final[3][rows])
    passes.close()
    avgs, halves = acc.finish(return_halves=True)
    return avgs, halves, final, used


def _result(m: _Members, avgs, halves, final, used, score, qual, qual_sigma, apix, *,
            ctf_corrected: bool) -> ClassAverages:
    """:class:`ClassAverages` of the non-empty classes: the averages (K, n, n) float32 with their
    half-set FSC and resolution (:func:`r2d.fsc.fsc_resolution`; NaN with an empty half), the
    final transforms and scores (N,) float64, ``used`` (N,) bool, ``qual``/``qual_sigma`` (K,)."""
    lab, K, counts = m.lab, m.K, m.counts
    n = avgs.shape[-1]
    fsc = halves.fsc()
    resolution = fsc_resolution(fsc, n, apix)
    resolution[halves.count.min(axis=0) < 1] = np.nan
    nonempty = counts > 0
    ptcl_repr = np.bincount(lab[used], minlength=K)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(lab[used], score[used], K) / ptcl_repr
    return ClassAverages(
        averages=avgs[nonempty], class_ids=np.flatnonzero(nonempty), label=lab, used=used,
        alpha=final[0], tx=final[1], ty=final[2], mirror=final[3], score=score,
        ptcl_repr=ptcl_repr[nonempty], qual=qual[nonempty], qual_sigma=qual_sigma[nonempty],
        n_excluded=(counts - ptcl_repr)[nonempty], mean_score=mean_score[nonempty], fsc=fsc[nonempty],
        resolution=resolution[nonempty], ctf_corrected=ctf_corrected,
    )


def _plain_ccc(option) -> bool:
    opt = parse(option, "comparator") if isinstance(option, str) else option
    return opt.name == "ccc" and not opt.params
