"""Iterative class averaging, as ``e2classaverage.py`` does it (algorithm.md §3.8, §3.9, §3.11).

All classes are processed together: every alignment pass is one pairwise call of the
alignment engine (particle i against the reference of its class), and averages are sums
by sparse matrix products, so nothing loops over particles.

Stored transforms are ``T(particle) ≈ class average`` (:mod:`r2d.transforms` convention).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
import scipy.sparse as sp

from r2d import transforms as tf
from r2d.align import align
from r2d.cmp import compare
from r2d.options import Option, parse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassAverages:
    """Result of :func:`class_averages`.

    averages : (K', n, n) float32, one per non-empty class, in increasing class number.
    class_ids : (K',) class number (as in classmx) of each average.
    Per particle (N,): ``used`` (bool; in the final average), ``alpha, tx, ty, mirror``
    (final particle → average transform), ``score`` (classcmp of the last pass, lower is
    better), ``label`` (class number, −1 = not classified).
    Per class (K',): ``ptcl_repr`` (particles averaged), ``qual``/``qual_sigma`` (mean and σ
    of member scores).
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

    def headers(self) -> list[dict]:
        """EMAN2-style per-average header dicts (``ptcl_repr``, ``class_ptcl_idxs`` …)."""
        out = []
        for k, cid in enumerate(self.class_ids):
            members = np.flatnonzero(self.label == cid)
            out.append({
                "class_id": int(cid),
                "ptcl_repr": int(self.ptcl_repr[k]),
                "class_ptcl_idxs": members[self.used[members]].astype(np.int64),
                "exc_class_ptcl_idxs": members[~self.used[members]].astype(np.int64),
                "class_ptcl_qual": float(self.qual[k]),
                "class_ptcl_qual_sigma": float(self.qual_sigma[k]),
            })
        return out


# ----------------------------------------------------------------------------------------
# averagers


def _membership(label: np.ndarray, weight: np.ndarray, K: int) -> sp.csr_matrix:
    """Sparse (K, N) matrix with ``weight[i]`` at ``(label[i], i)`` (labels < 0 ignored)."""
    ok = (label >= 0) & (weight != 0)
    idx = np.flatnonzero(ok)
    return sp.csr_matrix((weight[ok].astype(np.float64), (label[ok], idx)), shape=(K, len(label)))


def average(images: np.ndarray, label: np.ndarray, use: np.ndarray, K: int, averager: Option) -> np.ndarray:
    """Average ``images[i]`` with ``use[i]`` into class ``label[i]``; ``(K, n, n)`` float32.

    ``mean``: pixel mean. ``median``: pixel median. ``ctf.weight.autofilt`` (no CTF data):
    members go alternately to two halves, ``h_e = ΣF_i/(0.1 + n_e)``, the half-set FSC per
    ring gives ``w = snr/(snr+1)`` with ``snr = 2·FSC/(1−FSC)``, output ``IFFT((h_0+h_1)·w)``
    (EMAN2's scale: about twice the mean). ``ctf.weight`` without CTF is the mean.
    """
    N, n, _ = images.shape
    flat = images.reshape(N, -1).astype(np.float64)
    use = np.asarray(use, dtype=bool)
    if averager.name == "median":
        out = np.zeros((K, n * n))
        for k in range(K):  # loop over classes; the median itself is vectorised over pixels
            sel = (label == k) & use
            if sel.any():
                out[k] = np.median(flat[sel], axis=0)
        return out.reshape(K, n, n).astype(np.float32)
    if averager.name in ("mean", "ctf.weight"):
        A = _membership(label, use.astype(np.float64), K)
        cnt = np.asarray(A.sum(axis=1)).ravel()
        cnt[cnt == 0] = 1
        return (np.asarray(A @ flat) / cnt[:, None]).reshape(K, n, n).astype(np.float32)
    if averager.name == "ctf.weight.autofilt":
        # half index: alternate among the used members of each class, in particle order
        half = np.zeros(N, dtype=np.int64)
        for_rank = np.where(use & (label >= 0), label, -1)
        order = np.lexsort((np.arange(N), for_rank))
        ranked = for_rank[order]
        start = np.searchsorted(ranked, ranked, side="left")
        half[order] = (np.arange(N) - start) % 2
        hs = []
        for e in (0, 1):
            A = _membership(label, (use & (half == e)).astype(np.float64), K)
            cnt = np.asarray(A.sum(axis=1)).ravel()
            hs.append(sfft.rfft2((np.asarray(A @ flat) / (0.1 + cnt[:, None])).reshape(K, n, n)))
        from r2d.cmp import frc_curve

        h0 = sfft.irfft2(hs[0], s=(n, n))
        h1 = sfft.irfft2(hs[1], s=(n, n))
        fsc, _ = frc_curve(h0, h1)
        fsc = np.clip(fsc, 0.001, 0.9999)
        snr = 2 * fsc / (1 - fsc)
        w = snr / (snr + 1)
        ring = np.floor(tf.freq_radius(n)).astype(np.int64)
        wk = np.where(ring[None] < w.shape[1], w[:, np.minimum(ring, w.shape[1] - 1)], 0.0)
        out = sfft.irfft2((hs[0] + hs[1]) * wk, s=(n, n))
        # a class with one member: the member itself (EMAN2)
        A = _membership(label, use.astype(np.float64), K)
        cnt = np.asarray(A.sum(axis=1)).ravel()
        single = cnt == 1
        if single.any():
            out[single] = (np.asarray(A @ flat)[single]).reshape(-1, n, n)
        return out.astype(np.float32)
    raise ValueError(f"unknown averager {averager.name!r}")


# ----------------------------------------------------------------------------------------
# centering and masks


def center_shift(images: np.ndarray, mode: str = "xform.center") -> tuple[np.ndarray, np.ndarray]:
    """Integer shifts ``(dx, dy)`` that centre each image (``nocenter`` → zeros).

    ``xform.center`` (simplified, algorithm.md §5.2 allows any robust integer centre of mass):
    high-pass, circle-mean normalise, soft-mask, square, low-pass, keep the brightest 10 % of
    pixels; the shift moves their value-weighted centre of mass to ``n//2``.
    ``xform.centerofmass``: centre of mass of the positive part of the image.
    """
    images = np.asarray(images, dtype=np.float32)
    K, n, _ = images.shape
    if mode in (None, "nocenter", "None", "xform.centeracf"):
        return np.zeros(K, int), np.zeros(K, int)
    if mode == "xform.centerofmass":
        g = np.clip(images, 0, None).astype(np.float64)
    else:
        g = tf.gauss_filter(images, highpass_px=(n / 10 if n < 50 else 5))
        g = tf.normalize(g, "normalize.circlemean", radius=n / 2 - 4)
        gw = max(5, n // 16)
        g = g * tf.gaussian_mask(n, n / 2 - gw, gw / 1.3)
        g = g.astype(np.float64) ** 2
        g = tf.gauss_filter(g.astype(np.float32), lowpass_px=0.05 * n).astype(np.float64)
        thr = np.quantile(g.reshape(K, -1), 0.9, axis=1)
        g = np.where(g >= thr[:, None, None], g - thr[:, None, None], 0.0)
    tot = g.reshape(K, -1).sum(1)
    v, u = np.mgrid[0:n, 0:n]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (g * u).reshape(K, -1).sum(1) / tot
        cy = (g * v).reshape(K, -1).sum(1) / tot
    ok = np.isfinite(cx) & np.isfinite(cy) & (tot > 0)
    dx = np.where(ok, -(np.rint(cx) - n // 2), 0).astype(int)
    dy = np.where(ok, -(np.rint(cy) - n // 2), 0).astype(int)
    return dx, dy


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
                   search_weight: np.ndarray | None = None) -> ClassAverages:
    """Class averages of ``particles`` (N, n, n) for the classes in ``label`` (N,), e2classaverage-style.

    Per class: bootstrap a reference from its members (aligned in doubling blocks to the
    running sum: first member, then the next 1, 2, 4, …), centre it, then ``iterations + 1``
    passes of align-every-member → score with ``cmp`` → average the kept ones (exclusion
    by ``keep``/``keepsig`` from the previous pass's scores; excluded members can come back),
    with the working reference normalised and masked; finally the reference is centred, the
    transforms composed with the centring shift, and the raw (normalised) particles
    re-averaged with one interpolation each. ``maxshift`` is appended to the aligner as
    e2refine2d does (``n//3`` when None). ``search_weight`` (radial, see
    :func:`r2d.transforms.spectral_snr_weight`) filters the particles and references used for
    alignment and scoring only (r2d addition against reference bias); averages use the
    unfiltered particles.
    """
    particles = np.asarray(particles, dtype=np.float32)
    label = np.asarray(label, dtype=np.int64)
    N, n, _ = particles.shape
    aligner = parse(aligner, "aligner") if not isinstance(aligner, Option) else aligner
    averager = parse(averager, "averager") if not isinstance(averager, Option) else averager
    cmp = parse(cmp, "comparator") if not isinstance(cmp, Option) else cmp
    norm = parse(normproc, "normalizer") if not isinstance(normproc, Option) else normproc
    params = dict(aligner.params)
    params["maxshift"] = n // 3 if maxshift is None or maxshift < 0 else maxshift
    aligner = Option(aligner.name, params)
    K = int(label.max()) + 1 if (label >= 0).any() else 0
    X = tf.normalize(particles, norm.name, **({"radius": norm.get("radius")} if norm and "radius" in norm.params else {})) \
        if norm is not None else particles.copy()

    Xs = X if search_weight is None else tf.radial_filter(X, search_weight, workers=workers)

    def run_align(sel, lab, refs, ref_repr=None):
        """Align particles ``sel`` to ``refs[lab]``; return params, moved raw particles, scores."""
        frefs = refs if search_weight is None else tf.radial_filter(refs, search_weight, workers=workers)
        a = align(Xs[sel], frefs, aligner, aligncmp, pairs=lab, ralign=ralign, raligncmp=raligncmp,
                  apix=apix, workers=workers)
        moved_s = tf.transform(Xs[sel], a.alpha, a.tx, a.ty, a.mirror)
        score = compare(moved_s, frefs[lab], cmp, apix=apix, ptcl_repr=None if ref_repr is None else ref_repr[lab])
        moved = moved_s if search_weight is None else tf.transform(X[sel], a.alpha, a.tx, a.ty, a.mirror)
        return a, moved, score

    lab = np.where(label >= 0, label, -1)
    valid = lab >= 0
    # ---- bootstrap: rank of each member within its class
    order = np.lexsort((np.arange(N), lab))
    ranked = lab[order]
    start = np.searchsorted(ranked, ranked, side="left")
    rank = np.full(N, -1)
    rank[order] = np.arange(N) - start
    rank[~valid] = -1
    sums = np.zeros((K, n, n), np.float32)
    first = valid & (rank == 0)
    sums[lab[first]] = X[first]
    lo_r = 1
    while True:
        sel = np.flatnonzero(valid & (rank >= lo_r) & (rank < 2 * lo_r))
        if len(sel) == 0:
            break
        a, moved, _ = run_align(sel, lab[sel], sums)
        np.add.at(sums, lab[sel], moved)
        lo_r *= 2
    dx, dy = center_shift(sums, center)
    ref = tf.integer_shift(sums, dx, dy)
    ref = _shape_reference(ref, max(5, n // 16), False)

    use = valid.copy()
    score = np.zeros(N)
    qual = np.zeros(K)
    qual_sigma = np.ones(K)
    counts = np.bincount(lab[valid], minlength=K)
    par = [np.zeros(N) for _ in range(4)]
    for it in range(iterations + 2):
        if it > 0:
            use = _keep_flags(score, lab, K, keep, keepsig)
            s = np.where(valid, score, 0.0)
            c = np.maximum(counts, 1)
            qual = np.bincount(lab[valid], s[valid], K) / c
            qual_sigma = np.sqrt(np.maximum(np.bincount(lab[valid], s[valid] ** 2, K) / c - qual**2, 0))
        if it == iterations + 1:
            break
        idx = np.flatnonzero(valid)
        a, moved, sc = run_align(idx, lab[idx], ref, counts)
        score[idx] = sc
        for p, v in zip(par, a.params()):
            p[idx] = v
        aligned = np.zeros_like(X)
        aligned[idx] = moved
        ref = average(aligned, lab, use, K, averager)
        ref = _shape_reference(ref, max(5, n // 12), automask)
        log.info("class averaging pass %d/%d: mean score %.4f, %d of %d kept", it + 1, iterations + 1,
                 float(score[idx].mean()), int(use.sum()), int(valid.sum()))
    # ---- final: centre, compose, re-average raw particles with one interpolation
    dx, dy = center_shift(ref, center)
    cshift = (np.zeros(N), np.where(valid, dx[np.maximum(lab, 0)], 0).astype(float),
              np.where(valid, dy[np.maximum(lab, 0)], 0).astype(float), np.zeros(N))
    final = tf.compose(tuple(par), cshift)
    moved = tf.transform(X, *final)
    avgs = average(moved, lab, use, K, averager)
    nonempty = counts > 0
    ptcl_repr = np.bincount(lab[use & valid], minlength=K)
    return ClassAverages(
        averages=avgs[nonempty], class_ids=np.flatnonzero(nonempty), label=lab, used=use & valid,
        alpha=final[0], tx=final[1], ty=final[2], mirror=final[3], score=score,
        ptcl_repr=ptcl_repr[nonempty], qual=qual[nonempty], qual_sigma=qual_sigma[nonempty],
    )
