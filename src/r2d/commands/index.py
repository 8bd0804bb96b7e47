"""Write the particle index: where every particle's image is, and its CTF (step 0a).

Reads the particle input once (MRC stack, EMAN2 HDF, RELION STAR, cryoSPARC CS) and writes an
HDF5 table (``r2d.io.write_particle_index``): the image files, each particle's file and image
number, its CTF parameters and the pixel size. Every later step opens the particles through it,
so a STAR or CS table is parsed once per run instead of once per job. Giving the index to any
r2d command instead of the input gives the same images, CTF and pixel size.

  $ r2d index particles.star -o r2d_01/particles.h5
"""

from __future__ import annotations

import logging

from r2d import io

log = logging.getLogger(__name__)


def add_args(p):
    p.add_argument("input", help="particles: .mrcs/.mrc, EMAN2 .hdf, RELION .star or cryoSPARC .cs")
    p.add_argument("-o", "--output", required=True, help="particle index (.h5)")


def main(args) -> int:
    stack = io.open_stack(args.input)
    io.write_particle_index(stack, args.output)
    ctf = stack.ctf_params()
    log.info("%s: %d particles of %d px in %d file(s), pixel size %s, %s", args.input, stack.n, stack.box,
             len(stack.files), f"{stack.pixel_size:g} Å" if stack.pixel_size else "unknown",
             "with CTF parameters" if ctf else "no CTF parameters")
    return 0
