"""Multi-reference assignment (step 9 with ``classify: mra``): ground truth and edge cases."""

import numpy as np

from r2d import transforms as tf
from r2d.align import align
from r2d.mra import assign, margin_weights

from conftest import blob_image


def test_assign_takes_the_lowest_score_and_skips_invalid_rows():
    score = np.array([[0.1, -0.5, 0.2], [-0.9, 0.0, 0.3], [0.4, 0.5, -0.1], [np.inf, np.inf, np.inf]])
    lab = assign(score, np.array([True, True, True, False]), mininclass=1)
    assert lab.tolist() == [1, 0, 2, -1]


def test_assign_dissolves_small_classes_into_the_next_best_ones():
    rng = np.random.default_rng(0)
    score = rng.normal(size=(40, 4))
    score[:, 3] += 10  # nobody prefers class 3
    score[0, 3] = -100  # ... but particle 0
    lab = assign(score, mininclass=2, max_share=None)
    assert np.bincount(lab, minlength=4)[3] == 0  # one member < mininclass: dissolved
    assert lab[0] == np.argmin(score[0, :3])  # into its best remaining class
    plain = np.argmin(score, axis=1)
    assert np.array_equal(lab[1:], plain[1:])
    assert np.array_equal(lab, assign(score, mininclass=2, max_share=None))  # deterministic


def test_assign_frees_classes_for_an_attractor():
    """Class 0 pulls in 70 of 100 particles (3x the mean of 25 is 75: no action), then 85
    (over 3x): the smallest class below the mean is dissolved, so division can refill it from
    the attractor."""
    rng = np.random.default_rng(1)
    for n0, freed in ((70, 0), (85, 1)):
        score = rng.normal(size=(100, 4)) * 0.01
        score[np.arange(100), np.repeat([0, 1, 2, 3], [n0, (100 - n0) - 10, 6, 4])] -= 1
        lab = assign(score, mininclass=2)
        counts = np.bincount(lab, minlength=4)
        assert (counts == 0).sum() == freed
        if freed:
            assert counts[3] == 0 and (lab >= 0).all()  # the 4-member class went to its next best
    # a particle whose only finite scores are in a dissolved class is left out (−1)
    score = np.full((10, 3), np.inf)
    score[:, 0] = -1.0
    score[:5, 1] = -2.0
    score[9] = [np.inf, np.inf, -3.0]
    lab = assign(score, mininclass=2, max_share=None)
    assert lab[9] == -1 and (lab[:5] == 1).all() and (lab[5:9] == 0).all()


def test_margin_weights_drop_the_least_decisive_particles():
    score = np.array([[-0.9, -0.1, 0.0],    # gap 0.8
                      [-0.5, -0.45, 0.0],   # gap 0.05
                      [-0.3, np.inf, np.inf],  # one finite score: decisive
                      [-0.2, -0.19, 0.3],   # gap 0.01
                      [0.0, 0.0, 0.0],      # not labelled
                      [-0.6, -0.2, -0.3]])  # gap 0.3
    label = np.array([0, 0, 0, 0, -1, 0])
    w = margin_weights(score, label, 0.4)  # floor(0.4 * 5 labelled) = 2 dropped
    assert w.dtype == np.float32 and w.tolist() == [1, 0, 1, 0, 0, 1]
    assert margin_weights(score, label, 0.0).tolist() == [1, 1, 1, 1, 0, 1]
    # the gaps are those of the scores divided by the reliability: with column 1 divided by 0.5
    # the gaps are 0.7, 0.4, inf, 0.18, 0.2, so particles 3 and 5 are dropped instead of 1 and 3
    w = margin_weights(score, label, 0.4, reliability=np.array([1.0, 0.5, 1.0]))
    assert w.tolist() == [1, 1, 1, 0, 0, 0]


def test_particles_go_to_the_reference_of_their_view():
    """Four 'views' (distinct blob patterns), rotated, shifted, mirrored, SNR 0.2: ≥ 95% right."""
    refs = np.stack([
        blob_image(64, [(5, 3, 4, 1), (-8, 6, 3, 0.7), (2, -10, 5, 0.8)]),
        blob_image(64, [(0, 0, 8, 1), (10, 10, 3, 1)]),
        blob_image(64, [(-10, 0, 4, 1), (10, 0, 4, 1), (0, 12, 3, 0.6)]),
        blob_image(64, [(0, -6, 6, 1), (6, 8, 2, 1), (-9, 7, 3, 0.8)]),
    ])
    rng = np.random.default_rng(4)
    N = 200
    truth = rng.integers(0, 4, N)
    alpha = rng.uniform(-180, 180, N)
    tx, ty = rng.uniform(-3, 3, (2, N))
    mirror = rng.integers(0, 2, N).astype(float)
    parts = tf.transform(refs[truth], *tf.invert(alpha, tx, ty, mirror))
    parts += rng.normal(0, np.sqrt(refs.var() / 0.2), parts.shape).astype(np.float32)
    a = align(parts, refs, "rotate_translate_tree:maxshift=6", "ccc")
    lab = assign(a.score, mininclass=2)
    assert np.mean(lab == truth) >= 0.95
    # references 0 and 3 have no mirror symmetry: their transforms are unique
    rows = np.flatnonzero((lab == truth) & np.isin(truth, [0, 3]))
    err = np.abs((a.alpha[rows, lab[rows]] - alpha[rows] + 180) % 360 - 180)
    assert np.mean((err < 3.0) & (a.mirror[rows, lab[rows]] == mirror[rows])) >= 0.95


