"""Align every particle to every alignment reference and score it (step 7, artifact ``simmx_YY``).

Output datasets, each (N, A) float32 (row = particle, column = aliref): ``score`` (simcmp of
the particle against the aligned aliref, lower is better), ``dx, dy, dalpha, mirror``: the
transform that brings the **particle into the aliref frame** (T(particle) ≈ aliref, EMAN2's
MTR convention, degrees and pixels); plus ``particle`` (N,). Excluded particles get score
+inf. ``--chunk i-of-k`` computes only that particle range (the gather step concatenates).
The computation is the library's :func:`r2d.simmx.simmx_blocks`; this command reads the
inputs (particles block by block, unusable ones left out), calls it and writes the matrices.

  $ r2d simmx r2d_01/aliref_01.hdf particles.mrcs -o r2d_01/simmx_01.h5 --align rotate_translate_tree
"""

from __future__ import annotations

import logging

import numpy as np

from r2d import io
from r2d.commands._common import add_exclude, add_mask, add_threads
from r2d.io import read_exclude, read_good_particles, stack_weight
from r2d.progress import blocks
from r2d.masks import particle_mask
from r2d.simmx import simmx_blocks

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
    add_mask(p)
    add_threads(p)


def main(args):
    stack = io.open_stack(args.input)
    refs = io.read_image_stack(args.refs)
    heads = io.read_image_headers(args.refs)
    n = len(stack)
    lo, hi = io.chunk_range(args.chunk, n) if args.chunk else (0, n)
    idx = np.arange(lo, hi)
    todo = np.setdiff1d(idx, read_exclude(args.exclude, n))
    weight = stack_weight(stack, workers=args.threads)
    mask, _ = particle_mask(stack.box, args.mask_diameter, stack.pixel_size)
    out = simmx_blocks(_particle_blocks(stack, todo, lo), refs, hi - lo,
                       ptcl_repr=np.array([h.get("ptcl_repr", 0) for h in heads], dtype=np.float64),
                       weight=weight, center=args.center, mask=mask, aligner=args.align, aligncmp=args.aligncmp,
                       ralign=args.ralign, raligncmp=args.raligncmp, cmp=args.cmp, shrink=args.shrink,
                       candidates=args.candidates, apix=stack.pixel_size, workers=args.threads)
    out["particle"] = idx.astype(np.int64)
    io.write_matrix(args.output, out, {"artifact": "simmx", "n_total": n, **({"chunk": args.chunk} if args.chunk else {})})


def _particle_blocks(stack, todo, lo):
    """``(rows, images)`` of the usable particles ``todo`` (input indices), a block at a time;
    ``rows`` = index − ``lo``. Unusable ones (NaN/Inf, σ = 0) are left out: score +inf, as excluded."""
    for blo, bhi in blocks(len(todo), io.image_block(stack.box), "simmx"):
        parts, sel, _bad = read_good_particles(stack, todo[blo:bhi])
        if len(sel):
            yield sel - lo, parts
