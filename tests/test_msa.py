"""Tests for r2d.msa: PCA basis (§3.4) and projection (§3.5)."""

import numpy as np
import pytest

from r2d.errors import ConfigError
from r2d.msa import Basis, pca_basis, project, unit_rows


def planted(n=300, d=80, scales=(6.0, 3.0, 1.5), noise=0.05, seed=0):
    """Unit-length-ish vectors = offset + known orthonormal directions with decreasing scales."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, len(scales) + 1)))
    offset, dirs = q[:, 0] * 20.0, q[:, 1:].T          # offset orthogonal to the directions
    coef = rng.normal(size=(n, len(scales))) * np.asarray(scales)
    x = offset + coef @ dirs + noise * rng.normal(size=(n, d))
    return x, dirs


def test_recovers_planted_subspace_and_ordering():
    x, dirs = planted()
    b = pca_basis(x, 3)
    assert isinstance(b, Basis)
    assert b.components.shape == (3, 80) and b.mean.shape == (80,)
    np.testing.assert_allclose(np.linalg.norm(b.components, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(b.components @ b.components.T, np.eye(3), atol=1e-5)
    # each component is (up to sign) the planted direction of the same rank
    overlap = np.abs(b.components @ dirs.T)
    np.testing.assert_allclose(np.diag(overlap), 1.0, atol=0.02)
    assert np.all(np.diff(b.singular_values) < 0)
    assert np.all(np.diff(b.explained_variance_ratio) < 0)
    assert 0.95 < b.explained_variance_ratio.sum() <= 1.0 + 1e-6
    # the mean is the mean of the unit-normalised rows
    np.testing.assert_allclose(b.mean, unit_rows(x).mean(axis=0), atol=1e-6)
    # sign convention: the largest-|value| entry of each component is positive
    big = np.argmax(np.abs(b.components), axis=1)
    assert np.all(b.components[np.arange(3), big] > 0)


def test_unit_normalisation_and_zero_rows():
    x, _ = planted(n=50)
    x[7] = 0.0
    xn = unit_rows(x)
    assert np.all(xn[7] == 0)
    np.testing.assert_allclose(np.linalg.norm(np.delete(xn, 7, axis=0), axis=1), 1.0)
    # scaling an input row changes nothing (the basis sees unit rows only)
    x2 = x.copy()
    x2[3] *= 17.0
    b1, b2 = pca_basis(x, 4), pca_basis(x2, 4)
    np.testing.assert_allclose(b1.components, b2.components, atol=1e-5)


def test_projection_formula_by_hand():
    rng = np.random.default_rng(5)
    x, _ = planted(n=40, d=30)
    b = pca_basis(x, 5)
    v = rng.normal(size=(6, 30)) + 3.0
    v[2] = 0.0
    got = project(v, b, normproj=False)
    assert got.shape == (6, 5) and got.dtype == np.float32
    for i in range(6):
        nrm = np.linalg.norm(v[i])
        xh = v[i] / nrm if nrm > 0 else v[i]          # NO mean subtraction before unit-normalising
        y = xh - b.mean.astype(np.float64)
        want = np.array([np.mean(y * c) for c in b.components.astype(np.float64)])  # (1/D) sum
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-7)
    # scale of the input does not matter, its offset does
    np.testing.assert_allclose(project(5 * v, b, normproj=False), got, rtol=1e-4, atol=1e-7)
    assert not np.allclose(project(v + 1.0, b, normproj=False), got, atol=1e-4)


def test_normproj_gives_unit_rows():
    x, _ = planted(n=60, d=40)
    b = pca_basis(x, 4)
    p = project(x, b, normproj=True)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-5)
    raw = project(x, b, normproj=False)
    np.testing.assert_allclose(p, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    # float32 input gives the same answer
    np.testing.assert_allclose(project(x.astype(np.float32), b, normproj=True), p, atol=1e-4)


def test_deterministic():
    x, _ = planted(n=120, d=50, seed=3)
    b1, b2 = pca_basis(x, 6, seed=1), pca_basis(x.copy(), 6, seed=1)
    for f in ("mean", "components", "singular_values", "explained_variance_ratio"):
        np.testing.assert_array_equal(getattr(b1, f), getattr(b2, f))
    # a row-permuted copy gives the same (well-separated) components: signs are fixed
    b3 = pca_basis(x[::-1], 6, seed=1)
    np.testing.assert_allclose(b3.components[:3], b1.components[:3], atol=1e-4)


def test_randomized_solver_path(monkeypatch):
    import r2d.msa as msa

    x, dirs = planted(n=200, d=60)
    monkeypatch.setattr(msa, "FULL_SVD_MAX_COST", 10)
    b1 = msa.pca_basis(x, 3, seed=4)
    b2 = msa.pca_basis(x, 3, seed=4)
    np.testing.assert_array_equal(b1.components, b2.components)
    np.testing.assert_allclose(np.diag(np.abs(b1.components @ dirs.T)), 1.0, atol=0.02)


def test_too_many_components():
    x, _ = planted(n=10, d=30)
    with pytest.raises(ConfigError, match=r"nbasisfp=12 exceeds the number of class averages \(10\)"):
        pca_basis(x, 12, what="class averages")
    with pytest.raises(ConfigError, match="vector length"):
        pca_basis(x[:, :5], 8)
    with pytest.raises(ConfigError):
        pca_basis(x, 0)
    assert pca_basis(x, 10).components.shape == (10, 30)


def test_exact_path_matches_scikit_learn_pca():
    """The exact path is a plain LAPACK SVD; it must give what sklearn's full-solver PCA gives."""
    from sklearn.decomposition import PCA

    x, _ = planted(n=150, d=40, seed=5)
    b = pca_basis(x, 5)
    ref = PCA(n_components=5, svd_solver="full").fit(unit_rows(x))
    np.testing.assert_allclose(b.mean, ref.mean_, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b.singular_values, ref.singular_values_, rtol=1e-5)
    np.testing.assert_allclose(b.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-5)
    np.testing.assert_allclose(np.abs(np.sum(b.components * ref.components_, axis=1)), 1.0, atol=1e-5)
