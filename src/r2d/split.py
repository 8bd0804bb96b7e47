"""Growing the classes by division (r2d extension, ``mragrow``; docs/algorithm.md §3.14).

At low SNR, multi-reference assignment started from ``ncls`` poor averages settles into a
poor assignment: the initial classes of the invariants are close to random there, and
each average then attracts whatever matches its blur. Started instead from a few
averages, each of many particles, and doubling the classes every iteration, it reaches
classes of one view each: the initial stage averages every particle as one class and
divides it into :func:`schedule`'s first count; each iteration's class averaging divides its
classes again until ``ncls``. A class is divided at the median of its members' scores on
the first principal component of their search images in the class frame (phase-flipped,
matched-filtered, masked; :func:`principal_scores`), so both halves have members; the halves
are averaged from their members' transforms into the parent average (``class_averages``'s
``prior``), so they start aligned.

Every choice depends only on the labels and on each class's own members, so class
averaging in chunks divides each class exactly as one job does.
"""

from __future__ import annotations

import numpy as np

from r2d import stable
from r2d import transforms as tf
from r2d.average import class_averages
from r2d.prepared import search_view

__all__ = ["schedule", "split_counts", "divide", "divided_averages", "principal_scores", "START", "SAMPLE"]

#: classes of the initial stage when the iterations allow it
START = 4
#: at most this many members (evenly spaced) define a class's principal component
SAMPLE = 4000
#: pieces with fewer members are not divided again
MIN_PIECE = 4