def test_classify_command_with_mra_needs_no_projection_file(tmp_path, capsys):
    """`r2d classify --mra`: each particle to its lowest finite score, its transform from that
    column, `aligned` where the column was searched; excluded particles (−1) and rows with no
    finite score are left out; a projection file, when given, must list the same particles."""
    from r2d import io
    from r2d.cli import main as cli

    inf = np.inf
    score = np.array([[0.1, -0.5, inf], [-0.9, 0.0, 0.3], [0.4, 0.5, -0.1], [inf, inf, inf], [0.0, -0.2, 0.1]])
    part = np.array([10, 11, 12, 13, 14])
    mx = {"score": score, "particle": part}
    for i, key in enumerate(("dx", "dy", "dalpha", "mirror")):
        mx[key] = np.arange(15, dtype=float).reshape(5, 3) + 100 * i
    io.write_matrix(tmp_path / "mra.h5", mx)
    (tmp_path / "ex14.txt").write_text("14\n")  # input index 14 is row 4
    assert cli(["classify", "--mra", str(tmp_path / "mra.h5"), "-o", str(tmp_path / "c.h5"), "--ncls", "3",
                "--mininclass", "1", "--exclude", str(tmp_path / "ex14.txt")]) == 0
    c = io.read_matrix(tmp_path / "c.h5")
    assert c["class"].tolist() == [1, 0, 2, -1, -1]
    assert c["particle"].tolist() == part.tolist()
    assert c["dx"].tolist() == [1, 3, 8, 0, 0] and c["dalpha"].tolist() == [201, 203, 208, 0, 0]
    assert c["aligned"].tolist() == [1, 1, 1, 0, 0]
    io.write_matrix(tmp_path / "proj.h5", {"proj": np.zeros((5, 2)), "particle": part[::-1]})
    capsys.readouterr()
    assert cli(["classify", str(tmp_path / "proj.h5"), "--mra", str(tmp_path / "mra.h5"), "-o",
                str(tmp_path / "d.h5"), "--ncls", "3"]) == 2
    assert "particle list differs" in capsys.readouterr().err
    assert cli(["classify", "-o", str(tmp_path / "d.h5"), "--ncls", "3"]) == 2
    assert "give the projection file" in capsys.readouterr().err
    assert not (tmp_path / "d.h5").exists()


def _noisy_average(signal, n, sigma, rng):
    """Mean of ``n`` noisy copies of ``signal`` and the FSC of its even/odd half sets."""
    from r2d.fsc import ring_fsc

    copies = signal[None] + rng.normal(0, sigma, (n,) + signal.shape)
    even, odd = copies[0::2].mean(0), copies[1::2].mean(0)
    fsc = ring_fsc(np.fft.rfft2(even)[None], np.fft.rfft2(odd)[None])[0]
    return copies.mean(0), fsc


def test_reliability_grows_with_the_members_of_an_average():
    """``reliability`` from the half-set FSC rises with the number of noisy copies in an average
    (4 to 400), as the correlation the average keeps with the noise-free signal does."""
    from r2d.mra import reliability

    rng = np.random.default_rng(7)
    signal = tf.gaussian_mask(64, 12, 4) * blob_image(64, [(5, 3, 4, 1), (-8, 6, 3, 0.7), (2, -10, 5, 0.8)])
    band = (tf.ring_index(64) >= 1) & (tf.ring_index(64) < 16)
    signal = np.fft.irfft2(np.fft.rfft2(signal) * band, s=(64, 64))
    est = []
    for n in (4, 20, 100, 400):
        avg, fsc = _noisy_average(signal, n, 3 * signal.std(), rng)
        avg = np.fft.irfft2(np.fft.rfft2(avg) * band, s=(64, 64))
        kept = np.corrcoef(avg.ravel(), signal.ravel())[0, 1]
        est.append((reliability([fsc])[0], kept))
    est = np.array(est)
    assert est[-1, 0] - est[0, 0] > 0.15 and np.all(np.diff(est, axis=0) > 0)


def test_reliability_stops_a_clean_average_from_pulling_in_its_neighbours():
    """Two similar views; view A's average is made of 200 particles, view B's of 6. By plain
    best match almost all B particles go to A's cleaner average (the noise-free B would take
    them all); corrected by ``reliability`` (``mrareliability``) B keeps at least
    ten times as many, and A's particles stay with A."""
    from r2d.cmp import compare
    from r2d.mra import reliability

    rng = np.random.default_rng(3)
    a = blob_image(64, [(0, 0, 8, 1), (10, 10, 3, 1), (-9, 4, 3, 0.6)])
    b = blob_image(64, [(0, 0, 8, 1), (10, -10, 3, 1), (-9, -4, 3, 0.6)])   # two blobs moved
    sigma = 3 * a.std()
    avg_a, fsc_a = _noisy_average(a, 200, sigma, rng)
    avg_b, fsc_b = _noisy_average(b, 6, sigma, rng)
    refs = np.stack([avg_a, avg_b]).astype(np.float32)
    truth = np.repeat([0, 1], 300)
    parts = (np.stack([a, b])[truth] + rng.normal(0, sigma, (600, 64, 64))).astype(np.float32)
    score = np.stack([compare(parts, np.repeat(r[None], 600, 0), "ccc") for r in refs], axis=1)
    plain = assign(score)
    fixed = assign(score, reliability=reliability([fsc_a, fsc_b]))
    b_plain, b_fixed = np.mean(plain[truth == 1] == 1), np.mean(fixed[truth == 1] == 1)
    assert b_plain < 0.05 and b_fixed >= max(10 * b_plain, 0.1)
    assert np.mean(fixed[truth == 0] == 0) >= 0.95
