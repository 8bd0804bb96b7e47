"""The averagers: one average per class from aligned members (docs/algorithm.md §3.8).

``mean`` and ``median``; ``ctf.weight`` (Wiener-weighted by the members' CTFs) and
``ctf.weight.autofilt`` (its noise term from the half-set FSC). Members alternate between two
half sets (:func:`half_index`) whose sums give the per-class FSC; sums run over members in
particle order, block by block (:class:`Accumulator`), so averages do not depend on how the
members are read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from r2d import transforms as tf
from r2d.ctf import ParticleCTF
from r2d.fsc import ring_fsc
from r2d.options import Option

log = logging.getLogger(__name__)


#: EMAN2's constant in the Wiener denominator of ``ctf.weight`` (``Σ c·F / (Σ CTF² + 0.1)``)
CTF_WEIGHT_EPS = 0.1
#: FSC clamp of the automatic filter (EMAN2's ``ctf.weight.autofilt``)
FSC_CLAMP = (0.001, 0.9999)


def half_index(label: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Half set (0/1) of each particle: the used members of each class alternate between the
    halves in particle order (1st → 0, 2nd → 1, …, as EMAN2 adds them); −1 for the others."""
    N = len(label)
    key = np.where(use & (label >= 0), label, -1)
    order = np.lexsort((np.arange(N), key))
    ranked = key[order]
    start = np.searchsorted(ranked, ranked, side="left")
    half = np.empty(N, dtype=np.int64)
    half[order] = (np.arange(N) - start) % 2
    return np.where(key >= 0, half, -1)


@dataclass
class HalfSums:
    """Fourier-space half-set sums of the members of K classes (rfft2 layout, ``nk = n//2+1``).

    ``num`` (2, K, n, nk) complex128: ``Σ c_i F_i`` over the members of each half (``c = 1``
    without CTF); ``den`` (2, K, n, nk) float64 with CTF (``Σ CTF_i²``), else (2, K, 1, 1)
    (member counts); ``count`` (2, K) members per half.
    """

    num: np.ndarray
    den: np.ndarray
    count: np.ndarray

    def fsc(self) -> np.ndarray:
        """FSC per ring ``r = round(|k|)`` between the two half sums, ``(K, n//2+1)`` float64
        (0 where a half is empty; :func:`r2d.fsc.ring_fsc`)."""
        return ring_fsc(self.num[0], self.num[1])