def schedule(ncls: int, iterations: int, start: int = START) -> list[int]:
    """Classes of ``classes_init`` and of ``classes_01 … classes_{iterations}``: ``K_0 · 2^YY``
    capped at ``ncls``, ``K_0 = max(min(start, ncls), ceil(ncls / 2^⌊iterations/2⌋))``, so the
    second half of the iterations refines all ``ncls`` classes (8 iterations, 32 classes:
    4, 8, 16, 32, 32, …)."""
    ncls, iterations = int(ncls), int(iterations)
    k0 = max(min(start, ncls), -(-ncls // 2 ** (iterations // 2)))
    return [min(ncls, k0 * 2 ** it) for it in range(iterations + 1)]


def split_counts(label: np.ndarray, target: int) -> np.ndarray:
    """Extra classes ``(K,)`` int64 each class ``0 … max(label)`` gives so that there are
    ``target`` non-empty ones in all: repeatedly the class whose pieces are largest (members /
    pieces; ties: lower class) gains a piece, so each class's pieces are about equally large;
    classes too small to divide (fewer than ``2·MIN_PIECE`` members per piece) gain none.
    Empty classes get −1: their numbers go to the first new pieces (:func:`divide`). Depends
    only on the member counts of ``label`` ((N,) ints, −1 = in no class)."""
    label = np.asarray(label)
    counts = np.bincount(label[label >= 0], minlength=int(label.max(initial=-1)) + 1).astype(np.int64)
    extra = np.zeros(len(counts), dtype=np.int64)
    for _ in range(max(0, int(target) - int(np.count_nonzero(counts)))):
        piece = counts / (extra + 1)
        piece[piece < 2 * MIN_PIECE] = -1
        c = int(np.argmax(piece))  # first of the largest
        if piece[c] < 0:
            break
        extra[c] += 1
    extra[counts == 0] = -1
    return extra


def new_ids(extra: np.ndarray) -> np.ndarray:
    """Numbers ``(sum of extra > 0,)`` int64 of the new pieces of :func:`split_counts`'s
    ``extra``, in the order :func:`divide` makes them: the empty classes' numbers first, then
    ``len(extra)``, ``len(extra) + 1``, …"""
    extra = np.asarray(extra, dtype=np.int64)
    free = np.flatnonzero(extra < 0)
    n_new = int(extra[extra > 0].sum())
    return np.concatenate([free, len(extra) + np.arange(max(0, n_new - len(free)))])[:n_new].astype(np.int64)


def principal_scores(moved, rows: np.ndarray, block: int, basis: np.ndarray | None = None) -> np.ndarray:
    """Scores ``(m,)`` float64 of particles ``rows`` (m,) on the first principal component of
    the images ``moved(rows)`` → (b, p) float32 of ``basis`` (rows among ``rows``; None: all of
    them): centred, the direction and the mean from at most :data:`SAMPLE` evenly spaced basis
    rows (the top eigenvector of their Gram matrix), the others scored ``block`` rows at a time;
    the sign makes the first row's score ≤ 0. Products in float64 (:mod:`r2d.stable`)."""
    m = len(rows)
    base = rows if basis is None else np.asarray(basis)
    sample = base if len(base) <= SAMPLE else base[np.linspace(0, len(base) - 1, SAMPLE).round().astype(int)]
    S = stable.wide(moved(sample))
    mean = S.mean(axis=0)
    S -= mean
    from scipy.linalg import eigh  # only the jobs that divide classes pay for the import

    G = stable.matmul(S, S.T)
    _, vecs = eigh(G, subset_by_index=[len(G) - 1, len(G) - 1])  # the top eigenvector only
    direction = stable.matmul(vecs[:, 0], S)
    direction /= max(float(np.linalg.norm(direction)), 1e-300)
    if len(sample) == m:
        scores = stable.matmul(S, direction)
    else:
        scores = np.concatenate([stable.matmul(stable.wide(moved(rows[lo:lo + block])) - mean, direction)
                                 for lo in range(0, m, block)])
    return -scores if scores[0] > 0 else scores


def divide(label: np.ndarray, extra: np.ndarray, images, transforms, *, crop: int | None = None,
           block: int = 4096, eligible: np.ndarray | None = None) -> np.ndarray:
    """``label`` (N,) with class ``c`` divided into ``extra[c] + 1`` pieces (``extra[c] > 0``); the
    new pieces take the numbers :func:`new_ids`, class by class in order (global numbers: pass
    the :func:`split_counts` of every class, also when ``label`` holds only some).

    ``images(rows)`` → (b, n, n) float32: the search images of particles ``rows`` (increasing;
    asked for at most ``block`` or :data:`SAMPLE` at a time); ``transforms`` ``(alpha, tx, ty,
    mirror)`` (N,) each: every member into its class average's frame. Each time, the largest
    piece (ties: the first made) is divided at the median of its members'
    :func:`principal_scores` over the images moved into the class frame (Fourier-cropped to
    ``crop`` px, where the search images carry their signal; none when None); the half holding
    the piece's first member keeps its number. With ``eligible`` ((N,) bool, the members class
    averaging may average in) the component and the median come from a piece's eligible
    members when it has at least ``2·MIN_PIECE`` of them, and the others follow their scores."""
    label = np.asarray(label, dtype=np.int64).copy()
    transforms = [np.asarray(t, dtype=np.float64) for t in transforms]

    def moved(rows):
        X = tf.transform(images(rows), *(t[rows] for t in transforms))
        if crop is not None and crop < X.shape[-1]:
            X = tf.fourier_crop(X, crop)
        return X.reshape(len(rows), -1)

    ids = new_ids(extra)
    pos = np.concatenate([[0], np.cumsum(np.maximum(extra, 0))[:-1]]).astype(np.int64)
    for c in np.flatnonzero(extra > 0):
        pieces = [np.flatnonzero(label == c)]
        for k in range(int(extra[c])):
            j = max(range(len(pieces)), key=lambda i: (len(pieces[i]), -i))
            piece = pieces[j]
            if len(piece) < 2 * MIN_PIECE:
                break
            el = piece if eligible is None else piece[eligible[piece]]
            if len(el) < 2 * MIN_PIECE:
                el = piece
            s = principal_scores(moved, piece, block, basis=None if len(el) == len(piece) else el)
            upper = s > np.median(s[np.isin(piece, el)])
            pieces[j] = piece[~upper]
            pieces.append(piece[upper])
            label[piece[upper]] = ids[pos[c] + k]
    return label


#: class-averaging iterations of the divided classes (they start from their parent's alignment)
SPLIT_ITERATIONS = 2


def divided_averages(particles, label: np.ndarray, extra: np.ndarray | None, *, iterations: int = 5,
                     split_iterations: int = SPLIT_ITERATIONS, **options):
    """:func:`r2d.average.class_averages` of ``label`` (``iterations``), then, where ``extra``
    ((K,) ints, :func:`split_counts` of the whole label set; None or zeros: no division) asks
    for it, the classes :func:`divide`\\ d and every class averaged again (``split_iterations``,
    from the first averaging's transforms). ``options``: ``class_averages``'s; the division
    sees the particles as its alignment does (normalised, phase-flipped, matched-filtered,
    masked)."""
    res = class_averages(particles, label, iterations=iterations, **options)
    if extra is None or not np.any(extra > 0):
        return res
    n = particles.shape[-1]
    images = search_view(particles, **options)
    weight = options.get("search_weight")
    crop = None
    if weight is not None and np.any(weight > 0):
        crop = min(n, 2 * (int(np.flatnonzero(weight > 0)[-1]) + 2))
    transforms = (res.alpha, res.tx, res.ty, res.mirror)
    eligible = options.get("eligible")
    new = divide(res.label, extra, images, transforms, crop=crop,
                 eligible=None if eligible is None else np.asarray(eligible, dtype=bool))
    ids = new_ids(extra)
    options["n_classes"] = max(len(extra), int(ids.max(initial=-1)) + 1)
    return class_averages(particles, new, iterations=split_iterations,
                          **{**options, "prior": transforms})
