"""Matrix products whose every element is the same whatever else is in the call.

A BLAS kernel rounds a float32 element of ``a @ b`` differently depending on the operands'
shapes, on the element's place in them and on how the work is split between threads
(OpenBLAS's Haswell and Zen kernels do so even on one thread, at the edges of their blocks),
so a particle's correlations would depend on which chunk it was processed in and how many
threads ran. r2d promises the same bytes for the same data whatever the chunks and threads,
so every product in a per-particle path goes through :func:`matmul`: it runs in float64
(complex128), where the product of two float32 values is exact and the sum's rounding
(about 1e-16 relative) lies far below float32's; the caller rounds the result once to
float32. Two calls then agree bit for bit unless a float64 result falls within its own
rounding error of a float32 rounding boundary (none in 4·10⁷ elements over six shapes, the
Haswell and SkylakeX kernels and one and two threads).
"""

from __future__ import annotations

import numpy as np


def wide(a: np.ndarray) -> np.ndarray:
    """``a`` as float64 (complex128 if complex; wider types are kept), without a copy when it
    already is."""
    a = np.asarray(a)
    return a.astype(np.result_type(a.dtype, np.float64), copy=False)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (numpy's broadcasting rules) computed in float64 or complex128, see the module
    docstring. Returns the wide result; round it to float32 (``astype``) where it is stored."""
    return np.matmul(wide(a), wide(b))
