"""The particle step of ``r2d select --auto`` (``r2d.junk``) against simulated truth."""

from __future__ import annotations

import numpy as np
import pytest

from r2d import junk
from r2d import simulate as sim
from conftest import map_volume

# (map, box, pixel size of the particles, pixel size of the map or None for the particles')
MOLECULES = [("phantom", 48, 6.0, None), ("ribosome70S_65px.mrc", 64, 5.0, 5.0),
             ("groel_emd1080_100px.mrc", 64, 3.0, None)]


@pytest.mark.parametrize("name,box,apix,map_apix", MOLECULES)
def test_junk_likelihood_finds_more_junk_than_it_was_taught(name, box, apix, map_apix):
    """800 particles, SNR 0.1 in the disc of 0.4 x box, raw CTF, 25 % junk of every kind. The
    teacher (standing in for the class step) names 40 % of the junk and, wrongly, 5 % of the good
    particles. The classifier keeps >= 97 % of the good particles, >= 90 % of those wrongly
    named among them, and finds >= 45 % of the junk (more than it was taught), >= 50 % of the
    noise picks and of the carbon edges."""
    imgs, truth = sim.simulate(map_volume(name), 800, box, apix, snr=0.1, snr_radius=0.4 * box, shift_max=2,
                               ctf="full", defocus=(8000, 25000), seed=1, junk_fraction=0.25,
                               junk_kinds=sim.JUNK_KINDS, map_pixel_size=map_apix)
    kind = truth["junk_kind"].to_numpy()
    good = kind == "particle"
    X = junk.image_features(imgs)
    assert X.shape == (800, len(junk.FEATURES)) and X.dtype == np.float64 and np.isfinite(X).all()
    rng = np.random.default_rng(1)
    wrong = good & (rng.random(800) < 0.05)
    taught = (~good & (rng.random(800) < 0.4)) | wrong
    p = junk.junk_probability(X, taught)
    assert p.shape == (800,) and ((p >= 0) & (p <= 1)).all()
    drop = p >= junk.JUNK_P
    assert 1 - drop[good].mean() >= 0.97
    assert 1 - drop[wrong].mean() >= 0.90
    assert drop[~good].mean() >= 0.45 > taught[~good].mean() + 0.02
    for k in ("noise", "edge"):
        assert drop[kind == k].mean() >= 0.5, k
    # the same data and labels give the same probabilities
    np.testing.assert_array_equal(junk.junk_probability(X, taught), p)


def _rot90_about_centre(img: np.ndarray) -> np.ndarray:
    """``img`` rotated by 90 degrees about pixel (n/2, n/2), the box centre r2d uses."""
    a = np.fft.ifftshift(img)
    return np.fft.fftshift(np.roll(np.rot90(a), 1, axis=0))


@pytest.mark.parametrize("box", [48, 128])
def test_features_are_rotation_and_scale_invariant(box):
    """Features of an image rotated by 90 degrees about the box centre, or scaled, are the same
    (128 px: computed on the image shrunk to 64 px); an off-centre copy has a larger centroid offset."""
    imgs, _ = sim.simulate(map_volume("phantom"), 6, box, 6.0 * 48 / box, snr=0.5, seed=3, map_pixel_size=6.0)
    f = junk.image_features(imgs)
    rot = np.stack([_rot90_about_centre(im) for im in imgs])
    np.testing.assert_allclose(junk.image_features(rot), f, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(junk.image_features(3.5 * imgs), f, rtol=1e-7, atol=1e-9)
    moved = junk.image_features(np.roll(imgs, box // 5, axis=2))
    c = junk.FEATURES.index("centroid")
    assert (moved[:, c] > f[:, c] + 0.05).all()


def test_too_few_labels_on_either_side_gives_none():
    X = np.random.default_rng(0).normal(size=(100, 4))
    assert junk.junk_probability(X, np.zeros(100, bool)) is None
    assert junk.junk_probability(X, np.arange(100) < junk.MIN_LABELS - 1) is None
    assert junk.junk_probability(X, np.arange(100) < 30) is not None


def test_stack_features_are_the_same_bytes_whatever_the_block(tmp_path):
    from r2d import io

    imgs, _ = sim.simulate(map_volume("phantom"), 70, 48, 6.0, snr=0.3, seed=4)
    io.write_mrcs(tmp_path / "p.mrcs", imgs, 6.0)
    stack = io.open_stack(tmp_path / "p.mrcs")
    whole = junk.stack_features(stack)
    np.testing.assert_array_equal(junk.stack_features(stack, block=16), whole)
    np.testing.assert_array_equal(whole, junk.image_features(imgs))
