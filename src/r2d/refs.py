"""Reference preparation for an iteration: ``allrefs_YY`` and ``aliref_YY``
(docs/algorithm.md §1.3 steps 1–6, §3.12).

* :func:`contrast_lowres` — EMAN2's ``calccont`` score (``eval_contrast_lowres``).
* :func:`preprocess` — 2-px Gaussian high-pass and ``normalize.circlemean:radius=-5``.
* :func:`mutual_align` — ``e2stacksort --iterative``: every average aligned into one frame
  along nearest-neighbour chains.
* :func:`select_alirefs` — contrast ranking, greedy most-dissimilar choice of ``naliref``
  images by ``ccc``, and chain alignment.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from r2d import transforms as tf
from r2d.align import align
from r2d.cmp import compare

MUTUAL_ALIGN = "rotate_translate_tree:maxres=10"
MUTUAL_CMP = "sqeuclidean:normto=1"
CHAIN_CMP = "optvariance:keepzero=1:matchfilt=1"


def rotational_subtract(images: np.ndarray) -> np.ndarray:
    """Subtract the radial mean profile; zero pixels with ``r ≥ n/2 − 1`` (``math.rotationalsubtract``)."""
    images = np.asarray(images, dtype=np.float64)
    K, n, _ = images.shape
    r = tf.radius_grid(n)
    ri = np.rint(r).astype(np.int64).ravel()
    nr = ri.max() + 1
    idx = (ri[None] + nr * np.arange(K)[:, None]).ravel()
    sums = np.bincount(idx, images.reshape(K, -1).ravel(), K * nr).reshape(K, nr)
    cnt = np.bincount(ri, minlength=nr)
    prof = sums / np.maximum(cnt, 1)
    out = images - prof[:, ri].reshape(K, n, n)
    out[:, r >= n / 2 - 1] = 0.0
    return out


def contrast_lowres(images: np.ndarray, apix: float | None) -> np.ndarray:
    """``eval_contrast_lowres``: low- over high-resolution non-round power, ``(K,)``.

    ``I(r)`` = radial mean of ``|FFT(rotationalsubtract(f))|²``; ``lo_px = ⌊n·apix/150⌋``,
    ``hi_px = min(⌊n·apix/25⌋, n/2−6)`` (``(3, n//5)`` when equal); value
    ``mean(I[lo:hi]) / mean(I[hi+1:n/2−1])``. Larger means more low-resolution structure.
    """
    d = rotational_subtract(images)
    K, n, _ = d.shape
    apix = apix or 1.0
    P = np.abs(sfft.rfft2(d)) ** 2
    ri = np.rint(tf.freq_radius(n)).astype(np.int64).ravel()
    nr = n // 2
    keep = ri < nr
    idx = (ri[keep][None] + nr * np.arange(K)[:, None]).ravel()
    I = np.bincount(idx, P.reshape(K, -1)[:, keep].ravel(), K * nr).reshape(K, nr)
    I = I / np.maximum(np.bincount(ri[keep], minlength=nr), 1)
    lo_px = int(n * apix / 150)
    hi_px = int(min(int(n * apix / 25), n // 2 - 6))
    if lo_px >= hi_px:
        lo_px, hi_px = 3, n // 5
    lo = I[:, lo_px:hi_px].mean(1)
    hi = I[:, hi_px + 1:n // 2 - 1].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hi > 0, lo / hi, 0.0)


def preprocess(refs: np.ndarray) -> np.ndarray:
    """Gaussian high-pass ``cutoff_pixels=2`` then ``normalize.circlemean:radius=-5``."""
    out = tf.gauss_filter(refs, highpass_px=2)
    return tf.normalize(out, "normalize.circlemean", radius=-5)


def _align_one(img: np.ndarray, to: np.ndarray, aligner: str = MUTUAL_ALIGN, workers: int = 1):
    a = align(img[None], to[None], aligner, "ccc", workers=workers)
    return tf.transform(img[None], *a.params((0, 0)))[0], a.params((0, 0))


def mutual_align(refs: np.ndarray, *, apix=None, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Align a stack of class averages into one frame (``e2stacksort --iterative``).

    Each image's target is its most similar other image (aligned ``sqeuclidean:normto=1``;
    r2d computes the exact nearest neighbour where EMAN2 searches it randomly). Images are
    then aligned along target chains starting from the target with most incoming links.
    Returns ``(aligned images in the new order, original index of each)``.
    """
    refs = np.asarray(refs, dtype=np.float32)
    K = len(refs)
    if K == 1:
        return refs.copy(), np.zeros(1, dtype=np.int64)
    a = align(refs, refs, MUTUAL_ALIGN, MUTUAL_CMP, apix=apix, workers=workers)
    score = a.score.copy()
    np.fill_diagonal(score, np.inf)
    tgt = score.argmin(axis=1)
    incoming = np.bincount(tgt, minlength=K)
    order = sorted(range(K), key=lambda j: (incoming[j], j), reverse=True)
    root = order[0]
    cur = {root: refs[root]}
    out = [root]
    marked = {root}

    def place(i):  # recursion depth ≤ K (class averages, not particles)
        if i in marked:
            return
        marked.add(i)
        t = int(tgt[i])
        if t not in marked:
            place(t)
        cur[i], _ = _align_one(refs[i], cur.get(t, refs[t]), workers=workers)
        out.append(i)

    for j in order:
        for i in np.flatnonzero(tgt == j):
            place(int(i))
        place(j)
    idx = np.array(out, dtype=np.int64)
    return np.stack([cur[i] for i in idx]).astype(np.float32), idx


def select_alirefs(allrefs: np.ndarray, contrast: np.ndarray, ptcl_repr: np.ndarray, *, naliref: int, ncls: int,
                   workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Choose ``naliref`` mutually dissimilar references (steps 4–6).

    Sort by contrast (descending), take the first ``ncheck = max(ncls//3, naliref+2)``,
    greedily add the candidate whose best ``ccc`` to the already chosen ones is worst, then
    order and align them as a nearest-neighbour chain scored with ``optvariance`` both ways.
    Returns ``(aliref images (A, n, n), their indices into allrefs)``.
    """
    order = np.argsort(-np.asarray(contrast), kind="stable")
    ncheck = max(ncls // 3, naliref + 2)
    cand = list(order[:ncheck])
    sel = [cand.pop(0)]
    repr0 = ptcl_repr[sel[0]]
    while len(sel) < naliref and cand:
        ok = [c for c in cand if not (repr0 > 0 and ptcl_repr[c] <= 0)]
        if not ok:
            break
        # ccc of every candidate with every selected image (lower = more similar)
        ci = np.repeat(ok, len(sel))
        si = np.tile(sel, len(ok))
        m = compare(allrefs[si], allrefs[ci], "ccc").reshape(len(ok), len(sel)).min(axis=1)
        best = ok[int(np.argmax(m))]
        sel.append(best)
        cand.remove(best)
    imgs = {i: allrefs[i] for i in sel}
    out = [sel[0]]
    remaining = sel[1:]
    aligned = {sel[0]: allrefs[sel[0]]}
    while remaining:
        last = aligned[out[-1]]
        stack = np.stack([imgs[i] for i in remaining])
        a = align(stack, last[None], MUTUAL_ALIGN, "ccc", workers=workers)
        moved = tf.transform(stack, a.alpha[:, 0], a.tx[:, 0], a.ty[:, 0], a.mirror[:, 0])
        lastrep = np.broadcast_to(last, moved.shape)
        sc = compare(lastrep, moved, CHAIN_CMP) + compare(moved, lastrep, CHAIN_CMP)
        k = int(np.argmin(sc))
        aligned[remaining[k]] = moved[k]
        out.append(remaining.pop(k))
    idx = np.array(out, dtype=np.int64)
    return np.stack([aligned[i] for i in idx]).astype(np.float32), idx
