"""Class stability from repeats of class averaging: how reproducible each member's alignment is.

FINAL is a result table (``resultmx_YY.h5`` of a run, or ``r2d average --resultmx``). Each
REPEAT is the result table of ``r2d average`` on FINAL's classes with ``--random-start SEED``:
each class is bootstrapped again from its members in a random order (one seed per repeat).
For every repeat and member, the error is the RMS displacement in pixels, over a circle of
``--radius`` px (default box/4), between the member's repeat-to-final frame map and its
class's consensus map (``r2d.stability``). A member agrees with a repeat when that error is at
most ``--threshold`` px. OUT (HDF5, written atomically) holds, per row of FINAL:

  particle   input index
  class      FINAL's class (-1 = none)
  agreement  share of the repeats the member agrees with (0-1; NaN outside any class)
  spread     RMS of its errors over the repeats, px

and, per class 0..K-1, ``stability``: the mean agreement of the class's members (near 1 for a
class of one view, lower for a mixture of views, near 0 for an average of noise; NaN for an
empty class). A table of the classes, least stable first, is printed.

  $ for s in 1 2 3; do r2d average particles.h5 r2d_01/resultmx_08.h5 -o rep$s.hdf \\
        --resultmx rep$s.h5 --random-start $s; done
  $ r2d stability r2d_01/resultmx_08.h5 rep1.h5 rep2.h5 rep3.h5 -o stability.h5
"""

from __future__ import annotations

import numpy as np

from r2d import io
from r2d.errors import InputError
from r2d.stability import STABLE_PX, consensus_errors, summarise

_COLUMNS = ("class", "particle", "dalpha", "dx", "dy", "mirror")


def add_args(p):
    p.add_argument("final", metavar="FINAL", help="result table of the classes (resultmx .h5)")
    p.add_argument("repeats", metavar="REPEAT", nargs="+", help="result tables of r2d average --random-start")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="stability table to write (.h5)")
    p.add_argument("--radius", type=float, default=None, help="particle radius in px (default: box/4)")
    p.add_argument("--threshold", type=float, default=STABLE_PX,
                   help="largest error (px) of a member that agrees with a repeat (default %(default)s)")


def _table(path):
    t = io.read_matrix(path)
    missing = [c for c in _COLUMNS if c not in t]
    if missing:
        raise InputError(f"{path}: no {', '.join(missing)} column; give a result table (resultmx .h5, "
                         "r2d average --resultmx)")
    return t


def main(args):
    final = _table(args.final)
    reps = [_table(r) for r in args.repeats]
    for path, r in zip(args.repeats, reps):
        if not np.array_equal(r["particle"], final["particle"]):
            raise InputError(f"{path}: its particles are not those of {args.final}; run r2d average on "
                             f"{args.final} itself")
    box = io.read_matrix_attrs(args.final).get("box")
    if args.radius is None and box is None:
        raise InputError(f"{args.final}: no box attribute; give --radius")
    radius = float(args.radius if args.radius is not None else float(box) / 4)
    label = final["class"].astype(np.int64)
    K = int(label.max(initial=-1)) + 1
    errors = np.array([consensus_errors(final, r, radius, args.threshold) for r in reps])
    agreement, spread, stability = summarise(errors, label, K, args.threshold)
    io.write_matrix(args.output, {
        "particle": final["particle"], "class": label.astype(np.int32), "agreement": agreement,
        "spread": spread, "stability": stability},
        {"artifact": "stability", "repeats": len(reps), "radius": radius, "threshold": float(args.threshold)})
    members = np.bincount(label[label >= 0], minlength=K)
    print(f"{'class':>5} {'members':>7} {'stability':>9}")
    for k in sorted(np.flatnonzero(members), key=lambda k: (stability[k], k)):
        print(f"{k + 1:5d} {members[k]:7d} {stability[k]:9.2f}")
    return 0
