"""k-means as in EMAN2's ``e2classifykmeans.py`` + C++ ``KMeansAnalyzer`` (docs/algorithm.md §3.6).

Squared Euclidean distance, seeds copied from random points, incremental ("slow") seeding for
``k > 25``, RESORT of the centres before every assignment, small classes emptied and reseeded,
the ``minchange`` stop rule and ``maxiter = 16 floor(log2 k)``. Distances are computed with
BLAS (``|x|^2 - 2 x.c + |c|^2``) for all points at once; the only Python loops run over
iterations and over centres.

Deliberate differences from the C++ source (allowed by docs/algorithm.md §5.2: seeding and random
number generation are free; the behaviour of §5.1 item 4 is kept):

* Seeding (``seeding="kmeans++"``, the default): seeds are still copies of randomly drawn
  points, but drawn by greedy k-means++ (D^2 sampling) instead of uniformly, and an empty
  centre is reseeded with the worst member of the class with the largest spread (sum of
  squared distances), which is what the C++ comment ("reseed ... inside the class with the
  broadest distribution") intends; the source draws that class uniformly. With uniform
  seeding, well-separated clusters are routinely merged/split (a local minimum Lloyd
  iterations cannot leave). ``seeding="eman2"`` restores the source's uniform draws.
* ``is_ok_center`` credit: implemented as intended (every member of a class that is too
  small loses one credit; points with no credit left neither move centres nor seed them).
* Class numbers are permuted by RESORT; changes are counted after mapping the previous labels
  through that permutation, so ``minchange`` counts points that really changed class.
* The worst member of a class seeds at most one empty centre per reseed (no duplicate
  centres); a second empty centre falls back to another class or to a random point.
* Final step (EMAN2 returns the labels of the last assignment, possibly with empty or
  singleton classes): the last centres are recomputed without reseeding, every point is
  relabelled to its nearest centre, centres whose class has fewer than ``mininclass``
  members are dropped and their points relabelled (repeated until stable), and classes are
  renumbered ``0..k'-1`` in RESORT order with no empty class. ``k' < k`` when small classes
  remain at the end: always if ``N < k * mininclass``, rarely otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from r2d.errors import ConfigError

__all__ = ["KMeansResult", "kmeans", "auto_minchange", "default_maxiter"]

_CHUNK = 1 << 16      # points per distance block (bounds the N x k temporary)
_CREDIT = 5           # EMAN2's initial "is_ok_center" credit


@dataclass(frozen=True)
class KMeansResult:
    """``labels`` (N,) int32 in ``0..k'-1`` (every class non-empty), ``centers`` (k', d) float64
    (member means), ``n_iter`` main-loop iterations run, ``n_changed_last`` points that changed
    class in the last one."""

    labels: np.ndarray
    centers: np.ndarray
    n_iter: int
    n_changed_last: int


def auto_minchange(n: int, k: int) -> int:
    """e2classifykmeans' default ``minchange = n // (k * 25) + 1`` (n=2000, k=32 -> 3)."""
    return int(n) // (int(k) * 25) + 1


def default_maxiter(k: int) -> int:
    """``16 * floor(log2 k)`` (32 -> 80, 100 -> 96); 0 for ``k = 1``."""
    return 16 * int(math.floor(math.log2(k))) if k >= 1 else 0