def member_batch(n: int) -> int:
    """Images per batch for Fourier work on ``n × n`` images (about 4 M coefficients, ≤ 512)."""
    return max(8, min(512, int(4e6 // (n * (n // 2 + 1)))))


def half_sums(images: np.ndarray, label: np.ndarray, use: np.ndarray, K: int, *, ctf: ParticleCTF | None = None,
              alpha=0.0, mirror=0.0, workers: int = 1, batch: int | None = None,
              half: np.ndarray | None = None, into: HalfSums | None = None) -> HalfSums:
    """Half-set Fourier sums (:class:`HalfSums`) of ``images`` (N, n, n) with ``use[i]`` in class ``label[i]``.

    With ``ctf`` (one entry per image), each image is weighted by ``c_i`` and ``CTF_i²`` is
    summed (:meth:`r2d.ctf.ParticleCTF.wiener_terms`), both evaluated for the image *after*
    the transform ``(alpha_i, ., ., mirror_i)`` that brought it into the class frame.
    ``half``: the half set of each image (default :func:`half_index` of ``label, use``; give
    the whole set's when ``images`` is one block of it). ``into``: add to these sums (in
    place) instead of new ones.

    Each member is added to its class's running sum in turn (float64), in row order: a class
    sum is the same sequence of additions however the members are split into blocks and
    batches, and whichever other classes share them (so class averages computed in chunks
    of classes are bit-identical to those computed all at once).
    """
    images = np.asarray(images, dtype=np.float32)
    label = np.asarray(label)
    N, n, _ = images.shape
    nk = n // 2 + 1
    if half is None:
        half = half_index(label, np.asarray(use, dtype=bool))
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (N,))
    mirror = np.broadcast_to(np.asarray(mirror, dtype=np.float64), (N,))
    if into is None:
        into = HalfSums(np.zeros((2, K, n, nk), np.complex128),
                        np.zeros((2, K, n, nk) if ctf is not None else (2, K, 1, 1), np.float64), np.zeros((2, K)))
    num = into.num.reshape(2 * K, n * nk)
    den = into.den.reshape(2 * K, -1)
    sel_all = np.flatnonzero((half >= 0) & (label >= 0))
    batch = batch or member_batch(n)
    for lo in range(0, len(sel_all), batch):
        sel = sel_all[lo:lo + batch]
        F = sfft.rfft2(images[sel], workers=workers).reshape(len(sel), -1)
        w = np.ones((len(sel), 1))  # without CTF the denominator is the member count
        if ctf is not None:
            c, w = ctf.take(sel).wiener_terms(n, alpha[sel], mirror[sel])
            F *= c.reshape(len(sel), -1)
            w = w.reshape(len(sel), -1)
        slot = half[sel] * K + label[sel]
        for i, k in enumerate(slot):  # one vector addition per member (see above): O(members), not pixels
            num[k] += F[i]
            den[k] += w[i]
        np.add.at(into.count, (half[sel], label[sel]), 1.0)
    return into


def autofilter_noise_term(h: HalfSums) -> tuple[np.ndarray, np.ndarray]:
    """Wiener term ``1/η(r)`` of the automatic filter, ``(K, n//2+1)``, and the clamped half-set FSC.

    The FSC between the half sums ``N_e = Σ c_i F_i`` (clamped to :data:`FSC_CLAMP`) gives the
    half-set SNR ``FSC/(1−FSC)``, which for ``N_e = D_e·S + noise`` (noise variance ``σ²·D_e``,
    ``D_e = Σ CTF²``) equals ``η·ΣD²/ΣD`` over the ring, with ``η = |S|²/σ²`` the per-particle
    SNR before the CTF. Without CTF (``D_e`` = member count) the resulting filter
    ``n/(n + 1/η)`` is exactly EMAN2's ``snr/(snr+1)``, ``snr = 2·FSC/(1−FSC)``. The term is
    kept ≥ 1e-3 of the ring's mean ``D`` (no division by ~0 at CTF zeros shared by all members).
    """
    fsc = np.clip(h.fsc(), *FSC_CLAMP)
    snr_half = fsc / (1.0 - fsc)
    n = h.num.shape[-2]
    nr = n // 2 + 1
    K = h.num.shape[1]
    D = 0.5 * (h.den[0] + h.den[1])
    D = np.broadcast_to(D, (K, n, n // 2 + 1)).reshape(K, -1)
    ring = tf.ring_index(n).ravel()
    keep = ring < nr
    r = ring[keep]
    s1 = np.stack([np.bincount(r, weights=row, minlength=nr) for row in D[:, keep]]) if K else np.zeros((0, nr))
    s2 = np.stack([np.bincount(r, weights=row**2, minlength=nr) for row in D[:, keep]]) if K else np.zeros((0, nr))
    cnt = np.bincount(r, minlength=nr)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv_eta = np.where(s1 > 0, s2 / np.maximum(s1, 1e-300) / snr_half, 1.0)
    inv_eta = np.maximum(inv_eta, 1e-3 * s1 / cnt)
    return inv_eta, fsc


def _finish(h: HalfSums, averager: str, n: int, workers: int = 1) -> np.ndarray:
    """Class averages ``(K, n, n)`` float64 from half sums: ``Σ c·F / (Σ w + ε)`` with ε =
    ``CTF_WEIGHT_EPS`` (``ctf.weight``) or the automatic ``1/η(r)`` (``ctf.weight.autofilt``,
    zero beyond the last ring, as EMAN2)."""
    num = h.num[0] + h.num[1]
    den = h.den[0] + h.den[1]
    if averager == "ctf.weight":  # (only called with CTF)
        F = num / (den + CTF_WEIGHT_EPS)
    else:
        inv_eta, _ = autofilter_noise_term(h)
        ring = tf.ring_index(n)
        nr = n // 2 + 1
        term = np.where(ring[None] < nr, inv_eta[:, np.minimum(ring, nr - 1)], np.inf)
        with np.errstate(invalid="ignore", divide="ignore"):
            F = np.where(np.isfinite(term), num / (den + term), 0.0)
    return sfft.irfft2(F, s=(n, n), workers=workers)


def average(images: np.ndarray, label: np.ndarray, use: np.ndarray, K: int, averager: Option | str, *,
            ctf: ParticleCTF | None = None, alpha=0.0, mirror=0.0, workers: int = 1,
            return_halves: bool = False):
    """Average ``images[i]`` (N, n, n) with ``use[i]`` into class ``label[i]``: ``(K, n, n)`` float32.

    Averagers (EMAN2 names, docs/algorithm.md §3.8; empty classes give zero images):

    * ``mean``: pixel mean. ``median``: pixel median.
    * ``ctf.weight``: Wiener-style CTF correction ``IFFT(Σ c_i F_i / (Σ CTF_i² + 0.1))``
      (``c`` = CTF, |CTF| for phase-flipped, 1 for premultiplied images); without CTF the mean.
    * ``ctf.weight.autofilt``: members alternate between two halves; the half-set FSC per ring
      sets the Wiener term ``1/η(r)`` (:func:`autofilter_noise_term`), output
      ``IFFT(Σ c_i F_i / (Σ CTF_i² + 1/η(r)))``, 0 beyond ring n/2. Without CTF
      (``c = CTF² = 1``) this is the mean low-pass filtered by ``snr/(snr+1)``, ``snr =
      2·FSC/(1−FSC)``: EMAN2's filter, on the scale of the mean (EMAN2's output is the *sum* of
      the two half averages, about twice that). A class with one member gets that member.

    ``ctf``: per-image CTF (:class:`r2d.ctf.ParticleCTF`, same order as ``images``), used by
    the ``ctf.*`` averagers only. ``alpha``, ``mirror`` (scalars or (N,)): the transform each
    image has undergone (the CTF follows it, see :func:`r2d.ctf.aligned_defocus_angle`).
    ``return_halves``: also return the :class:`HalfSums` behind the average (for resolution);
    for ``mean``/``median`` they are plain half sums, for the ``ctf.*`` averagers CTF-weighted.
    """
    images = np.asarray(images, dtype=np.float32)
    acc = Accumulator(images.shape[-1], label, use, K, averager, ctf=ctf, workers=workers)
    acc.add(np.arange(len(images)), images, alpha, mirror)
    return acc.finish(return_halves)


class Accumulator:
    """Class averages built block by block (the members never all in memory at once).

    ``label``, ``use`` (N,) describe the whole set; :meth:`add` takes the aligned images of
    any subset of rows (each row once), :meth:`finish` gives what :func:`average` returns.
    Half sets come from the whole set, so any split into blocks gives the same sums. The
    ``median`` averager has to keep its members (it cannot be summed).
    """

    def __init__(self, n: int, label, use, K: int, averager: Option | str, *, ctf: ParticleCTF | None = None,
                 workers: int = 1):
        self.name = averager.name if isinstance(averager, Option) else str(averager)
        if self.name not in ("mean", "median", "ctf.weight", "ctf.weight.autofilt"):
            raise ValueError(f"unknown averager {self.name!r}")
        self.n, self.K, self.workers = n, K, workers
        self.label = np.asarray(label)
        self.use = np.asarray(use, dtype=bool)
        self.ctf_mode = self.name.startswith("ctf.") and (ctf is not None or self.name == "ctf.weight.autofilt")
        self.ctf = ctf if self.ctf_mode else None
        self.half = half_index(self.label, self.use)
        nk = n // 2 + 1
        self.halves = HalfSums(np.zeros((2, K, n, nk), np.complex128),
                               np.zeros((2, K, n, nk) if self.ctf is not None else (2, K, 1, 1)),
                               np.zeros((2, K)))
        cnt = np.bincount(self.label[self.use & (self.label >= 0)], minlength=K)
        self.single = cnt == 1
        self.single_img = np.zeros((K, n, n), np.float64)
        self.median_rows: list = []

    def add(self, rows, images, alpha=0.0, mirror=0.0) -> None:
        """Add the aligned ``images`` (b, n, n) of rows ``rows`` (b,) of the whole set."""
        rows = np.asarray(rows)
        images = np.asarray(images, dtype=np.float32)
        b = len(rows)
        alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (b,))
        mirror = np.broadcast_to(np.asarray(mirror, dtype=np.float64), (b,))
        lab, use, half = self.label[rows], self.use[rows], self.half[rows]
        ctf = None if self.ctf is None else self.ctf.take(rows)
        half_sums(images, lab, use, self.K, ctf=ctf, alpha=alpha, mirror=mirror, workers=self.workers, half=half,
                  into=self.halves)
        one = use & (lab >= 0) & self.single[np.maximum(lab, 0)]
        self.single_img[lab[one]] = images[one]
        if self.name == "median":
            self.median_rows.append((lab[use & (lab >= 0)], images[use & (lab >= 0)].copy()))

    def finish(self, return_halves: bool = False):
        n, K = self.n, self.K
        if self.ctf_mode:
            out = _finish(self.halves, self.name, n, self.workers)
            if self.name == "ctf.weight.autofilt":  # a class with one member: the member itself (EMAN2)
                out[self.single] = self.single_img[self.single]
        elif self.name == "median":
            out = np.zeros((K, n, n))
            if self.median_rows:
                lab = np.concatenate([r[0] for r in self.median_rows])
                imgs = np.concatenate([r[1] for r in self.median_rows])
                for k in np.unique(lab):  # loop over classes; the median itself is vectorised over pixels
                    out[k] = np.median(imgs[lab == k], axis=0)
        else:  # mean, and ctf.weight without CTF: the sum of both halves over the member count
            cnt = self.halves.count.sum(axis=0)
            F = self.halves.num[0] + self.halves.num[1]
            out = sfft.irfft2(F, s=(n, n), workers=self.workers) / np.maximum(cnt, 1)[:, None, None]
        out = out.astype(np.float32)
        if not return_halves:
            return out
        return out, self.halves
