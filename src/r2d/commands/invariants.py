"""Rotational/translational/mirror invariants of the particles (step 0b, artifact ``input_fp``).

Writes an HDF5 matrix file with datasets ``fp`` (N', rows, cols) float32 (EMAN1 rotational
footprints, docs/algorithm.md §3.2) and ``particle`` (N',) int64, the input index of each row.
If the input has more than ``nmax = max(2000, 10·ncls)`` particles, every s-th particle is
used (s = N // nmax), as e2refine2d does; excluded particles are left out.

  $ r2d invariants particles.mrcs -o r2d_01/input_fp.h5 --ncls 32 --threads 2
"""

from __future__ import annotations

import logging

import numpy as np

from r2d import io
from r2d.errors import InputError
from r2d.commands._common import add_exclude, add_threads
from r2d.io import read_exclude, read_good_particles
from r2d.invariants import footprint
from r2d.progress import blocks

log = logging.getLogger(__name__)


def subset_indices(n: int, ncls: int, exclude: np.ndarray) -> np.ndarray:
    """Indices of the particles used by the initial stage (step 0a), minus excluded ones."""
    nmax = max(2000, 10 * ncls)
    step = n // nmax if n > nmax else 1
    idx = np.arange(0, n, step)
    return np.setdiff1d(idx, exclude)


def add_args(p):
    p.add_argument("input", help="particle stack (.mrcs/.mrc/.hdf/.star/.cs)")
    p.add_argument("-o", "--output", required=True, help="output input_fp.h5")
    p.add_argument("--ncls", type=int, default=32, help="number of classes (sets the subset size)")
    add_exclude(p)
    add_threads(p)


def main(args):
    stack = io.open_stack(args.input)
    excl = read_exclude(args.exclude, len(stack))
    idx = subset_indices(len(stack), args.ncls, excl)
    log.info("footprints of %d of %d particles", len(idx), len(stack))
    fps, kept = [], []
    for lo, hi in blocks(len(idx), 2048, "input_fp footprints"):  # NaN/Inf or zero-variance particles are left out
        parts, good, _ = read_good_particles(stack, idx[lo:hi])
        if len(good):
            fps.append(footprint(parts, workers=args.threads))
            kept.append(good)
    if not kept:
        raise InputError(f"{args.input}: no usable particle (all have NaN/Inf pixels or zero variance)")
    fp, idx = np.concatenate(fps), np.concatenate(kept)
    io.write_matrix(args.output, {"fp": fp.astype(np.float32), "particle": idx.astype(np.int64)},
                    {"artifact": "input_fp", "input": str(stack.source)})
