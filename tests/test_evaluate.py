"""View error of a classification, and `r2d evaluate`."""

import json

import numpy as np
import pytest

from r2d import evaluate as ev
from r2d.cli import main as cli
from r2d.io import write_matrix
from r2d.simulate import draw_truth, random_rotations, view_directions


def unit(v):
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def in_plane(deg):
    t = np.deg2rad(np.asarray(deg, dtype=float))
    return np.column_stack([np.cos(t), np.sin(t), np.zeros_like(t)])


def test_view_angles_treat_d_and_minus_d_as_equal():
    a = unit([[1, 0, 0], [0, 1, 1]])
    np.testing.assert_allclose(ev.view_angles(a, -a).diagonal(), 0.0, atol=1e-5)
    np.testing.assert_allclose(ev.view_angles(in_plane([0]), in_plane([30, 120, 170, 90])),
                               [[30, 60, 10, 90]], atol=1e-9)


def test_perfect_clustering_is_zero():
    rng = np.random.default_rng(0)
    centres = view_directions(random_rotations(10, rng)[0])
    labels = rng.integers(0, 10, 500)
    signs = rng.choice([-1.0, 1.0], size=(500, 1))
    assert ev.view_error(labels, centres[labels] * signs) == pytest.approx(0.0, abs=1e-5)
    # one particle in a wrong class is noticed
    wrong = labels.copy()
    wrong[0] = (wrong[0] + 1) % 10
    assert ev.view_error(wrong, centres[labels]) > 0.01


def test_medoid_and_weighting_by_class_size():
    # class 0: views at 0, 10, 30 degrees -> medoid 10, angles 10, 0, 20 -> sum 30
    # class 1: a single view -> 0; class 2: two views 40 apart -> medoid either, sum 40
    dirs = in_plane([0, 10, 30, 77, 100, 140])
    labels = np.array([0, 0, 0, 1, 2, 2])
    assert ev.class_view_error(dirs[:3]) == (1, pytest.approx(30.0))
    assert ev.view_error(labels, dirs) == pytest.approx((30 + 0 + 40) / 6)
    # flipping signs changes nothing
    flipped = dirs * np.array([1, -1, 1, -1, -1, 1])[:, None]
    assert ev.view_error(labels, flipped) == pytest.approx((30 + 40) / 6)


def test_excluded_and_missing_views_are_ignored():
    dirs = in_plane([0, 10, 30, 77, 100, 140])
    labels = np.array([0, 0, 0, 1, 2, 2])
    base = ev.view_error(labels, dirs)
    more_dirs = np.vstack([dirs, in_plane([55, 170]), [[np.nan] * 3]])
    more_labels = np.r_[labels, -1, -5, 0]  # excluded, excluded, and a junk particle (no view)
    assert ev.view_error(more_labels, more_dirs) == pytest.approx(base)
    assert np.isnan(ev.view_error([-1, -1], dirs[:2]))


def test_random_assignment_about_52_degrees():
    d = view_directions(random_rotations(2000, np.random.default_rng(1))[0])
    labels = np.arange(2000) % 32
    err = ev.view_error(labels, d)  # an arbitrary split of random views: random classes
    assert 45 < err < 60
    rand = ev.random_view_error(labels, d, seed=3)
    assert 45 < rand < 60
    # assigning each view to the nearest of 32 reference views scores much better
    refs = view_directions(random_rotations(32, np.random.default_rng(5))[0])
    good = np.argmax(np.abs(d @ refs.T), axis=1)
    assert ev.view_error(good, d) < 0.6 * err
    # the random figure keeps class sizes, so it is the same for any labelling with the same sizes
    assert ev.random_view_error(good, d, seed=3) == pytest.approx(rand, abs=3)


def test_large_class_chunked(monkeypatch):
    rng = np.random.default_rng(2)
    d = unit(rng.normal(size=(300, 3)))
    labels = np.zeros(300, int)
    full = ev.view_angles(d, d).sum(1)
    monkeypatch.setattr(ev, "_CHUNK", 64)
    med, total = ev.class_view_error(d)
    assert med == int(np.argmin(full)) and total == pytest.approx(full.min())
    assert ev.view_error(labels, d) == pytest.approx(full.min() / 300)


