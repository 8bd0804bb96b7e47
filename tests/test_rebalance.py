"""View groups of class averages and the per-group cap (`r2d select --rebalance`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
import starfile

from r2d import cli
from r2d import transforms as tf
from r2d.rebalance import cap_groups, similarity, view_groups
from r2d.simulate import euler_to_matrix, project
from conftest import map_volume

#: noise of the class averages over their signal (std), low-passed as averages are
NOISE = 0.25


def _averages(vol, box, rng):
    """Six copies of one view (in-plane rotated, shifted, three mirrored; noisy) and six views
    at least 40° from it and from each other, as class averages of a run would show them."""
    one = project(vol, euler_to_matrix(np.array([30.0]), np.array([60.0]), np.array([0.0])), box)[0]
    copies = []
    for i in range(6):
        dx, dy = rng.uniform(-2, 2, 2)
        copies.append(tf.transform(one[None], rng.uniform(0, 360), dx, dy, i % 2, order=3)[0])
    views = [(30.0 + 60 * k, 60.0 + (-40.0 if k % 2 else 40.0), 0.0) for k in range(1, 7)]
    others = project(vol, euler_to_matrix(*np.array(views).T), box)
    avgs = np.concatenate([np.array(copies), others]).astype(np.float32)
    noise = ndimage.gaussian_filter(rng.normal(size=avgs.shape), (0, 1, 1))
    return (avgs + NOISE * avgs.std() / noise.std() * noise).astype(np.float32)


@pytest.mark.parametrize("name", ["phantom", "groel_emd1080_100px.mrc", "cmg_emd1832_64px.mrc"])
def test_view_groups_join_the_copies_of_one_view(name):
    vol = map_volume(name)
    rng = np.random.default_rng(7)
    avgs = _averages(vol, 64, rng)
    sim = similarity(avgs)
    assert sim.shape == (12, 12) and np.allclose(sim, sim.T) and np.allclose(np.diag(sim), 1)
    assert sim[:6, :6].min() > 0.7 > sim[:6, 6:].max()
    group = view_groups(sim)
    assert len(set(group[:6])) == 1, group
    assert group[0] not in group[6:], group
    # asked for two groups: the copies are one of them
    two = view_groups(sim, ngroups=2)
    assert set(two) == {0, 1} and len(set(two[:6])) == 1


def test_view_groups_edge_cases():
    assert view_groups(np.ones((1, 1))).tolist() == [0]
    sim = np.eye(4)
    assert view_groups(sim).tolist() == [0, 1, 2, 3]
    sim[0, 2] = sim[2, 0] = 0.9
    assert view_groups(sim).tolist() == [0, 1, 0, 2]
    assert similarity(np.zeros((2, 16, 16), np.float32)).tolist() == [[1, 0], [0, 1]]


def test_cap_groups():
    group = np.repeat([0, 1, 2, -1], [500, 40, 100, 30])
    keep = cap_groups(group, 100, seed=3)
    assert keep[group == 0].sum() == 100 and keep[group == 1].all() and keep[group == 2].all()
    assert not keep[group == -1].any()
    np.testing.assert_array_equal(keep, cap_groups(group, 100, seed=3))
    assert not np.array_equal(keep, cap_groups(group, 100, seed=4))
    with pytest.raises(ValueError):
        cap_groups(group, 0)


def test_cli_rebalance_on_the_tiny_run(tiny_run, tmp_path, capsys):
    run = tiny_run / "run"
    out = tmp_path / "bal.star"
    assert cli.main(["select", str(run), "--rebalance", "6", "--rebalance-groups", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rebalanced: at most 6 particles per view group" in printed
    parts = starfile.read(out, always_dict=True)["particles"]
    assert len(parts) == 12  # two groups of well over 6 particles, 6 each
    # the same call keeps the same particles; another seed others
    out2 = tmp_path / "bal2.star"
    cli.main(["select", str(run), "--rebalance", "6", "--rebalance-groups", "2", "-o", str(out2)])
    assert starfile.read(out2, always_dict=True)["particles"]["rlnImageName"].tolist() == \
        parts["rlnImageName"].tolist()
    cli.main(["select", str(run), "--rebalance", "6", "--rebalance-groups", "2", "--seed", "1", "-o", str(out2)])
    assert starfile.read(out2, always_dict=True)["particles"]["rlnImageName"].tolist() != \
        parts["rlnImageName"].tolist()
    capsys.readouterr()
    assert cli.main(["select", str(run), "--rebalance", "0", "-o", str(out2)]) == 2
    assert "--rebalance 0" in capsys.readouterr().err
