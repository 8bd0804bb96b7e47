"""Class averaging with ground truth: members with known rotations, shifts and mirrors."""

import numpy as np

from r2d import transforms as tf
from r2d.average import class_averages
from r2d.cmp import compare
from r2d.align import align

from conftest import blob_image

n = 64
REFS = np.stack([
    blob_image(n, [(5, 3, 4, 1), (-8, 6, 3, 0.7), (2, -10, 5, 0.8), (12, -2, 2, 0.5)]),
    blob_image(n, [(-10, 0, 4, 1), (10, 0, 4, 1), (0, 12, 3, 0.8)]),
])


def _members(N, snr, seed, single=False):
    rng = np.random.default_rng(seed)
    lab = np.zeros(N, dtype=int) if single else rng.integers(0, 2, N)
    alpha = rng.uniform(-180, 180, N)
    tx, ty = rng.uniform(-3, 3, (2, N))
    m = rng.integers(0, 2, N).astype(float)
    clean = tf.transform(REFS[lab], *tf.invert(alpha, tx, ty, m))
    noisy = clean + rng.normal(0, np.sqrt(clean.var() / snr), clean.shape).astype(np.float32)
    return noisy, lab


def test_averages_match_noise_free_images():
    parts, lab = _members(300, 0.1, 0)
    res = class_averages(parts, lab, iterations=2, averager="mean", center="nocenter", keep=1.0)
    assert list(res.class_ids) == [0, 1]
    for k in range(2):
        a = align(res.averages[k:k + 1], REFS[k:k + 1], "rotate_translate_flip:maxshift=6", "ccc")
        assert -a.score[0, 0] > 0.95
    assert res.ptcl_repr.sum() == 300


def test_classkeep_excludes_intruders():
    parts, lab = _members(200, 1.0, 1, single=True)
    rng = np.random.default_rng(5)
    intr = rng.choice(200, 40, replace=False)
    # intruders: images of the other object
    parts[intr] = tf.transform(REFS[[1] * 40], rng.uniform(-180, 180, 40), 0, 0, 0)
    parts[intr] += rng.normal(0, np.sqrt(REFS[1].var()), parts[intr].shape).astype(np.float32)
    truth = np.zeros(200, bool)
    truth[intr] = True
    res = class_averages(parts, lab, iterations=3, averager="mean", keep=0.8, center="nocenter")
    excluded = ~res.used
    assert excluded[truth].mean() >= 0.8