def _write_run(tmp_path, n=120, junk_fraction=0.1):
    truth = draw_truth(n, 4, junk_fraction=junk_fraction)
    truth_path = tmp_path / "truth.tsv"
    truth.to_csv(truth_path, sep="\t", index=False)
    run = tmp_path / "run"
    d = truth[["view_x", "view_y", "view_z"]].to_numpy()
    # iteration 0: random labels; iteration 1: labels by view (good), a few excluded
    write_matrix(run / "classmx_00.h5", {"class": np.arange(n) % 6, "particle": np.arange(n)})
    good = np.where(np.isnan(d[:, 2]), 0, (np.abs(np.nan_to_num(d[:, 2])) * 5.999).astype(int))
    good[:5] = -1
    order = np.random.default_rng(0).permutation(n)  # rows in any order
    write_matrix(run / "classmx_01.h5", {"class": good[order], "particle": order})
    return run, truth_path, truth, good


def test_cli_evaluate(tmp_path, capsys):
    run, truth_path, truth, good = _write_run(tmp_path)
    out = tmp_path / "score.json"
    assert cli(["evaluate", str(run), str(truth_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "classmx_01.h5" in printed and "view error" in printed
    res = json.loads(out.read_text())
    d = truth[["view_x", "view_y", "view_z"]].to_numpy()
    assert res["iteration"] == 1
    assert res["view_error_deg"] == pytest.approx(ev.view_error(good, d))
    assert res["random_view_error_deg"] > res["view_error_deg"] + 10
    assert res["n_classes"] == len(np.unique(good[good >= 0]))
    assert res["n_excluded"] == 5 and res["n_particles"] == 120
    assert res["n_scored"] == int(((good >= 0) & ~truth["junk"].to_numpy()).sum())

    assert cli(["evaluate", str(run), str(truth_path), "--iteration", "0", "--json", str(out)]) == 0
    res0 = json.loads(out.read_text())
    assert res0["iteration"] == 0 and res0["n_classes"] == 6
    assert res0["view_error_deg"] > 40


def test_cli_evaluate_errors(tmp_path, capsys):
    run, truth_path, _, _ = _write_run(tmp_path)
    assert cli(["evaluate", str(run), str(truth_path), "--iteration", "7"]) == 2
    assert "no classmx file for iteration 7" in capsys.readouterr().err
    assert cli(["evaluate", str(tmp_path / "nothing"), str(truth_path)]) == 2
    write_matrix(run / "classmx_02.h5", {"class": np.zeros(3, int), "particle": np.array([0, 1, 999])})
    assert cli(["evaluate", str(run), str(truth_path)]) == 2
    assert "999" in capsys.readouterr().err
    (tmp_path / "bad.tsv").write_text("a\tb\n1\t2\n")
    assert cli(["evaluate", str(run), str(tmp_path / "bad.tsv"), "--iteration", "1"]) == 2
    assert "missing column" in capsys.readouterr().err


def test_average_resolution_finds_the_matching_projection_and_orders_noise(ribosome_projections):
    """An average that is a rotated, shifted, mirrored projection is matched to that projection
    (out of 40) and scores Nyquist when clean; more noise gives a coarser FRC-0.5 resolution."""
    from r2d import transforms as tf

    proj, _ = ribosome_projections
    rng = np.random.default_rng(5)
    pick = np.array([3, 17, 29])
    moved = tf.transform(proj[pick], 40.0, 2.0, -1.0, 1.0)
    sigma = proj.std()
    levels = [0.0, 0.5, 2.0]
    avgs = np.stack([moved[i] + rng.normal(0, s * sigma, moved[i].shape) for i, s in enumerate(levels)])
    res, best = ev.average_resolution(avgs.astype(np.float32), proj, 5.0)
    np.testing.assert_array_equal(best, pick)
    assert res[0] <= 2 * 5.0 * 1.25            # clean copy: at or near Nyquist (10 Å)
    assert res[0] < res[1] < res[2]
    # an empty (all-zero) average has no resolution
    res0, _ = ev.average_resolution(np.zeros((1, 64, 64), np.float32), proj, 5.0)
    assert np.isnan(res0[0])
