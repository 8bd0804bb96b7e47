"""Write the particle index: where every particle's image is, and its CTF (step 0a).

Reads the particle input once (MRC stack, EMAN2 HDF, RELION STAR, cryoSPARC CS) and writes an
HDF5 table (``r2d.io.write_particle_index``): the image files, each particle's file and image
number, its CTF parameters and the pixel size. Every later step opens the particles through it,
so a STAR or CS table is parsed once per run instead of once per job. Giving the index to any
r2d command instead of the input gives the same images, CTF and pixel size.

With ``--maxres`` (Å) and ``--working FILE.mrcs`` it also writes the run's **working stack**
(:mod:`r2d.working`): every particle Fourier-cropped so that Nyquist is ``maxres``, streamed to
FILE in one pass over the input; the index then points at it, with the working pixel size, the
input's CTF parameters and root attributes ``input_box``, ``input_pixel_size``, ``maxres``,
``working_box``. When the input is not finer than ``maxres`` no working stack is written and
the index points at the input, as without ``--maxres``.

  $ r2d index particles.star -o r2d_01/particles.h5 --maxres 8 --working r2d_01/working.mrcs
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from r2d import io
from r2d.commands._common import add_threads
from r2d.errors import ConfigError
from r2d.io.images import _open_image_file
from r2d.working import working_geometry, write_working_stack

log = logging.getLogger(__name__)


def add_args(p):
    p.add_argument("input", help="particles: .mrcs/.mrc, EMAN2 .hdf, RELION .star or cryoSPARC .cs")
    p.add_argument("-o", "--output", required=True, help="particle index (.h5)")
    p.add_argument("--maxres", type=float, default=None,
                   help="working resolution (Å): write a working stack Fourier-cropped to Nyquist = maxres "
                        "(needs --working; none or 0: the full resolution)")
    p.add_argument("--working", metavar="FILE.mrcs", help="where the working stack goes")
    p.add_argument("--apix", type=float, default=None, help="pixel size (Å) if the input has none")
    add_threads(p)


def main(args) -> int:
    stack = io.open_stack(args.input)
    ctf = stack.ctf_params()
    log.info("%s: %d particles of %d px in %d file(s), pixel size %s, %s", args.input, stack.n, stack.box,
             len(stack.files), f"{stack.pixel_size:g} Å" if stack.pixel_size else "unknown",
             "with CTF parameters" if ctf else "no CTF parameters")
    apix = stack.pixel_size or args.apix
    w = working_geometry(stack.box, apix, args.maxres)
    log.info("%s", w.note)
    attrs = {"input_box": stack.box, "input_pixel_size": np.nan if apix is None else apix,
             "maxres": np.nan if w.maxres is None else w.maxres, "working_box": w.box}
    if not w.cropped:
        io.write_particle_index(stack, args.output, attrs)
        return 0
    if not args.working:
        raise ConfigError(f"--maxres {args.maxres:g} crops the {stack.box} px particles to {w.box} px: "
                         "give --working FILE.mrcs for the working stack")
    with io.stream_mrcs(args.working, (stack.n, w.box, w.box), pixel_size=w.apix) as out:
        write_working_stack(stack, out, w.box, workers=args.threads)
    working = io.Stack(args.working, [_open_image_file(Path(args.working))], pixel_size=w.apix, ctf=ctf,
                       source=stack.source)
    io.write_particle_index(working, args.output, attrs)
    log.info("working stack %s: %d particles of %d px at %.4g Å/px", args.working, stack.n, w.box, w.apix)
    return 0
