"""Align every particle to every alignment reference and score it (step 7, artifact ``simmx_YY``).

Output datasets, each (N, A) float32 (row = particle, column = aliref): ``score`` (simcmp of
the particle against the aligned aliref, lower is better), ``dx, dy, dalpha, mirror``: the
transform that brings the **particle into the aliref frame** (T(particle) ≈ aliref, EMAN2's
MTR convention, degrees and pixels); plus ``particle`` (N,). Excluded particles get score
+inf. ``--chunk i-of-k`` computes only that particle range (the gather step concatenates).

  $ r2d simmx r2d_01/aliref_01.hdf particles.mrcs -o r2d_01/simmx_01.h5 --align rotate_translate_tree
"""

from __future__ import annotations

import logging

import numpy as np

from r2d import io
from r2d.align import align
from r2d.average import center_shift
from r2d import transforms as tf
from r2d.progress import blocks
from r2d.commands._common import add_exclude, add_threads
from r2d.io import read_exclude, read_good_particles, stack_weight

log = logging.getLogger(__name__)


def add_args(p):
    p.add_argument("refs", help="aliref_YY.hdf")
    p.add_argument("input", help="particle stack")
    p.add_argument("-o", "--output", required=True, help="simmx_YY.h5")
    p.add_argument("--align", default="rotate_translate_tree", help="simalign")
    p.add_argument("--aligncmp", default="ccc", help="simaligncmp")
    p.add_argument("--ralign", default=None, help="simralign (refine or None)")
    p.add_argument("--raligncmp", default="dot", help="simraligncmp")
    p.add_argument("--cmp", default="ccc", help="simcmp")
    p.add_argument("--shrink", type=int, default=0, help="Fourier-shrink factor for the search (0/1: off)")
    p.add_argument("--chunk", default=None, help="only particles of chunk i-of-k")
    p.add_argument("--candidates", type=int, default=None,
                   help="finer-level search only for each particle's best N references of the coarse "
                        "level, halved at each further level down to 4 (the others get score +inf); "
                        "default: all")
    p.add_argument("--center", action="store_true",
                   help="centre the references (xform.center) for the search; the stored transforms "
                        "still bring the particles into the references' own frame")
    add_exclude(p)
    add_threads(p)


def main(args):
    stack = io.open_stack(args.input)
    refs = io.read_image_stack(args.refs)
    heads = io.read_image_headers(args.refs)
    n = len(stack)
    lo, hi = io.chunk_range(args.chunk, n) if args.chunk else (0, n)
    idx = np.arange(lo, hi)
    excl = read_exclude(args.exclude, n)
    todo = np.setdiff1d(idx, excl)
    A = len(refs)
    out = {k: np.zeros((hi - lo, A), dtype=np.float32) for k in ("dx", "dy", "dalpha", "mirror")}
    out["score"] = np.full((hi - lo, A), np.inf, dtype=np.float32)
    # σ = 0 references can never be the best match (EMAN2 quirk fixed: +inf, not -1e38)
    flat = refs.reshape(A, -1)
    good = flat.std(axis=1) > 0
    repr_ = np.array([h.get("ptcl_repr", 0) for h in heads], dtype=np.float64)
    cx = cy = np.zeros(A, dtype=int)
    if args.center:  # a small maxshift then suffices against averages that drifted off-centre
        cx, cy = center_shift(refs, "xform.center")
        refs = tf.integer_shift(refs, cx, cy)
    weight = stack_weight(stack, workers=args.threads)
    refs = tf.radial_filter(refs, weight)
    for blo, bhi in blocks(len(todo), io.image_block(stack.box), "simmx"):
        parts, sel, bad = read_good_particles(stack, todo[blo:bhi])  # bad ones: score +inf, as excluded
        excl = np.union1d(excl, bad)
        if not len(sel):
            continue
        parts = tf.radial_filter(parts, weight, workers=args.threads)
        a = align(parts, refs[good], args.align, args.aligncmp, ralign=args.ralign, raligncmp=args.raligncmp,
                  shrink=args.shrink, apix=stack.pixel_size, candidates=args.candidates, ref_ptcl_repr=repr_[good], workers=args.threads)
        rows = sel - lo
        cols = np.flatnonzero(good)
        alpha, tx, ty, mirror = a.params()
        if args.center:  # T = shift(-c) ∘ T_centred: into the given references' frame
            alpha, tx, ty, mirror = tf.compose((alpha, tx, ty, mirror), (0.0, -cx[cols], -cy[cols], 0.0))
            alpha, tx, ty = (np.where(np.isneginf(a.corr), 0.0, v) for v in (alpha, tx, ty))
        for key, v in (("score", a.score), ("dx", tx), ("dy", ty), ("dalpha", alpha), ("mirror", mirror)):
            out[key][np.ix_(rows, cols)] = v
    out["score"] = np.where(np.isfinite(out["score"]) | np.isin(idx, excl)[:, None], out["score"], 1e24)
    out["particle"] = idx.astype(np.int64)
    io.write_matrix(args.output, out, {"artifact": "simmx", "chunk": args.chunk or "", "n_total": n})
