"""r2d.stable: a product's element, rounded to float32, does not depend on the call's shape."""

import numpy as np
import pytest

from r2d import stable


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
@pytest.mark.parametrize("m,k,n", [(32, 34, 3000), (500, 31, 700), (7, 100, 2000)])
def test_rows_do_not_depend_on_the_other_rows(dtype, m, k, n):
    """Every slice of rows gives the same float32 bits as the whole product (a plain float32
    BLAS product does not on OpenBLAS's Haswell kernels: its rounding follows the block edges)."""
    rng = np.random.default_rng(m + k)
    a = rng.normal(size=(n, k)).astype(dtype)
    b = rng.normal(size=(k, m)).astype(dtype)
    if np.iscomplexobj(a):
        a = a + 1j * rng.normal(size=a.shape).astype(dtype)
        b = b + 1j * rng.normal(size=b.shape).astype(dtype)
    whole = stable.matmul(a, b).astype(dtype)
    assert whole.dtype == dtype
    for lo, hi in ((0, 1), (1, 2), (3, n - 5), (17, 357), (n - 1, n)):
        np.testing.assert_array_equal(stable.matmul(a[lo:hi], b).astype(dtype), whole[lo:hi])
    exact = a.astype(np.complex128) @ b.astype(np.complex128)
    np.testing.assert_allclose(whole, exact, rtol=1e-5, atol=1e-4)


def test_wide_keeps_wider_types_and_does_not_copy():
    x = np.zeros(3)
    assert stable.wide(x) is x
    assert stable.wide(np.zeros(3, np.complex64)).dtype == np.complex128
    assert stable.wide(np.zeros(3, np.float32)).dtype == np.float64
