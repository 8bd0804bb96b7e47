"""Tests for r2d.kmeans (EMAN2 KMeansAnalyzer semantics, §3.6)."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from r2d.errors import ConfigError
from r2d.kmeans import KMeansResult, auto_minchange, default_maxiter, kmeans


def gaussian_clusters(k, per, d=10, sep=10.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * sep
    truth = np.repeat(np.arange(k), per)
    x = centres[truth] + rng.normal(size=(k * per, d))
    perm = rng.permutation(k * per)
    return x[perm], truth[perm]


@pytest.fixture(scope="module")
def data8():
    return gaussian_clusters(8, 50, seed=0)


@pytest.fixture(scope="module")
def data40():
    return gaussian_clusters(40, 50, seed=1)


def check_result(r, n, k):
    assert isinstance(r, KMeansResult)
    assert r.labels.shape == (n,) and r.labels.dtype == np.int32
    kf = r.labels.max() + 1
    assert kf == r.centers.shape[0] <= k
    counts = np.bincount(r.labels, minlength=kf)
    assert counts.min() >= 2, counts          # no empty or singleton classes
    return counts


@pytest.mark.parametrize("fastseed", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_8_clusters(data8, fastseed, seed):
    x, truth = data8
    r = kmeans(x, 8, seed=seed, fastseed=fastseed)
    check_result(r, len(x), 8)
    assert adjusted_rand_score(truth, r.labels) > 0.95
    # centres are the member means
    for j in range(r.centers.shape[0]):
        np.testing.assert_allclose(r.centers[j], x[r.labels == j].mean(axis=0))


@pytest.mark.parametrize("fastseed", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_40_clusters(data40, fastseed, seed):
    x, truth = data40
    r = kmeans(x, 40, seed=seed, fastseed=fastseed)
    check_result(r, len(x), 40)
    assert r.centers.shape[0] == 40
    assert adjusted_rand_score(truth, r.labels) > 0.95
    if not fastseed:
        # incremental seeding: 2 centres + 2 every 3 iterations -> all 40 only after 57 iterations
        assert r.n_iter > 57


def test_reproducible(data40):
    x, _ = data40
    for fastseed in (False, True):
        a = kmeans(x, 40, seed=7, fastseed=fastseed)
        b = kmeans(x.copy(), 40, seed=7, fastseed=fastseed)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.centers, b.centers)
        assert (a.n_iter, a.n_changed_last) == (b.n_iter, b.n_changed_last)


def test_different_seeds_both_good():
    x, truth = gaussian_clusters(12, 40, seed=4)
    ra, rb = kmeans(x, 12, seed=11), kmeans(x, 12, seed=12)
    assert adjusted_rand_score(truth, ra.labels) > 0.95
    assert adjusted_rand_score(truth, rb.labels) > 0.95


def test_eman2_uniform_seeding_runs(data8):
    """The source-faithful mode (uniform seeds) gives a valid, reproducible partition."""
    x, _ = data8
    a = kmeans(x, 8, seed=3, seeding="eman2")
    b = kmeans(x, 8, seed=3, seeding="eman2")
    check_result(a, len(x), 8)
    np.testing.assert_array_equal(a.labels, b.labels)
    with pytest.raises(ConfigError):
        kmeans(x, 8, seed=0, seeding="bogus")


def test_auto_minchange_and_maxiter():
    assert auto_minchange(2000, 32) == 3
    assert auto_minchange(999, 40) == 1
    assert auto_minchange(100000, 50) == 81
    assert default_maxiter(32) == 80
    assert default_maxiter(50) == 80
    assert default_maxiter(100) == 96
    assert default_maxiter(2) == 16


def test_minchange_and_maxiter_are_honoured(data8):
    x, _ = data8
    r = kmeans(x, 8, seed=0, maxiter=1)
    assert r.n_iter == 1
    # a huge minchange stops after the first full iteration
    r = kmeans(x, 8, seed=0, minchange=10**9)
    assert r.n_iter == 1
    # converged runs stop once fewer than minchange points move
    r = kmeans(x, 8, seed=0)
    assert r.n_changed_last < auto_minchange(len(x), 8)


def test_no_small_classes_on_unstructured_data():
    """Isotropic noise has no clusters; every returned class still has >= mininclass members."""
    x = np.random.default_rng(9).normal(size=(1500, 6))
    for fastseed in (False, True):
        r = kmeans(x, 32, seed=2, fastseed=fastseed)
        counts = check_result(r, len(x), 32)
        assert r.centers.shape[0] == 32
        assert counts.sum() == len(x)
        r3 = kmeans(x, 32, seed=2, fastseed=fastseed, mininclass=10)
        assert np.bincount(r3.labels).min() >= 10


def test_small_n_and_edge_cases():
    x = np.random.default_rng(0).normal(size=(5, 3))
    r = kmeans(x, 4, seed=0)                  # cannot make 4 classes of >= 2 points
    assert r.labels.max() + 1 <= 2
    assert np.bincount(r.labels).min() >= 2
    r1 = kmeans(x, 1, seed=0)
    assert np.all(r1.labels == 0)
    np.testing.assert_allclose(r1.centers[0], x.mean(axis=0))
    with pytest.raises(ConfigError):
        kmeans(x, 0, seed=0)
