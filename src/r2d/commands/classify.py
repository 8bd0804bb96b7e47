"""k-means classification of projection vectors (steps 0e and 9: ``classmx_00``, ``classmx_YY``).

Writes ``classmx`` with datasets ``class`` (int32; −1 = excluded), ``weight`` (1.0),
``dx, dy, dalpha, mirror`` (the particle → best-aliref transform from the projection file,
zeros for ``classmx_00``) and ``particle`` (input index of each row).

  $ r2d classify r2d_01/input_fp_basis_proj.h5 -o r2d_01/classmx_00.h5 --ncls 32 --seed 1000
"""

from __future__ import annotations

import logging

import numpy as np

from r2d import io
from r2d.commands._common import add_exclude, add_seed, read_exclude
from r2d.kmeans import kmeans

log = logging.getLogger(__name__)


def add_args(p):
    p.add_argument("input", help="projection file (.h5, dataset 'proj')")
    p.add_argument("-o", "--output", required=True, help="classmx file (.h5)")
    p.add_argument("--ncls", type=int, required=True, help="number of classes")
    p.add_argument("--minchange", type=int, default=-1, help="stop when fewer change class (≤0: auto)")
    p.add_argument("--fastseed", action="store_true", help="seed all classes at once (only matters for ncls > 25)")
    p.add_argument("--mininclass", type=int, default=2, help="reseed classes smaller than this")
    add_seed(p)
    add_exclude(p)


def main(args):
    data = io.read_matrix(args.input)
    proj = data["proj"]
    particle = data["particle"]
    use = ~np.isin(particle, read_exclude(args.exclude))
    k = min(args.ncls, int(use.sum()))
    res = kmeans(proj[use], k, seed=args.seed, minchange=args.minchange, fastseed=args.fastseed,
                 mininclass=args.mininclass)
    cls = np.full(len(proj), -1, dtype=np.int32)
    cls[use] = res.labels
    zeros = np.zeros(len(proj), dtype=np.float32)
    out = {"class": cls, "weight": np.where(cls >= 0, 1.0, 0.0).astype(np.float32), "particle": particle}
    for key in ("dx", "dy", "dalpha", "mirror"):
        out[key] = data[key].astype(np.float32) if key in data else zeros
    io.write_matrix(args.output, out, {"ncls": int(args.ncls), "n_iter": int(res.n_iter),
                                       "n_changed_last": int(res.n_changed_last), "seed": int(args.seed)})
    log.info("%d classes, k-means stopped after %d iterations (%d changed)", len(res.centers), res.n_iter,
             res.n_changed_last)
