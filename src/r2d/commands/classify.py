"""Classify particles (steps 0e and 9: ``classmx_00``, ``classmx_YY``): k-means of projection vectors, or best match.

Writes ``classmx`` with datasets ``class`` (int32; −1 = excluded), ``weight`` (1.0),
``dx, dy, dalpha, mirror`` and ``particle`` (input index of each row). With k-means (EMAN2)
the transform is the particle → best-aliref one from the projection file (zeros for
``classmx_00``). With ``--mra mra_YY.h5`` (r2d's default in iterations, :mod:`r2d.mra`) each
particle goes to the class average it matches best and the transform brings it into that
average's frame (the previous iteration's class averages), ``aligned`` (int8) says where
it is a real alignment; no projection file is needed then (one given must list the same particles).

  $ r2d classify r2d_01/input_fp_basis_proj.h5 -o r2d_01/classmx_00.h5 --ncls 32 --seed 1000
  $ r2d classify --mra r2d_01/mra_03.h5 -o r2d_01/classmx_03.h5 --ncls 32
"""

from __future__ import annotations

import logging

import numpy as np

from r2d import io
from r2d.commands._common import add_exclude, add_seed
from r2d.io import read_exclude
from r2d.errors import ConfigError, InputError
from r2d.kmeans import kmeans
from r2d.mra import MIN_MEMBERS, assign, margin_weights, reliability

log = logging.getLogger(__name__)


def add_args(p):
    p.add_argument("input", nargs="?", default=None,
                   help="projection file (.h5, dataset 'proj'); with --mra not needed; with --ncls 1 any "
                        "r2d table of particles (e.g. input_fp.h5): every particle listed goes to class 0")
    p.add_argument("-o", "--output", required=True, help="classmx file (.h5)")
    p.add_argument("--ncls", type=int, required=True, help="number of classes")
    p.add_argument("--minchange", type=int, default=-1, help="stop when fewer change class (≤0: auto)")
    p.add_argument("--fastseed", action="store_true", help="seed all classes at once (only matters for ncls > 25)")
    p.add_argument("--mininclass", type=int, default=None,
                   help="k-means: reseed classes smaller than this (default 2, as EMAN2); --mra: "
                        "dissolve them into the next-best classes, for class averaging's --split "
                        "to refill by division (default 5)")
    p.add_argument("--mra", default=None, help="mra_YY.h5: assign each particle to its best-scoring column")
    p.add_argument("--margin", type=float, default=0.0, metavar="FRACTION",
                   help="with --mra: weight 0 in classmx for this fraction of the particles, those whose "
                        "best and second-best class scores are closest (class averaging leaves them "
                        "out); default 0")
    p.add_argument("--reliability", default=None, metavar="CLASSES.hdf",
                   help="with --mra (scores of ccc): divide each column's correlations by the noise "
                        "attenuation of its class average, from the half-set FSC in these averages' "
                        "headers (the references of mra_YY)")
    add_seed(p)
    add_exclude(p)


def main(args):
    if not 0 <= args.margin < 1:
        raise ConfigError(f"--margin {args.margin}: must be a fraction in [0, 1)")
    if args.mra:
        mx = io.read_matrix(args.mra)
        particle = mx["particle"]
        if args.input:  # the projection file, when given, must be of the same particles
            other = io.read_matrix(args.input)["particle"]
            if not np.array_equal(other, particle):
                raise InputError(f"{args.mra}: its particle list differs from {args.input}'s; rerun both "
                                 "from the same input")
        return _main_mra(args, mx, ~np.isin(particle, read_exclude(args.exclude)))
    if not args.input:
        raise InputError("classify: give the projection file (k-means), or --mra mra_YY.h5")
    data = io.read_matrix(args.input)
    particle = data["particle"]
    if "proj" not in data and args.ncls != 1:
        raise InputError(f"{args.input}: no 'proj' dataset; give a projection file (input_fp_basis_proj, "
                         "input_YY_proj), or --ncls 1 to put every listed particle in one class")
    proj = data["proj"] if "proj" in data else np.zeros((len(particle), 1), dtype=np.float32)
    use = ~np.isin(particle, read_exclude(args.exclude))
    if "score" in data:  # excluded and bad particles have no finite simmx score
        use &= np.isfinite(data["score"])
    k = min(args.ncls, int(use.sum()))
    res = kmeans(proj[use], k, seed=args.seed, minchange=args.minchange, fastseed=args.fastseed,
                 mininclass=2 if args.mininclass is None else args.mininclass)
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


def _main_mra(args, mx, use):
    """Each particle to its best-scoring column of ``mx`` (mra_YY; excluded and bad particles
    have no finite score there)."""
    particle = mx["particle"]
    rel = None
    if args.reliability:
        heads = io.read_image_headers(args.reliability)
        if len(heads) != mx["score"].shape[1]:
            raise InputError(f"{args.reliability}: {len(heads)} images, but {args.mra} has "
                             f"{mx['score'].shape[1]} columns; give the references of that mra file")
        if all("fsc_half" in h for h in heads):
            rel = reliability([h["fsc_half"] for h in heads])
            log.info("reference reliability sqrt(R) %.2f-%.2f (median %.2f)", rel.min(), rel.max(), np.median(rel))
        else:
            log.warning("%s: no half-set FSC in the headers (not r2d class averages?); scores used as they are",
                        args.reliability)
    label = assign(mx["score"], use & np.isfinite(mx["score"]).any(axis=1),
                   mininclass=MIN_MEMBERS if args.mininclass is None else args.mininclass, reliability=rel)
    counts = np.bincount(label[label >= 0], minlength=mx["score"].shape[1])
    if (counts == 0).any():
        log.info("%d of %d classes left empty (dissolved into their particles' next-best classes), "
                 "for class averaging to refill by division; largest class %d (mean %.1f)",
                 int((counts == 0).sum()), len(counts), counts.max(), (label >= 0).sum() / len(counts))
    rows = np.flatnonzero(label >= 0)
    weight = margin_weights(mx["score"], label, args.margin, reliability=rel)
    if args.margin > 0:
        log.info("%d of %d particles with the least decisive assignment get weight 0 (margin %g)",
                 int(((label >= 0) & (weight == 0)).sum()), len(rows), args.margin)
    out = {"class": label.astype(np.int32), "weight": weight, "particle": particle}
    # 1 where the transform is a real alignment to the assigned class (not for particles moved
    # into a class that their pruned search never reached)
    aligned = np.zeros(len(label), dtype=np.int8)
    aligned[rows] = np.isfinite(mx["score"][rows, label[rows]])
    out["aligned"] = aligned
    for key in ("dx", "dy", "dalpha", "mirror"):
        v = np.zeros(len(label), dtype=np.float32)
        v[rows] = mx[key][rows, label[rows]]
        out[key] = v
    sizes = np.bincount(label[rows], minlength=mx["score"].shape[1])
    io.write_matrix(args.output, out, {"ncls": int(args.ncls), "method": "mra", "seed": int(args.seed),
                                       "margin": float(args.margin)})
    log.info("assigned %d particles to %d class averages (sizes %d-%d)", len(rows), mx["score"].shape[1],
             sizes.min(), sizes.max())
