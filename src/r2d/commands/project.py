"""Project vectors onto an MSA basis (steps 0d and 8: ``input_fp_basis_proj``, ``input_YY_proj``).

Initial stage: ``r2d project input_fp.h5 input_fp_basis.hdf -o input_fp_basis_proj.h5 [--normproj]``
projects the footprints. Iterations: ``r2d project PARTICLES basis_YY.hdf --simmx simmx_YY.h5
-o input_YY_proj.h5`` moves each particle into the frame of its best aliref (lowest simmx
score) and projects it, always normalising the projection (as e2basis projectrot).

Output datasets: ``proj`` (N, B) float32, ``particle`` (N,), and with ``--simmx`` also
``ref`` (best aliref), ``dx, dy, dalpha, mirror`` (particle → aliref transform) and ``score``.
"""

from __future__ import annotations

import numpy as np

from r2d import io
from r2d import transforms as tf
from r2d.commands._common import read_particles, stack_weight
from r2d.msa import Basis, project


def read_basis(path) -> Basis:
    imgs = io.read_image_stack(path)
    heads = io.read_image_headers(path)
    flat = imgs.reshape(len(imgs), -1)
    return Basis(mean=flat[0], components=flat[1:],
                 singular_values=np.array([h.get("eigval", 0.0) for h in heads[1:]], dtype=np.float32),
                 explained_variance_ratio=np.array([h.get("explvarfrac", 0.0) for h in heads[1:]], dtype=np.float32))


def best_reference(simmx: dict) -> dict:
    """Per particle: best aliref (first lowest score) and its transform, from a simmx dict."""
    score = simmx["score"]
    best = np.argmin(score, axis=1)
    rows = np.arange(len(best))
    return {"ref": best.astype(np.int32), "score": score[rows, best],
            **{k: simmx[k][rows, best] for k in ("dx", "dy", "dalpha", "mirror")}}


def add_args(p):
    p.add_argument("input", help="input_fp.h5 (initial stage) or the particle stack (iterations)")
    p.add_argument("basis", help="basis image stack")
    p.add_argument("-o", "--output", required=True, help="projection file (.h5)")
    p.add_argument("--simmx", help="simmx_YY.h5: align each particle to its best aliref first (iterations)")
    p.add_argument("--normproj", action="store_true", help="normalise projection vectors (always on with --simmx)")


def main(args):
    basis = read_basis(args.basis)
    if args.simmx is None:
        data = io.read_matrix(args.input)
        fp = data["fp"]
        proj = project(fp.reshape(len(fp), -1), basis, normproj=args.normproj)
        io.write_matrix(args.output, {"proj": proj, "particle": data["particle"]},
                        {"artifact": "input_fp_basis_proj", "normproj": int(args.normproj)})
        return 0
    stack = io.open_stack(args.input)
    simmx = io.read_matrix(args.simmx)
    best = best_reference(simmx)
    n = len(stack)
    proj = np.empty((n, basis.nbasis), dtype=np.float32)
    weight = stack_weight(stack)
    for lo in range(0, n, 4096):
        hi = min(n, lo + 4096)
        parts = tf.radial_filter(read_particles(stack, np.arange(lo, hi)), weight)
        moved = tf.transform(parts, best["dalpha"][lo:hi], best["dx"][lo:hi], best["dy"][lo:hi],
                             best["mirror"][lo:hi])
        proj[lo:hi] = project(moved.reshape(hi - lo, -1), basis, normproj=True)
    proj[~np.isfinite(best["score"])] = 0.0  # excluded and bad particles (read as blank images)
    io.write_matrix(args.output, {"proj": proj, "particle": simmx.get("particle", np.arange(n)), **best},
                    {"artifact": "input_proj", "normproj": 1})
