"""Compare image i of A with image i of B with an EMAN2 comparator; print one value per line.

Line i is EMAN2's A_i.cmp(NAME, B_i, OPTIONS): image i of A is EMAN2's 'this', image i of
B is 'to' (the order matters for frc:ampweight, phase:ampweight, optvariance,
sqeuclidean:normto=1). Values follow EMAN2's sign convention, lower is more similar
(correlations are printed negated: ccc of identical images is -1). Comparators: ccc, dot,
sqeuclidean, phase, frc, optvariance, with EMAN2's options (--cmp "frc:nweight=1",
"dot:normalize=1").

A and B are any stacks r2d reads (.mrcs/.mrc, EMAN2 .hdf, RELION .star, cryoSPARC .cs) with
the same box size and the same number of images, or B with a single image (compared with
every image of A). The images are compared as they are, not aligned (r2d align does that),
and not checked beyond a warning for NaN/Inf pixels.
frc and phase take A's pixel size for their resolution band (1 A/px when it has none, as
EMAN2); frc:nweight=1 takes B's ptcl_repr from an EMAN2 .hdf header.

  $ r2d cmp particles.mrcs projections.mrcs --cmp ccc
  $ r2d cmp classes.hdf refs.hdf --cmp frc:nweight=1 > frc.txt
"""

from __future__ import annotations

import logging
import sys

import numpy as np

from r2d import io
from r2d.cmp import compare
from r2d.commands.align import _parse, ptcl_repr
from r2d.errors import ConfigError, InputError

log = logging.getLogger(__name__)


def add_args(p):
    p.add_argument("a", metavar="A", help="image stack: EMAN2's 'this'")
    p.add_argument("b", metavar="B", help="image stack: EMAN2's 'to' (as many images as A, or one)")
    p.add_argument("--cmp", default="ccc", help="comparator with options (default %(default)s)")


def main(args):
    opt = _parse("--cmp", args.cmp, "comparator")
    if opt is None:
        raise ConfigError(f"--cmp {args.cmp!r}: give a comparator (ccc, dot, sqeuclidean, phase, frc, optvariance)")
    sa, sb = io.open_stack(args.a), io.open_stack(args.b)
    if sa.box != sb.box:
        raise InputError(f"{args.a} has {sa.box} px images but {args.b} has {sb.box} px; the images "
                         "compared must have the same box size")
    if len(sb) not in (1, len(sa)):
        raise InputError(f"{args.a} has {len(sa)} images and {args.b} has {len(sb)}; give stacks of equal "
                         "length (image i is compared with image i) or a B of one image")
    a, b = sa.read(slice(None)), sb.read(slice(None))
    for stack, images in ((sa, a), (sb, b)):
        bad = np.flatnonzero(~np.isfinite(images.reshape(len(images), -1)).all(axis=1))
        if len(bad):
            log.warning("%s: image(s) %s have NaN/Inf pixels; their values are not meaningful", stack.source,
                        ", ".join(map(str, bad[:20])) + (", ..." if len(bad) > 20 else ""))
    values = compare(a, b, opt, apix=sa.pixel_size, ptcl_repr=ptcl_repr(args.b, len(sb)))
    sys.stdout.write("".join(f"{v:.9g}\n" for v in values))
