"""Class stability from random-order repeats of class averaging (`r2d stability`)."""

from __future__ import annotations

import numpy as np
import pytest

from r2d import cli, io
from r2d import simulate as sim
from r2d import transforms as tf
from r2d.average import class_averages
from r2d.stability import consensus_errors, summarise, transform_error
from conftest import map_volume

#: (rot, tilt) of the simulated views; 0-3 make one class each, 4+5 and 6+7 two mixed classes
VIEWS = [(0, 0), (0, 90), (90, 90), (45, 45), (135, 60), (60, 130), (200, 100), (300, 30)]
PER_VIEW = 40
BOX = 48


def test_transform_error():
    z = np.zeros(3)
    ident = (z, z, z, z)
    np.testing.assert_allclose(transform_error(ident, ident, 10.0), 0.0, atol=1e-12)
    np.testing.assert_allclose(transform_error((z, z + 3, z + 4, z), ident, 10.0), 5.0)
    rot = (z + 60.0, z, z, z)
    np.testing.assert_allclose(transform_error(rot, ident, 10.0), 2 * 10.0 * np.sin(np.radians(30)))
    np.testing.assert_allclose(transform_error((z, z, z, z + 1), ident, 10.0), 20.0)
    # the particle moved first (a ∘ m against b ∘ m): the same error
    a, b = (z + 30, z + 1, z - 2, z + 1), (z + 75, z - 1, z, z + 1)
    m = (z + 12.0, z + 0.5, z + 2.0, z + 1)
    np.testing.assert_allclose(transform_error(tf.compose(m, a), tf.compose(m, b), 7.0),
                               transform_error(a, b, 7.0), atol=1e-9)


def test_summarise():
    err = np.array([[0.5, 5.0, np.nan, 1.0], [0.5, 0.5, np.nan, 9.0]])
    agree, spread, stab = summarise(err, np.array([0, 0, 1, -1]), 3)
    np.testing.assert_allclose(agree, [1.0, 0.5, np.nan, 0.5])
    np.testing.assert_allclose(spread[:2], [0.5, np.sqrt((25 + 0.25) / 2)], rtol=1e-6)
    np.testing.assert_allclose(stab, [0.75, np.nan, np.nan])


def _data(vol, snr, seed):
    """Particles of the eight views (random in-plane rotations, shifts up to 2 px, white noise
    at ``snr`` over the box) and PER_VIEW pure-noise images; their view (−1 = noise)."""
    rng = np.random.default_rng(seed)
    rows = np.array([(rot, tilt, rng.uniform(-180, 180)) for rot, tilt in VIEWS for _ in range(PER_VIEW)])
    clean = sim.project(vol, sim.euler_to_matrix(*rows.T), BOX)
    shift = rng.uniform(-2, 2, (len(rows), 2))
    clean = tf.fourier_shift(clean, shift[:, 0], shift[:, 1])
    sigma = np.sqrt(clean.reshape(len(clean), -1).var(axis=1).mean() / snr)
    imgs = np.concatenate([clean, np.zeros((PER_VIEW, BOX, BOX))])
    imgs = (imgs + rng.normal(scale=sigma, size=imgs.shape)).astype(np.float32)
    return imgs, np.concatenate([np.repeat(np.arange(len(VIEWS)), PER_VIEW), np.full(PER_VIEW, -1)])


def _table(res):
    return {"class": res.label, "dalpha": res.alpha, "dx": res.tx, "dy": res.ty, "mirror": res.mirror}


@pytest.mark.parametrize("name, snr", [("ribosome70S_65px.mrc", 0.1), ("cmg_emd1832_64px.mrc", 0.1),
                                       ("phantom", 0.3)])
