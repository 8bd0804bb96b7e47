"""The particle mask (``maskdiameter``): what lies outside it changes neither alignments nor
scores nor the normalisation; a bright neighbour beside the particle no longer pulls the
alignment when it is masked out."""

from __future__ import annotations

import numpy as np
import pytest

from r2d import transforms as tf
from r2d.average import class_averages
from r2d.masks import MASK_EDGE, particle_mask
from r2d.simmx import simmx

from conftest import blob_image


def test_particle_mask_geometry():
    mask, radius = particle_mask(100, 162.0, 2.7)  # 60 px diameter
    assert radius == pytest.approx(30.0) and mask.dtype == np.float32
    d = tf.radius_grid(100)
    assert np.all(mask[d <= radius - MASK_EDGE / 2] == 1) and np.all(mask[d >= radius + MASK_EDGE / 2] == 0)
    assert 0.2 < mask[50, 50 + 30] < 0.8  # the soft edge at the radius
    assert particle_mask(100, None, 2.7) == (None, None)


def test_edgemean_normalisation_takes_the_background_outside_the_mask():
    """μ is the mean of every pixel outside the mask, not of the border: a carbon edge along one
    side moves it far less than it moves EMAN2's edge mean."""
    rng = np.random.default_rng(1)
    img = np.full((2, 64, 64), 3.0, np.float32) + rng.normal(0, 0.1, (2, 64, 64)).astype(np.float32)
    d = tf.radius_grid(64)
    img[:, d < 20] += rng.uniform(1, 5, (2, int((d < 20).sum()))).astype(np.float32)
    img[:, 0, :] = 10.0  # a bright edge along the top of the box
    out = tf.normalize(img, "normalize.edgemean", mask_radius=24)
    outside = d >= 24
    sd = img.reshape(2, -1).std(axis=1)
    np.testing.assert_allclose(out, (img - img[:, outside].mean(axis=1)[:, None, None]) / sd[:, None, None],
                               rtol=1e-4, atol=1e-4)
    background = (img[:, 20:44, 50:60].mean() - img[:, outside].mean(axis=1)) / sd  # true background: ~0
    eman = (img[:, 20:44, 50:60].mean() - tf.edge_mean(img)) / sd
    assert np.all(np.abs(background) < 0.5 * np.abs(eman))


def _particles(ribosome_projections, n=60, seed=0, snr=2.0):
    """``n`` projections of the 70S map (64 px, 5 Å/px) rotated and shifted by known transforms,
    with noise at ``snr``: the particles, their references, the true angles and the noise σ."""
    clean, _ = ribosome_projections
    rng = np.random.default_rng(seed)
    refs = clean[np.arange(n) % len(clean)]
    alpha = rng.uniform(-180, 180, n)
    tx, ty = rng.uniform(-2, 2, (2, n))
    parts = tf.transform(refs, *tf.invert(alpha, tx, ty, np.zeros(n)))
    sigma = np.sqrt(refs.reshape(n, -1).var(axis=1).mean() / snr)
    parts = parts + rng.normal(0, sigma, parts.shape).astype(np.float32)
    return parts.astype(np.float32), refs, alpha, sigma


def test_what_lies_outside_the_mask_cannot_change_the_alignment(ribosome_projections):
    """Two copies of the particles, different only beyond the mask (a neighbour in one of them):
    masked, identical alignments and scores; unmasked, not."""
    parts, refs, _, sigma = _particles(ribosome_projections)
    neighbour = 40 * sigma * blob_image(64, [(27, -27, 2.5, 1.0), (-28, 24, 2.0, 0.8)])
    mask, radius = particle_mask(64, 2 * 22 * 5.0, 5.0)  # 44 px diameter at 5 Å/px
    assert np.all(mask[neighbour > 1e-3 * neighbour.max()] == 0)
    crowded = parts + neighbour
    opts = dict(aligner="rotate_translate_flip:maxshift=4", aligncmp="ccc", cmp="ccc")
    a, b = simmx(parts, refs[:6], mask=mask, **opts), simmx(crowded, refs[:6], mask=mask, **opts)
    for key in ("score", "dalpha", "dx", "dy", "mirror"):
        np.testing.assert_array_equal(a[key], b[key])
    c, d = simmx(parts, refs[:6], **opts), simmx(crowded, refs[:6], **opts)
    assert not np.array_equal(c["score"], d["score"])
    # class averaging: the same classes, transforms and scores with and without the neighbour
    label = np.arange(len(parts)) % 3
    kw = dict(iterations=1, aligner="rotate_translate_flip", averager="mean", mask_radius=radius, center=None,
              normproc=None)  # (edgemean: σ is the whole image's, which the neighbour changes)
    ca, cb = class_averages(parts, label, **kw), class_averages(crowded, label, **kw)
    # (the Gaussian neighbour's faint tails reach the references through their shaping, hence ~1°)
    assert np.abs((ca.alpha - cb.alpha + 180) % 360 - 180).max() < 1.0
    assert np.abs(ca.tx - cb.tx).max() < 0.1 and np.abs(ca.score - cb.score).max() < 1e-2
    open_ = class_averages(crowded, label, **{**kw, "mask_radius": None})
    assert np.abs((open_.alpha - ca.alpha + 180) % 360 - 180).max() > 5.0


def test_a_masked_neighbour_no_longer_pulls_the_assignment(ribosome_projections):
    """Each particle (SNR 1) with a bright neighbouring particle 36 px off-centre: against all 40
    views, the best-scoring reference is the particle's own view far more often with the mask
    (measured: 72 % against 58 %), and its in-plane angle is found within 5° as often or more."""
    parts, refs, alpha, sigma = _particles(ribosome_projections, n=80, seed=2, snr=1.0)
    clean, _ = ribosome_projections
    other = tf.transform(clean[(np.arange(80) + 7) % len(clean)], 30.0, 36.0, 8.0, 0.0)  # mostly off the box
    crowded = (parts + 6 * other).astype(np.float32)
    mask, _ = particle_mask(64, 2 * 21 * 5.0, 5.0)
    pairs = np.arange(80)
    best, angle = {}, {}
    for name, m in (("masked", mask), ("open", None)):
        out = simmx(crowded, refs, mask=m, aligner="rotate_translate_flip:maxshift=4", aligncmp="ccc", cmp="ccc")
        best[name] = float(np.mean(np.argmin(out["score"], axis=1) % len(clean) == pairs % len(clean)))
        err = np.abs((out["dalpha"][pairs, pairs] - alpha + 180) % 360 - 180)
        angle[name] = float(np.mean((err < 5) & (out["mirror"][pairs, pairs] == 0)))
    assert best["masked"] > best["open"] + 0.1 and angle["masked"] >= angle["open"], (best, angle)
