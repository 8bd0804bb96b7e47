"""Aligners by EMAN2 name (:func:`align`), their shift bounds and scoring (:func:`score_pairs`).

:func:`align` maps an aligner option (``rotational``, ``translational``, ``rotate_translate``,
``rotate_translate_flip``, ``rotate_translate_tree``) to a :func:`r2d.align.search`, runs the
optional second stage ``refine`` (:func:`r2d.align.refine`) and scores every pair with the
comparator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from r2d import transforms as tf
from r2d.align.refinement import _pair_index, refine
from r2d.align.tree import search
from r2d.cmp import compare
from r2d.errors import ConfigError
from r2d.options import Option, parse


@dataclass(frozen=True)
class Alignment:
    """Best transforms ``T(particle) ≈ reference`` (angles in degrees, shifts in pixels).

    All arrays share one shape: ``(N, R)`` for all-versus-all, ``(N,)`` for pairwise.
    ``score`` is the comparator value (lower is better); ``corr`` the search correlation.
    """

    alpha: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    mirror: np.ndarray
    score: np.ndarray
    corr: np.ndarray

    def params(self, index=...):
        return (self.alpha[index], self.tx[index], self.ty[index], self.mirror[index])


def tree_reach(n: int, maxshift: float) -> float:
    """Translation range (px) that EMAN2's ``rotate_translate_tree`` actually searches
    (docs/algorithm.md §3.7.5).

    Coarse level ``ss = 32``: ``maxshift // 32`` coarse pixels of ``n/32`` px each; every finer
    level ``ss = 64, 128, … ≤ n`` adds ±4 of its pixels (``n/ss`` px). n=64, maxshift=21 → 4;
    n=128, 42 → 16; n=256, 85 → 44. Boxes below 64 px: ±4 px.
    """
    if n < 64:
        return 4.0
    reach = (int(maxshift) // 32) * (n / 32)
    ss = 64
    while ss <= n:
        reach += 4 * n / ss
        ss *= 2
    return float(reach)


def default_maxshift(opt: Option | None, n: int) -> float:
    """Searched translation bound (px) of an aligner option.

    ``maxshift < 0`` → EMAN2's defaults (``n/4``; tree ``3n/8``). r2d honours ``maxshift`` as a
    true bound ``|t| ≤ maxshift`` (docs/algorithm.md §5.2). Limiting the tree aligner to EMAN2's
    effective range (:func:`tree_reach`, ±4 px at 64 px) was measured on the 70S benchmark and
    made the classification worse (k-means: view error 45–48° instead of 36–38°; one round of
    multi-reference assignment from the initial classes: 39–40° instead of 28–29° with ±12 px):
    class averages are not centred alike, so the needed shifts exceed the particles' own.
    """
    ms = opt.get("maxshift", -1) if opt is not None else -1
    if ms is None or ms < 0:
        ms = n / 4 if opt is None or opt.name != "rotate_translate_tree" else 3 * n / 8
    return float(ms)


def _search_kwargs(opt: Option, n: int) -> dict:
    name = opt.name
    if name == "rotational":
        return dict(maxshift=0.0, mirror=False, rotate=True)
    if name == "translational":
        return dict(maxshift=default_maxshift(opt, n), mirror=False, rotate=False)
    if name == "rotate_translate":
        return dict(maxshift=default_maxshift(opt, n), mirror=False, rotate=True)
    if name == "rotate_translate_flip":
        return dict(maxshift=default_maxshift(opt, n), mirror=True, rotate=True)
    if name == "rotate_translate_tree":
        return dict(maxshift=default_maxshift(opt, n), mirror=bool(opt.get("flip", 1)), rotate=True)
    raise ValueError(f"aligner {name!r} cannot be used as a first-stage aligner")


def align(particles, refs, aligner: Option | str, cmp: Option | str = "ccc", *, pairs=None,
          ralign: Option | str | None = None, raligncmp: Option | str | None = None,
          shrink: int = 1, apix: float | None = None, ref_ptcl_repr=None, candidates: int | None = None,
          prior=None, cache: dict | None = None, workers: int = 1) -> Alignment:
    """Align particles to references with an EMAN2-named aligner and score with ``cmp``.

    Returns an :class:`Alignment` with ``T(particle) ≈ reference`` and
    ``score = cmp(particle, T⁻¹(reference))`` (the particle stays unresampled, as in
    e2simmx). For plain ``ccc`` the score is ``−corr``, the search's own correlation
    coefficient over the disc ``r < n/2 − 1`` (no second resampling). ``shrink > 1`` Fourier-downsamples both stacks for the search and scales the
    translations back. ``pairs``, ``candidates``, ``prior`` (a local search around an
    earlier answer) and ``cache`` as in :func:`search`.
    """
    aligner = parse(aligner, "aligner") if isinstance(aligner, str) else aligner
    cmp = parse(cmp, "comparator") if isinstance(cmp, str) else cmp
    particles = np.asarray(particles, dtype=np.float32)
    refs = np.asarray(refs, dtype=np.float32)
    n = particles.shape[-1]
    kw = _search_kwargs(aligner, n)
    sp_, sr_ = particles, refs
    f = 1.0
    if shrink and shrink > 1:
        m = int(2 * round(n / shrink / 2))
        sp_ = tf.fourier_crop(particles, m, workers=workers)
        sr_ = tf.fourier_crop(refs, m, workers=workers)
        f = n / m
        kw["maxshift"] = kw["maxshift"] / f
        if prior is not None:
            prior = (prior[0], np.asarray(prior[1]) / f, np.asarray(prior[2]) / f, prior[3])
    alpha, tx, ty, mir, corr = search(sp_, sr_, pairs=pairs, candidates=candidates, prior=prior, cache=cache,
                                      workers=workers, **kw)
    tx, ty = tx * f, ty * f
    ralign = parse(ralign, "aligner") if isinstance(ralign, str) else ralign
    refined = ralign is not None
    if refined:
        if ralign.name != "refine":
            raise ConfigError(f"the second-stage aligner must be 'refine', not '{ralign.name}'")
        rcmp = parse(raligncmp, "comparator") if isinstance(raligncmp, str) else raligncmp
        rcmp = parse("ccc", "comparator") if rcmp is None else rcmp
        ms = ralign.get("maxshift", -1)
        pruned = np.isneginf(corr)
        alpha, tx, ty, corr = refine(particles, refs, (alpha, tx, ty, mir), pairs=pairs, cmp=rcmp,
                                     maxshift=n / 4 if ms is None or ms < 0 else float(ms),
                                     precision=float(ralign.get("precision", 0.04)), workers=workers)
        corr = np.where(pruned, -np.inf, corr)
    if cmp.name == "ccc" and not cmp.params and not refined:
        # the search already maximised the correlation coefficient over the disc r < n/2-1;
        # resampling every reference again to score it with ccc would only repeat that number
        score = -corr
    else:
        score = score_pairs(particles, refs, (alpha, tx, ty, mir), cmp, pairs=pairs, apix=apix, ref_ptcl_repr=ref_ptcl_repr,
                            workers=workers)
        score = np.where(np.isneginf(corr), np.inf, score)
    return Alignment(alpha, tx, ty, mir, score, corr)


def score_pairs(particles, refs, params, cmp: Option, *, pairs=None, apix=None, ref_ptcl_repr=None,
                batch: int = 2048, workers: int = 1) -> np.ndarray:
    """``cmp(particle_i, T_ij⁻¹(ref_j))`` for every pair; shape of ``params[0]``."""
    alpha = np.asarray(params[0])
    pi, ri = _pair_index(alpha.shape, pairs)
    flat = [np.asarray(p).reshape(-1) for p in params]
    out = np.empty(pi.size)
    reprs = None if ref_ptcl_repr is None else np.asarray(ref_ptcl_repr, dtype=np.float64)
    for lo in range(0, pi.size, batch):
        hi = min(pi.size, lo + batch)
        inv = tf.invert(*(p[lo:hi] for p in flat))
        moved = tf.transform(refs[ri[lo:hi]], *inv, workers=workers)
        out[lo:hi] = compare(particles[pi[lo:hi]], moved, cmp, apix=apix,
                             ptcl_repr=None if reprs is None else reprs[ri[lo:hi]])
    return out.reshape(alpha.shape)