def test_mixed_classes_score_lower_and_noise_lowest(name, snr, tmp_path):
    """Four classes of one view each, two classes each mixing two views (at least 60° apart),
    one class of pure noise, SNR ``snr`` over the box: three random-order repeats of class
    averaging."""
    imgs, view = _data(map_volume(name), snr, seed=4)
    label = np.where(view < 0, 6, np.where(view < 4, view, 4 + (view - 4) // 2))
    kw = dict(iterations=5, aligner="rotate_translate_flip", averager="mean", normproc="normalize.edgemean")
    final = _table(class_averages(imgs, label, **kw))
    reps = [_table(class_averages(imgs, label, start_order=np.random.default_rng([s, 12]).random(len(label)), **kw))
            for s in (1, 2, 3)]
    errors = np.array([consensus_errors(final, r, BOX / 4) for r in reps])
    _, _, stab = summarise(errors, label, 7)
    clean, mixed, noise = stab[:4], stab[4:6], stab[6]
    assert clean.min() > mixed.max(), stab
    assert noise < 0.2 and noise < mixed.min(), stab
    # the command gives the same numbers from the tables on disk
    paths = []
    for i, t in enumerate([final, *reps]):
        paths.append(tmp_path / f"t{i}.h5")
        io.write_matrix(paths[-1], {**t, "particle": np.arange(len(label))}, {"box": BOX})
    out = tmp_path / "stability.h5"
    assert cli.main(["stability", *map(str, paths), "-o", str(out)]) == 0
    np.testing.assert_allclose(io.read_matrix(out)["stability"], stab, rtol=1e-6)


def test_random_start_is_seeded(tiny_run, tmp_path):
    """`r2d average --random-start`: the same seed writes the same table, another seed another
    bootstrap order; a table of other particles is refused by `r2d stability`."""
    run = tiny_run / "run"
    common = [str(tiny_run / "data" / "particles.star"), str(run / "resultmx_01.h5"), "--iter", "2"]
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert cli.main(["average", *common, "-o", str(tmp_path / f"{name}.hdf"),
                         "--resultmx", str(tmp_path / f"{name}.h5"), "--random-start", str(seed)]) == 0
    a, b, c = (io.read_matrix(tmp_path / f"{x}.h5") for x in "abc")
    for k in ("dalpha", "dx", "dy", "mirror"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not all(np.array_equal(a[k], c[k]) for k in ("dalpha", "dx", "dy"))
    other = dict(a, particle=a["particle"][::-1])
    io.write_matrix(tmp_path / "other.h5", other, {"box": 32})
    assert cli.main(["stability", str(run / "resultmx_01.h5"), str(tmp_path / "other.h5"),
                     "-o", str(tmp_path / "s.h5")]) == 2


def test_exported_and_selected(tiny_run, tmp_path):
    """`r2d export --stability`: r2dStability per particle (its agreement) and per class (their
    mean); `r2d select --min-stability` drops the classes below it."""
    import starfile

    run = tiny_run / "run"
    reps = []
    for seed in (1, 2):
        reps.append(tmp_path / f"r{seed}.h5")
        assert cli.main(["average", str(tiny_run / "data" / "particles.star"), str(run / "resultmx_01.h5"),
                         "--iter", "2", "-o", str(tmp_path / f"r{seed}.hdf"), "--resultmx", str(reps[-1]),
                         "--random-start", str(seed)]) == 0
    table = tmp_path / "stability.h5"
    assert cli.main(["stability", str(run / "resultmx_01.h5"), *map(str, reps), "-o", str(table)]) == 0
    st = io.read_matrix(table)
    out = tmp_path / "export"
    assert cli.main(["export", str(run), "--input", str(tiny_run / "data" / "particles.star"), "-o", str(out),
                     "--stability", str(table)]) == 0
    parts = starfile.read(out / "particles.star", always_dict=True)["particles"]
    classes = starfile.read(out / "class_averages.star", always_dict=True)["particles"]
    agree = np.full(len(parts), np.nan)
    agree[st["particle"]] = st["agreement"]
    np.testing.assert_allclose(parts["r2dStability"], agree, rtol=1e-6)
    for k, s in zip(classes["rlnClassNumber"], classes["r2dStability"]):
        members = parts["rlnClassNumber"].to_numpy() == k
        np.testing.assert_allclose(s, np.nanmean(agree[members]), rtol=1e-5)
    threshold = float(np.median(classes["r2dStability"])) + 1e-6
    low = set(classes["rlnClassNumber"][classes["r2dStability"] < threshold])
    assert cli.main(["select", str(out / "particles.star"), "--min-stability", str(threshold),
                     "-o", str(tmp_path / "stable.star")]) == 0
    kept = starfile.read(tmp_path / "stable.star", always_dict=True)["particles"]["rlnClassNumber"]
    assert set(kept) == set(classes["rlnClassNumber"]) - low and low
    # --unstable-z: the particles that agreed with no repeat and fit worse than their class median go
    from r2d.select import robust_z

    zeroed = dict(st, agreement=np.where(np.arange(len(st["particle"])) % 3 == 0, 0.0, st["agreement"]))
    io.write_matrix(tmp_path / "zeroed.h5", zeroed, {"artifact": "stability"})
    out2 = tmp_path / "export2"
    assert cli.main(["export", str(run), "--input", str(tiny_run / "data" / "particles.star"), "-o", str(out2),
                     "--stability", str(tmp_path / "zeroed.h5")]) == 0
    assert cli.main(["select", str(out2 / "particles.star"), "--unstable-z", "0", "-o", str(tmp_path / "u.star")]) == 0
    names = starfile.read(tmp_path / "u.star", always_dict=True)["particles"]["rlnImageName"]
    kept_idx = names.str.split("@").str[0].astype(int).to_numpy() - 1
    klass = parts["rlnClassNumber"].to_numpy()
    gone = np.setdiff1d(np.flatnonzero(klass > 0), kept_idx)
    unstable = np.zeros(len(parts), bool)
    unstable[zeroed["particle"][zeroed["agreement"] == 0]] = True
    expected = np.flatnonzero(unstable & (robust_z(klass, parts["r2dScore"].to_numpy(float)) > 0) & (klass > 0))
    assert len(expected) >= 5
    np.testing.assert_array_equal(gone, expected)
