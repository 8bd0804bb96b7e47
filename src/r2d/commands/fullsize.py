"""Full-size class averages from a run's transforms (step 11: ``classes_final``).

Re-averages every class from the original particles at their own box and pixel size with the
classes and transforms of a result table (``resultmx_YY``, measured on the run's working
stack): no alignment, the shifts scaled from the table's images (its ``box`` attribute) to
the input's, the configured averager and normaliser, CTF at the input's pixel size. Writes
the averages (headers as ``r2d average``: members, ``resolution`` and ``fsc_half`` from
these particles' half sets) and, with ``--resultmx``, the table again with its shifts in
input pixels. ``--chunk i-of-k`` splits the classes as ``r2d average`` does (the same
classes per chunk), and ``r2d gather`` merges the chunks.

  $ r2d fullsize particles.star r2d_01/resultmx_08.h5 -o r2d_01/classes_final.hdf \\
        --resultmx r2d_01/resultmx_final.h5
"""

from __future__ import annotations

import logging

import numpy as np

from r2d import io
from r2d.average import chunk_label
from r2d.commands._common import add_mask, add_threads
from r2d.commands.average import particle_ctf, write_result
from r2d.errors import InputError
from r2d.fullsize import fixed_averages
from r2d.masks import particle_mask
from r2d.io import ParticleRows

log = logging.getLogger(__name__)


def add_args(p):
    p.add_argument("input", help="the original particles (any stack r2d reads)")
    p.add_argument("resultmx", help="result table of the iteration (resultmx_YY.h5)")
    p.add_argument("-o", "--output", required=True, help="class averages (.hdf)")
    p.add_argument("--resultmx", dest="out_resultmx", metavar="FILE.h5",
                   help="also write the result table with shifts in input pixels")
    p.add_argument("--apix", type=float, default=None, help="pixel size (Å) if the input has none")
    p.add_argument("--averager", default="ctf.weight.autofilt", help="classaverager")
    p.add_argument("--normproc", default="normalize.edgemean", help="classnormproc")
    p.add_argument("--chunk", default=None, help="only the classes of chunk i-of-k (as r2d average)")
    add_mask(p)
    add_threads(p)


def main(args):
    stack = io.open_stack(args.input)
    res = io.read_matrix(args.resultmx)
    attrs = io.read_matrix_attrs(args.resultmx)
    if "box" not in attrs:
        raise InputError(f"{args.resultmx}: no 'box' attribute, so the pixels of its shifts are unknown; "
                         "remake it with this r2d version (snakemake --forcerun classes)")
    scale = stack.box / int(attrs["box"])
    particle = np.asarray(res["particle"], dtype=np.int64)
    if len(particle) and particle.max() >= stack.n:
        raise InputError(f"{args.resultmx}: particle indices up to {particle.max()} but {args.input} has "
                         f"{stack.n} particles; is it the run's input?")
    label = np.asarray(res["class"], dtype=np.int64)
    n_classes = int(label.max(initial=-1)) + 1
    if args.chunk:
        label = chunk_label(label, args.chunk)
    apix = stack.pixel_size or args.apix
    log.info("%s: %d classes, %d particles of %d px (shifts x %.4g from the %d px working images)",
             args.chunk or "all", len(np.unique(label[label >= 0])), int((label >= 0).sum()), stack.box, scale,
             int(attrs["box"]))
    out = fixed_averages(
        ParticleRows(stack, particle), label, res["used"] != 0,
        tuple(res[key] for key in ("dalpha", "dx", "dy", "mirror")), res["score"], scale=scale,
        averager=args.averager, normproc=args.normproc,
        ctf=particle_ctf(stack, particle, apix, args.averager), apix=apix, workers=args.threads,
        n_classes=n_classes, mask_radius=particle_mask(stack.box, args.mask_diameter, apix)[1])
    write_result(out, particle, stack, apix, args.output, args.out_resultmx, args.chunk)
