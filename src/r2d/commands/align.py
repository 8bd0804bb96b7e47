"""Align particles to references with an EMAN2 aligner and score them (the engine on its own).

Every particle is aligned to every reference (or, with --pairwise, particle i to reference i
only) with --aligner, optionally refined with --ralign refine, and scored with --cmp. The
output file OUT (HDF5, written atomically) holds five float32 datasets, each of shape
(particles, references), or (particles,) with --pairwise:

  score   the --cmp value of the particle against the reference moved onto it,
          cmp(particle, T^-1(reference)), EMAN2's sign convention: lower is better
          (ccc without refinement: minus the search's correlation coefficient over the
          disc r < n/2-1)
  dalpha  rotation angle alpha of T, degrees
  dx, dy  translation of T, pixels
  mirror  1 where T mirrors x, else 0

T = (dalpha, dx, dy, mirror) is the transform that brings the particle onto the reference,
T(particle) ~ reference, in EMAN2's 2-D "MTR" form: rotate by alpha, then translate by
(dx, dy), then mirror x, about the box centre (n//2, n//2); the same parameters as EMAN2's
particle.align(ALIGNER, reference, ...)["xform.align2d"].get_params("2d") (alpha, tx, ty,
mirror). Attributes of the file: aligner, cmp, ralign, raligncmp, pairwise, particles, refs.

PARTICLES and REFS are any stacks r2d reads (.mrcs/.mrc, EMAN2 .hdf, RELION .star,
cryoSPARC .cs) with the same box size. Images with NaN/Inf pixels or zero variance are
reported and aligned as all-zero images. With a .star/.cs/.mrcs carrying a pixel size, frc and
phase use it for their resolution band (else 1 A/px, as EMAN2); an EMAN2 .hdf of class
averages gives frc:nweight=1 its ptcl_repr.

  $ r2d align particles.mrcs refs.hdf -o align.h5 --aligner rotate_translate_flip:maxshift=8
  $ r2d align particles.mrcs refs.mrcs -o pairs.h5 --pairwise --ralign refine --raligncmp ccc
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from r2d import io
from r2d.align import align
from r2d.commands._common import add_threads
from r2d.errors import ConfigError, InputError
from r2d.options import parse
from r2d.progress import blocks

log = logging.getLogger(__name__)

#: aligners that can be the first stage (refine only refines another's answer)
FIRST_STAGE = ("rotational", "translational", "rotate_translate", "rotate_translate_flip", "rotate_translate_tree")

DATASETS = ("score", "dalpha", "dx", "dy", "mirror")


def add_args(p):
    p.add_argument("particles", metavar="PARTICLES", help="particle stack (EMAN2's 'this')")
    p.add_argument("refs", metavar="REFS", help="reference stack (EMAN2's 'to'), same box as PARTICLES")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output .h5 with datasets score, dalpha, dx, dy, mirror")
    p.add_argument("--aligner", default="rotate_translate_flip",
                   help="EMAN2 aligner with options, one of " + ", ".join(FIRST_STAGE)
                        + " (default %(default)s; maxshift default n/4, tree 3n/8)")
    p.add_argument("--cmp", default="ccc",
                   help="comparator for the score: ccc, dot, sqeuclidean, phase, frc, optvariance, "
                        "with options (default %(default)s)")
    p.add_argument("--ralign", default=None, help="second-stage aligner: refine[:options] (default none)")
    p.add_argument("--raligncmp", default="ccc", help="comparator refine minimises (default %(default)s)")
    p.add_argument("--pairwise", action="store_true",
                   help="align particle i to reference i only (PARTICLES and REFS of equal length)")
    add_threads(p)


def _parse(flag: str, value, kind: str):
    return parse(value, kind, key=flag)


def _options(args):
    aligner = _parse("--aligner", args.aligner, "aligner")
    if aligner is None or aligner.name not in FIRST_STAGE:
        name = "None" if aligner is None else aligner.name
        raise ConfigError(f"--aligner {args.aligner!r}: '{name}' cannot be the first stage; use one of "
                          + ", ".join(FIRST_STAGE) + (" (refine goes in --ralign)" if name == "refine" else ""))
    cmp = _parse("--cmp", args.cmp, "comparator")
    if cmp is None:
        raise ConfigError(f"--cmp {args.cmp!r}: give a comparator (ccc, dot, sqeuclidean, phase, frc, optvariance)")
    ralign = _parse("--ralign", args.ralign, "aligner") if args.ralign else None
    if ralign is not None and ralign.name != "refine":
        raise ConfigError(f"--ralign {args.ralign!r}: the second-stage aligner must be 'refine', not '{ralign.name}'")
    raligncmp = _parse("--raligncmp", args.raligncmp, "comparator") if ralign is not None else None
    if ralign is not None and raligncmp is None:
        raise ConfigError(f"--raligncmp {args.raligncmp!r}: refine needs a comparator (e.g. ccc)")
    return aligner, cmp, ralign, raligncmp


def ptcl_repr(path, n: int):
    """``ptcl_repr`` of each image of an EMAN2 .hdf stack (0 where absent, or for other formats)."""
    path = Path(path)
    if path.suffix.lower() not in io.HDF_EXTENSIONS:
        return None
    try:
        heads = io.read_image_headers(path)
    except Exception:  # an r2d particle index or another HDF5 layout: no per-image headers
        return None
    if len(heads) != n:
        return None
    rep = np.array([float(h.get("ptcl_repr", 0) or 0) for h in heads])
    return rep if rep.any() else None


def read_all(stack, what: str) -> np.ndarray:
    """All images of ``stack``, float32; unusable ones (NaN/Inf, zero variance) reported and zeroed."""
    images = stack.read(slice(None))
    codes = io.image_problems(images)
    bad = np.flatnonzero(codes)
    if len(bad):
        shown = ", ".join(f"{int(b)} ({io.IMAGE_PROBLEMS[int(codes[b])]})" for b in bad[:20])
        log.warning("%s: %d %s image(s) with NaN/Inf pixels or zero variance, used as all-zero images: %s%s",
                    stack.source, len(bad), what, shown, ", ..." if len(bad) > 20 else "")
        images[codes != 0] = 0.0
    return images


def main(args):
    aligner, cmp, ralign, raligncmp = _options(args)
    parts = io.open_stack(args.particles)
    refstack = io.open_stack(args.refs)
    if parts.box != refstack.box:
        raise InputError(f"{args.particles} has {parts.box} px images but {args.refs} has {refstack.box} px; "
                         "particles and references must have the same box size (rescale one of them)")
    N, R = len(parts), len(refstack)
    if args.pairwise and N != R:
        raise InputError(f"--pairwise aligns particle i to reference i, but {args.particles} has {N} images "
                         f"and {args.refs} has {R}; give stacks of equal length or leave out --pairwise")
    if args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: give at least 1")
    refs = read_all(refstack, "reference")
    rep = ptcl_repr(args.refs, R)
    shape = (N,) if args.pairwise else (N, R)
    out = {k: np.zeros(shape, dtype=np.float32) for k in DATASETS}
    for lo, hi in blocks(N, io.image_block(parts.box), "align"):
        block = parts.read(np.arange(lo, hi))
        codes = io.image_problems(block)
        if codes.any():
            bad = np.flatnonzero(codes) + lo
            log.warning("%s: particle(s) %s with NaN/Inf pixels or zero variance, used as all-zero images",
                        parts.source, ", ".join(map(str, bad[:20])) + (", ..." if len(bad) > 20 else ""))
            block[codes != 0] = 0.0
        pairs = np.arange(lo, hi) if args.pairwise else None
        a = align(block, refs, aligner, cmp, pairs=pairs, ralign=ralign, raligncmp=raligncmp,
                  apix=parts.pixel_size, ref_ptcl_repr=rep, workers=args.threads)
        for key, v in zip(DATASETS, (a.score, a.alpha, a.tx, a.ty, a.mirror)):
            out[key][lo:hi] = v
    attrs = {"artifact": "align", "aligner": args.aligner, "cmp": args.cmp, "ralign": args.ralign or "",
             "raligncmp": args.raligncmp if ralign is not None else "", "pairwise": int(args.pairwise),
             "particles": str(args.particles), "refs": str(args.refs)}
    io.write_matrix(args.output, out, attrs)
    log.info("%s: %s alignments of %d particle(s) to %d reference(s)", args.output,
             "pairwise" if args.pairwise else "all-versus-all", N, R)
