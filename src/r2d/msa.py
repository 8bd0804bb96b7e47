"""MSA: PCA basis (``e2msa.py --normalize --nbasis=B``, docs/algorithm.md §3.4) and projection
onto it (``e2basis.py project/projectrot``, §3.5).

Vectors are flattened images, one per row. Both steps are plain BLAS/LAPACK work (one SVD,
a matmul over blocks of rows); no loop over vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

from r2d import stable
from r2d.errors import ConfigError

__all__ = ["Basis", "pca_basis", "project", "unit_rows"]

# Exact (LAPACK) SVD while its cost N*D*min(N, D) stays below this (about a second);
# beyond it the randomized solver, seeded, is used.
FULL_SVD_MAX_COST = 2e9
#: rows per float64 block of :func:`project`
_BLOCK = 4096


@dataclass(frozen=True)
class Basis:
    """A PCA basis as written by e2msa: ``mean`` (D,) (image 0, ``eigval=0``) and ``components``
    (B, D) unit rows sorted by explained variance (images 1..B), with ``singular_values`` (B,)
    (header ``eigval``) and ``explained_variance_ratio`` (B,) (header ``explvarfrac``).
    Arrays are float32."""

    mean: np.ndarray
    components: np.ndarray
    singular_values: np.ndarray
    explained_variance_ratio: np.ndarray

    @property
    def nbasis(self) -> int:
        return int(self.components.shape[0])


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``x / ||x||_2`` for every row (float64 copy); zero rows stay zero (EMAN2 ``normalize.unitlen``)."""
    x = np.array(vectors, dtype=np.float64, copy=True)
    norms = np.linalg.norm(x, axis=1)
    norms[norms == 0] = 1.0
    x /= norms[:, None]
    return x


def pca_basis(vectors: np.ndarray, nbasis: int, *, seed: int = 0, what: str = "input vectors",
              option: str = "nbasisfp") -> Basis:
    """PCA basis of ``vectors`` (N, D) with ``nbasis`` components (e2msa ``--normalize``, mode pca).

    Rows are unit-normalised (zero rows stay zero), the mean is subtracted, then
    an exact LAPACK SVD (``scipy.linalg.svd``, as ``sklearn.decomposition.PCA(svd_solver='full')``) when
    ``N*D*min(N, D) <= FULL_SVD_MAX_COST``, else sklearn's PCA with ``svd_solver='randomized'`` with ``random_state=seed``
    (fast, accurate for the leading components, reproducible). Component signs are fixed so that each component's largest-magnitude
    entry is positive. ``what``/``option`` only word the error message. Raises ``ConfigError``
    when ``nbasis`` exceeds ``min(N, D)``.
    """
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ValueError(f"pca_basis needs a 2-D array (N, D); got shape {x.shape}")
    N, D = x.shape
    nbasis = int(nbasis)
    if nbasis < 1:
        raise ConfigError(f"{option}={nbasis} must be at least 1")
    if nbasis > N:
        raise ConfigError(f"{option}={nbasis} exceeds the number of {what} ({N}); "
                          f"lower {option} or raise ncls")
    if nbasis > D:
        raise ConfigError(f"{option}={nbasis} exceeds the vector length ({D}); lower {option}")
    xn = unit_rows(x)
    if float(N) * D * min(N, D) <= FULL_SVD_MAX_COST:
        # exact: LAPACK SVD of the centred rows, what sklearn's PCA(svd_solver="full") runs
        # (without importing scikit-learn, about 1 s per job)
        mean = xn.mean(axis=0)
        xc = xn - mean
        _, sv, vt = linalg.svd(xc, full_matrices=False)
        total = float((xc * xc).sum())
        comps_, sv = vt[:nbasis], sv[:nbasis]
        ratio = sv**2 / total if total > 0 else np.zeros(nbasis)
    else:
        from sklearn.decomposition import PCA  # imported here: it takes about 1 s

        pca = PCA(n_components=nbasis, svd_solver="randomized", random_state=seed).fit(xn)
        mean, comps_, sv, ratio = pca.mean_, pca.components_, pca.singular_values_, pca.explained_variance_ratio_
    comps = np.array(comps_, dtype=np.float64)
    cn = np.linalg.norm(comps, axis=1, keepdims=True)
    cn[cn == 0] = 1.0
    comps /= cn
    big = np.argmax(np.abs(comps), axis=1)
    signs = np.sign(comps[np.arange(nbasis), big])
    signs[signs == 0] = 1.0
    comps *= signs[:, None]
    return Basis(
        mean=np.asarray(mean, dtype=np.float32),
        components=comps.astype(np.float32),
        singular_values=np.asarray(sv, dtype=np.float32),
        explained_variance_ratio=np.asarray(ratio, dtype=np.float32),
    )


def project(vectors: np.ndarray, basis: Basis, *, normproj: bool) -> np.ndarray:
    """Project ``vectors`` (N, D) onto ``basis`` (e2basis ``project``/``projectrot`` maths, §3.5).

    ``x̂ = x/||x||`` (no mean subtraction; zero rows stay zero), ``y = x̂ - mean``,
    ``p = (1/D) y · componentsᵀ``; with ``normproj`` each ``p`` is scaled to unit length (zero
    rows stay zero). Returns (N, B) float32. Computed as ``(x·Cᵀ)/||x|| - mean·Cᵀ``, the
    product in float64 (:mod:`r2d.stable`: a row's projection does not depend on the other
    rows) over blocks of ``_BLOCK`` rows, so the input is never copied whole.
    """
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[1] != basis.mean.shape[0]:
        raise ValueError(f"project: vectors of shape {x.shape} do not match a basis of length "
                         f"{basis.mean.shape[0]}")
    D = x.shape[1]
    c = stable.wide(basis.components).T
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    norms[norms == 0] = 1.0
    p = np.empty((x.shape[0], c.shape[1]))
    for lo in range(0, x.shape[0], _BLOCK):
        p[lo:lo + _BLOCK] = stable.matmul(x[lo:lo + _BLOCK], c)
    p /= norms[:, None]
    p -= stable.wide(basis.mean) @ c
    p /= D
    if normproj:
        pn = np.linalg.norm(p, axis=1)
        pn[pn == 0] = 1.0
        p /= pn[:, None]
    return p.astype(np.float32)