def _assign(X: np.ndarray, xx: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre (first argmin) and squared distance for every row of ``X``."""
    cc = np.einsum("ij,ij->i", C, C)
    labels = np.empty(X.shape[0], dtype=np.int64)
    dist = np.empty(X.shape[0], dtype=np.float64)
    for s in range(0, X.shape[0], _CHUNK):
        d = X[s:s + _CHUNK] @ C.T
        d *= -2.0
        d += xx[s:s + _CHUNK, None]
        d += cc[None, :]
        j = np.argmin(d, axis=1)
        labels[s:s + _CHUNK] = j
        dist[s:s + _CHUNK] = np.maximum(d[np.arange(d.shape[0]), j], 0.0)
    return labels, dist


def _resort(C: np.ndarray) -> np.ndarray:
    """Greedy nearest-neighbour chain order of the centres: position 0 keeps centre 0, position
    ``t`` gets the unused centre nearest to the one at ``t-1``. Returns the permutation."""
    k = C.shape[0]
    if k <= 2:
        return np.arange(k)
    cc = np.einsum("ij,ij->i", C, C)
    D = cc[:, None] + cc[None, :] - 2.0 * (C @ C.T)
    order = np.empty(k, dtype=np.int64)
    used = np.zeros(k, dtype=bool)
    cur = 0
    order[0] = 0
    used[0] = True
    for t in range(1, k):
        row = np.where(used, np.inf, D[cur])
        cur = int(np.argmin(row))
        order[t] = cur
        used[cur] = True
    return order


def _class_sums(X: np.ndarray, labels: np.ndarray, weights: np.ndarray, k: int):
    """Per-class weighted sums (k, d) and counts (k,) via one sparse matmul."""
    N = X.shape[0]
    M = sp.csr_matrix((weights, (labels, np.arange(N))), shape=(k, N))
    return np.asarray(M @ X), np.asarray(M.sum(axis=1)).ravel()


def _plusplus_seeds(X: np.ndarray, xx: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``m`` seed points by greedy k-means++: the first uniform, each next one the best
    (lowest total D^2) of ``2 + ln m`` candidates drawn with probability proportional to D^2."""
    N = X.shape[0]
    trials = 2 + int(math.log(max(m, 1)))
    idx = np.empty(m, dtype=np.int64)
    idx[0] = rng.integers(0, N)
    d2 = np.maximum(xx - 2.0 * (X @ X[idx[0]]) + xx[idx[0]], 0.0)
    for t in range(1, m):
        tot = d2.sum()
        if tot <= 0:
            idx[t] = rng.integers(0, N)
            continue
        cand = np.searchsorted(np.cumsum(d2), rng.random(trials) * tot, side="right")
        cand = np.minimum(cand, N - 1)
        dc = np.maximum(xx[:, None] - 2.0 * (X @ X[cand].T) + xx[cand][None, :], 0.0)
        dc = np.minimum(dc, d2[:, None])
        best = int(np.argmin(dc.sum(axis=0)))
        idx[t] = cand[best]
        d2 = dc[:, best]
    return idx


def kmeans(X: np.ndarray, k: int, *, seed: int, minchange: int = -1, fastseed: bool = False,
           mininclass: int = 2, maxiter: int | None = None,
           seeding: str = "kmeans++") -> KMeansResult:
    """EMAN2 ``KMeansAnalyzer`` k-means of the rows of ``X`` (N, d) into ``k`` classes.

    ``minchange <= 0`` -> ``auto_minchange(N, k)``; ``maxiter=None`` -> ``16 floor(log2 k)``;
    incremental seeding when ``k > 25`` and not ``fastseed``; classes with fewer than
    ``mininclass`` (>= 1) contributing members are emptied and reseeded. All randomness from
    ``np.random.default_rng(seed)``.

    ``seeding``: ``"kmeans++"`` (default) draws seed points by greedy k-means++ and reseeds an
    empty centre with the worst member of the broadest class; ``"eman2"`` draws both uniformly,
    as the C++ source does. The module docstring lists all differences from EMAN2, including
    the final relabelling step.
    """
    if seeding not in ("kmeans++", "eman2"):
        raise ConfigError(f"kmeans seeding={seeding!r}: use 'kmeans++' or 'eman2'")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1:
        raise ValueError(f"kmeans needs a non-empty 2-D array (N, d); got shape {X.shape}")
    k = int(k)
    if k < 1:
        raise ConfigError(f"ncls={k}: the number of classes must be at least 1")
    N = X.shape[0]
    rng = np.random.default_rng(seed)
    if minchange is None or minchange <= 0:
        minchange = auto_minchange(N, k)
    if maxiter is None:
        maxiter = default_maxiter(k)
    mininclass = max(1, int(mininclass))
    plusplus = seeding == "kmeans++"
    xx = np.einsum("ij,ij->i", X, X)

    step = k // 25 + 1 if (not fastseed and k > 25) else k
    if plusplus:
        seeds = X[_plusplus_seeds(X, xx, step, rng)].copy()
    else:
        seeds = X[rng.integers(0, N, size=step)].copy()
    state = _State(X, seeds, rng, plusplus, mininclass)
    n_iter, nchanged = _iterate(state, xx, k, step, maxiter, minchange)
    centers = _final_centers(state, n_iter)
    labels, centers = _drop_small_classes(X, xx, state.labels, centers, mininclass)
    labels, centers = _renumber(X, labels, centers)
    return KMeansResult(labels=labels.astype(np.int32), centers=centers, n_iter=n_iter, n_changed_last=nchanged)


class _State:
    """The k-means state between iterations, for ``X`` (N, d) float64.

    Per centre, permuted together by RESORT: ``centers`` (kc, d) float64, ``alive`` (kc,) bool
    (False = empty centre waiting for a reseed), ``worst`` (kc,) int64 (worst contributing member
    of each class, −1 = none), ``spread`` (kc,) float64 (sum of squared distances of the
    contributors). Per point: ``okc`` (N,) int64 (``is_ok_center`` credit), ``labels`` (N,) int64.
    """

    def __init__(self, X: np.ndarray, centers: np.ndarray, rng: np.random.Generator, plusplus: bool,
                 mininclass: int):
        self.X, self.rng, self.plusplus, self.mininclass = X, rng, plusplus, mininclass
        kc, N = centers.shape[0], X.shape[0]
        self.centers = centers
        self.alive = np.ones(kc, dtype=bool)
        self.worst = np.full(kc, -1, dtype=np.int64)
        self.spread = np.zeros(kc)
        self.okc = np.full(N, _CREDIT, dtype=np.int64)
        self.labels = np.zeros(N, dtype=np.int64)

    @property
    def kc(self) -> int:
        """Centres so far (``k`` once incremental seeding is done)."""
        return self.centers.shape[0]

    def random_point(self) -> int:
        """A uniformly drawn point with credit left (any point when none has)."""
        good = np.flatnonzero(self.okc > 0)
        return int(good[self.rng.integers(0, good.size)]) if good.size else int(self.rng.integers(0, self.X.shape[0]))

    def reseed(self) -> None:
        """Every empty centre becomes a copy of the worst member of a class (the broadest with
        k-means++, a uniformly drawn one with ``eman2``; each worst member used once), else of a
        random point."""
        alive, worst, spread, plusplus = self.alive, self.worst, self.spread, self.plusplus
        if plusplus:
            w = np.where(alive & (worst >= 0), spread, -1.0)
        for j in np.flatnonzero(~alive):
            if plusplus:                       # the class with the broadest distribution
                q = int(np.argmax(w))
                q = q if w[q] > 0 else -1
            else:
                q = int(self.rng.integers(0, self.kc))
            if q >= 0 and alive[q] and worst[q] >= 0:
                src = int(worst[q])
                worst[q] = -1                  # use each worst member once
                if plusplus:
                    w[q] = -1.0
            else:
                src = self.random_point()
            self.centers[j] = self.X[src]
            alive[j] = True
            worst[j] = -1
            spread[j] = 0.0

    def update_centers(self, dist: np.ndarray) -> None:
        """UPDATE_CENTERS from the current labels and squared distances ``dist`` (N,) float64:
        member means of the contributors (points with credit), each class's spread and worst
        member; classes with fewer than ``mininclass`` contributors cost their members a credit,
        are emptied and reseeded."""
        X, labels, okc, kc = self.X, self.labels, self.okc, self.kc
        w = (okc > 0).astype(np.float64)
        sums, repr_ = _class_sums(X, labels, w, kc)
        small = repr_ < self.mininclass
        good = ~small
        self.centers[good] = sums[good] / repr_[good, None]
        self.spread[:] = np.bincount(labels, weights=dist * w, minlength=kc)
        # worst contributing member per class: last of each label block sorted by (label, dist)
        self.worst[:] = -1
        contrib = np.flatnonzero(w > 0)
        if contrib.size:
            o = contrib[np.lexsort((dist[contrib], labels[contrib]))]
            lab = labels[o]
            last = np.r_[lab[1:] != lab[:-1], True]
            self.worst[lab[last]] = o[last]
        if small.any():
            okc[small[labels]] -= 1            # intended is_ok_center behaviour
            self.alive[small] = False
            self.worst[small] = -1
            self.reseed()

    def step(self, xx: np.ndarray) -> int:
        """One iteration: RESORT (centres and their state permuted), assign every point
        (``xx`` (N,) its squared norms), UPDATE_CENTERS. Returns the points that changed class."""
        perm = _resort(self.centers)           # RESORT: permute centres and their state
        inv = np.empty_like(perm)
        inv[perm] = np.arange(self.kc)
        self.centers, self.worst, self.alive, self.spread = (self.centers[perm], self.worst[perm],
                                                             self.alive[perm], self.spread[perm])
        old = inv[self.labels]
        self.labels, dist = _assign(self.X, xx, self.centers)
        nchanged = int(np.count_nonzero(self.labels != old))
        self.update_centers(dist)
        return nchanged

    def grow(self, add: int) -> None:
        """Incremental seeding: ``add`` more centres, seeded as empty ones."""
        self.centers = np.vstack([self.centers, np.zeros((add, self.X.shape[1]))])
        self.alive = np.r_[self.alive, np.zeros(add, dtype=bool)]
        self.worst = np.r_[self.worst, np.full(add, -1, dtype=np.int64)]
        self.spread = np.r_[self.spread, np.zeros(add)]
        self.reseed()


def _iterate(state: _State, xx: np.ndarray, k: int, step: int, maxiter: int, minchange: int) -> tuple[int, int]:
    """The main loop: at most ``maxiter`` iterations (:meth:`_State.step`), ``step`` more centres
    every third one until there are ``k``; stops when fewer than ``minchange`` points changed
    class with all ``k`` centres. Returns the iterations run and the last one's changes."""
    n_iter = 0
    nchanged = 0
    for it in range(maxiter):
        n_iter = it + 1
        nchanged = state.step(xx)
        if nchanged < minchange and state.kc == k:
            break
        if step < k and it % 3 == 2 and state.kc < k:  # incremental seeding
            state.grow(min(step, k - state.kc))
    return n_iter, nchanged


def _final_centers(state: _State, n_iter: int) -> np.ndarray:
    """The last UPDATE_CENTERS without reseeding (after at least one iteration): member means
    (k', d) float64 of the classes with at least ``mininclass`` contributors (the current
    centres when none has)."""
    centers = state.centers
    if n_iter:
        sums, repr_ = _class_sums(state.X, state.labels, (state.okc > 0).astype(np.float64), state.kc)
        keep = repr_ >= state.mininclass
        if keep.any():
            centers = sums[keep] / repr_[keep, None]
    return centers


def _drop_small_classes(X: np.ndarray, xx: np.ndarray, labels: np.ndarray, centers: np.ndarray,
                        mininclass: int) -> tuple[np.ndarray, np.ndarray]:
    """Every point relabelled to its nearest centre, centres with fewer than ``mininclass``
    members dropped, repeated until stable (or only small ones are left). Returns ``labels``
    (N,) int64 and ``centers`` (k', d) float64."""
    for _ in range(centers.shape[0]):
        labels, _d = _assign(X, xx, centers)
        counts = np.bincount(labels, minlength=centers.shape[0])
        small = counts < mininclass
        if not small.any() or small.all():
            break
        centers = centers[~small]
    return labels, centers


def _renumber(X: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes renumbered ``0..k'-1`` in centre order without empty ones; returns ``labels``
    (N,) int64 and the member means (k', d) float64."""
    counts = np.bincount(labels, minlength=centers.shape[0])
    newid = np.cumsum(counts > 0) - 1
    labels = newid[labels]
    kf = int(np.count_nonzero(counts))
    sums, cnt = _class_sums(X, labels, np.ones(X.shape[0]), kf)
    return labels, sums / cnt[:, None]
