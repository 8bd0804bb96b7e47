"""Comparators against their definitions (docs/algorithm.md §3.13), lower is better."""

import numpy as np

from r2d.cmp import compare

rng = np.random.default_rng(0)
A = rng.normal(size=(4, 32, 32)).astype(np.float32)


def test_ccc_identical_negated_and_noise():
    assert np.allclose(compare(A, A, "ccc"), -1)
    assert np.allclose(compare(A, -A, "ccc"), 1)
    assert np.abs(compare(A, rng.normal(size=A.shape), "ccc")).max() < 0.1
    assert np.allclose(compare(A, 3 * A + 2, "ccc"), -1, atol=1e-6)


def test_dot_normalize_and_mean_product():
    assert np.allclose(compare(A, A, "dot:normalize=1"), -1)
    f, g = A[:1], A[1:2]
    assert np.isclose(compare(f, g, "dot")[0], -(f * g).mean(), rtol=1e-5)


def test_sqeuclidean_normto():
    assert np.allclose(compare(A, A, "sqeuclidean"), 0)
    assert np.allclose(compare(A, 2 * A + 1, "sqeuclidean:normto=1"), 0, atol=1e-8)
    assert np.all(compare(A, 2 * A + 1, "sqeuclidean") > 1)


def test_frc_and_phase_identical_vs_shifted():
    shifted = np.roll(A, 3, axis=2)
    assert np.allclose(compare(A, A, "frc"), -1)
    assert np.all(compare(A, shifted, "frc") > compare(A, A, "frc"))
    assert np.allclose(compare(A, A, "phase"), 0, atol=1e-9)
    assert np.all(compare(A, shifted, "phase") > 0.5)


def test_sqeuclidean_normto_undone_for_an_inverting_fit():
    """EMAN2 keeps the original ``to`` when the fitted slope is not positive (no offset either)."""
    assert np.allclose(compare(A, -A + 1, "sqeuclidean:normto=1"), compare(A, -A + 1, "sqeuclidean"))


def test_undefined_values_as_eman2():
    zero = np.zeros_like(A)
    assert np.allclose(compare(A, zero, "ccc"), 2)
    assert np.allclose(compare(A, zero, "ccc:negative=0"), -2)
    assert np.allclose(compare(A, zero, "frc"), 2)  # no ring has power in both: no weight, NaN -> 2
    assert np.all(compare(A, zero, "optvariance") == np.finfo(np.float32).max)  # EMAN2: NaN


def test_optvariance_prefers_the_matching_image():
    noisy = A + 0.3 * rng.normal(size=A.shape)
    other = np.roll(A, 1, axis=0)
    assert np.all(compare(noisy, A, "optvariance") < compare(noisy, other, "optvariance"))
    assert np.all(compare(A, A, "optvariance:matchfilt=0") < 1e-8)
