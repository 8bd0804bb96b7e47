"""PCA basis (MSA) of footprints or images (steps 0c and 3: ``input_fp_basis``, ``basis_YY``).

Input: ``input_fp.h5`` (dataset ``fp``) or an image stack (``allrefs_YY.hdf``). Output: an
image stack of B+1 images: image 0 is the mean (header ``eigval=0``), images 1…B the unit
principal components (headers ``eigval`` = singular value, ``explvarfrac``).

  $ r2d msa r2d_01/input_fp.h5 -o r2d_01/input_fp_basis.hdf --nbasis 12
"""

from __future__ import annotations

import numpy as np

from r2d import io
from r2d.commands._common import add_seed
from r2d.msa import pca_basis


def load_vectors(path) -> tuple[np.ndarray, tuple]:
    """Rows to analyse and the image shape of one row: ``fp`` of a matrix file or an image stack."""
    path = str(path)
    if path.endswith(".h5"):
        data = io.read_matrix(path)
        if "fp" in data:
            fp = data["fp"]
            return fp.reshape(len(fp), -1), fp.shape[1:]
    imgs = io.read_image_stack(path)
    return imgs.reshape(len(imgs), -1), imgs.shape[1:]


def add_args(p):
    p.add_argument("input", help="input_fp.h5 or an image stack")
    p.add_argument("-o", "--output", required=True, help="basis image stack (.hdf)")
    p.add_argument("--nbasis", type=int, default=12, help="number of basis vectors (nbasisfp)")
    add_seed(p)


def main(args):
    X, shape = load_vectors(args.input)
    what = "class averages" if not str(args.input).endswith(".h5") else "particles in the initial subset"
    basis = pca_basis(X, args.nbasis, seed=args.seed, what=what)
    imgs = np.concatenate([basis.mean[None], basis.components]).reshape(-1, *shape).astype(np.float32)
    headers = [{"eigval": 0.0, "explvarfrac": 0.0}] + [
        {"eigval": float(s), "explvarfrac": float(e)}
        for s, e in zip(basis.singular_values, basis.explained_variance_ratio)
    ]
    io.write_image_stack(args.output, imgs, headers)
