"""Argument helpers shared by the subcommands (``--threads``, ``--seed``, ``--exclude``,
``--mask-diameter``).

Reading particles with the data checks, ``exclude`` files and the matched-filter weight are
library code: :mod:`r2d.io.particles`.
"""

from __future__ import annotations


def add_threads(p):
    p.add_argument("--threads", type=int, default=1, help="worker threads for FFTs (default %(default)s)")


def add_seed(p):
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")


def add_exclude(p):
    p.add_argument("--exclude", default=None,
                   help="file of particle indices (0-based, one integer per line) to leave out")


def add_mask(p):
    p.add_argument("--mask-diameter", type=float, default=None, metavar="Å",
                   help="particle mask diameter in Å (config maskdiameter): the search and scoring images are "
                        "masked by it (soft edge), edge-mean normalisation uses the background outside it; "
                        "default: no mask")
