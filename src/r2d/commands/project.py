"""Project vectors onto an MSA basis (steps 0d and 8: ``input_fp_basis_proj``, ``input_YY_proj``).

Initial stage: ``r2d project input_fp.h5 input_fp_basis.hdf -o input_fp_basis_proj.h5 [--normproj]``
projects the footprints. Iterations: ``r2d project PARTICLES basis_YY.hdf --simmx simmx_YY.h5
-o input_YY_proj.h5`` moves each particle into the frame of its best aliref (lowest simmx
score) and projects it, always normalising the projection (as e2basis projectrot).
``--chunk i-of-k`` reads and projects only that particle range of the stack (the rows of the
simmx file may be the whole run's or just that chunk's); ``r2d gather`` concatenates the chunks.

Output datasets: ``proj`` (N, B) float32, ``particle`` (N,), and with ``--simmx`` also
``ref`` (best aliref), ``dx, dy, dalpha, mirror`` (particle → aliref transform) and ``score``.
"""

from __future__ import annotations

import numpy as np

from r2d import io
from r2d import transforms as tf
from r2d.io import read_particles, stack_weight
from r2d.msa import Basis, project
from r2d.progress import blocks


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


def project_rows(vectors: np.ndarray, basis: Basis, *, normproj: bool) -> np.ndarray:
    """:func:`r2d.msa.project`, one row at a time.

    A matmul's result for one row depends on how many rows come with it (BLAS blocking), so
    projecting a chunk at once would differ in the last bit from projecting the whole stack.
    Row by row, ``--chunk`` runs give byte-identical ``input_YY_proj`` (and what follows).
    """
    x = np.asarray(vectors, dtype=np.float32)
    D = x.shape[1]
    if D != basis.mean.shape[0]:
        raise ValueError(f"project: vectors of shape {x.shape} do not match a basis of length "
                         f"{basis.mean.shape[0]}")
    c = np.ascontiguousarray(basis.components, dtype=np.float32)
    mean_p = basis.mean.astype(np.float64) @ basis.components.astype(np.float64).T
    out = np.empty((len(x), len(c)), dtype=np.float32)
    for i, row in enumerate(x):
        norm = np.sqrt(float(np.einsum("j,j->", row, row, dtype=np.float64)))
        p = (c @ row).astype(np.float64) / (norm or 1.0) - mean_p
        p /= D
        if normproj:
            p /= float(np.sqrt(p @ p)) or 1.0
        out[i] = p
    return out


def add_args(p):
    p.add_argument("input", help="input_fp.h5 (initial stage) or the particle stack (iterations)")
    p.add_argument("basis", help="basis image stack")
    p.add_argument("-o", "--output", required=True, help="projection file (.h5)")
    p.add_argument("--simmx", help="simmx_YY.h5: align each particle to its best aliref first (iterations)")
    p.add_argument("--normproj", action="store_true", help="normalise projection vectors (always on with --simmx)")
    p.add_argument("--chunk", default=None, help="with --simmx: only particles of chunk i-of-k")


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
    n = len(stack)
    lo, hi = io.chunk_range(args.chunk, n) if args.chunk else (0, n)
    rows = len(simmx["score"])
    if rows == n and (lo, hi) != (0, n):  # the whole run's simmx: keep this chunk's rows
        simmx = {k: v[lo:hi] for k, v in simmx.items()}
    elif rows != hi - lo:
        raise ValueError(f"project: {args.simmx} has {rows} rows, expected {n} or {hi - lo} (chunk {args.chunk})")
    best = best_reference(simmx)
    proj = np.empty((hi - lo, basis.nbasis), dtype=np.float32)
    weight = stack_weight(stack)
    for blo, bhi in blocks(hi - lo, io.image_block(stack.box), "input_proj"):
        blo, bhi = blo + lo, bhi + lo
        r = slice(blo - lo, bhi - lo)
        parts = tf.radial_filter(read_particles(stack, np.arange(blo, bhi)), weight)
        moved = tf.transform(parts, best["dalpha"][r], best["dx"][r], best["dy"][r], best["mirror"][r])
        proj[r] = project_rows(moved.reshape(bhi - blo, -1), basis, normproj=True)
    proj[~np.isfinite(best["score"])] = 0.0  # excluded and bad particles (read as blank images)
    io.write_matrix(args.output, {"proj": proj, "particle": simmx.get("particle", np.arange(lo, hi)), **best},
                    {"artifact": "input_proj", "normproj": 1, **({"chunk": args.chunk} if args.chunk else {})})
