"""`r2d select`: particle subsets by class number, by exclusion, and by the automatic class score."""

from __future__ import annotations

import numpy as np
import pytest
import starfile

from r2d import cli, io
from r2d.errors import UserError
from r2d.select import contrast, parse_classes, score_classes, score_outliers, select_classes, unstable_misfits
from conftest import REPO, TINY_N as N, blob_image

REPO_CONFIG = REPO / "config" / "config.yaml"


@pytest.fixture(scope="module")
def run_wd(tiny_run):
    return tiny_run


def classes_of(run_wd):
    return io.read_matrix(run_wd / "run" / "classmx_01.h5")["class"] + 1  # 1-based, particle order


def test_select_classes_writes_exactly_those_particles(run_wd, tmp_path, capsys):
    cls = classes_of(run_wd)
    out = tmp_path / "sub" / "c13.star"
    assert cli.main(["select", str(run_wd / "run"), "--classes", "1,3", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    want = np.flatnonzero(np.isin(cls, [1, 3]))
    assert f"kept {len(want)} of {N} particles" in printed and "kept 2 of 4 classes: 1, 3" in printed
    tables = starfile.read(out, always_dict=True)
    assert "optics" in tables
    np.testing.assert_array_equal(tables["particles"]["rlnClassNumber"], cls[want])
    # the image names were rewritten for the new folder: same images as the input's particles
    src = io.open_stack(run_wd / "data" / "particles.star").read(want)
    np.testing.assert_array_equal(io.open_stack(out).read(slice(None)), src)


def test_exclude_classes_and_mrcs_stack(run_wd, tmp_path):
    cls = classes_of(run_wd)
    star = run_wd / "run" / "export" / "particles.star"
    out, mrcs = tmp_path / "x.star", tmp_path / "stacks" / "x.mrcs"
    assert cli.main(["select", str(star), "--exclude-classes", "2", "--drop-excluded", "-o", str(out),
                     "--mrcs", str(mrcs)]) == 0
    exc = starfile.read(star, always_dict=True)["particles"]["r2dExcluded"].to_numpy()
    want = np.flatnonzero((cls != 2) & (exc == 0))
    parts = starfile.read(out, always_dict=True)["particles"]
    assert len(parts) == len(want) and set(parts["rlnClassNumber"]) <= {1, 3, 4}
    assert parts["rlnImageName"].iloc[0] == "000001@stacks/x.mrcs"
    st = io.open_stack(out)
    assert st.pixel_size == 10.0
    np.testing.assert_array_equal(st.read(slice(None)), io.open_stack(star).read(want))


def test_auto_selection_on_the_tiny_run_and_dry_run(run_wd, tmp_path, capsys):
    out = tmp_path / "auto.star"
    assert cli.main(["select", str(run_wd / "run"), "--auto", "-o", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "score" in printed and "contrast" in printed and not out.exists()
    with pytest.raises(SystemExit):
        cli.main(["select", str(run_wd / "run"), "--auto", "--classes", "1", "-o", str(out)])
    assert cli.main(["select", str(run_wd / "run"), "--classes", "9", "-o", str(out)]) == 2  # empty: an error


def test_auto_particle_step_on_the_tiny_run(run_wd, tmp_path, capsys):
    """The class table gains the particles selected per class; --junk-p outside (0, 1] is refused
    up front, --junk-p 1 selects whole classes."""
    out = tmp_path / "auto.star"
    assert cli.main(["select", str(run_wd / "run"), "--auto", "--junk-p", "0", "-o", str(out)]) == 2
    assert "--junk-p 0" in capsys.readouterr().err and not out.exists()
    assert cli.main(["select", str(run_wd / "run"), "--auto", "--junk-p", "1", "--outlier-z", "0", "-o",
                     str(out)]) == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[0].split()
    assert header[header.index("kept") + 1] == "selected" and "particle step" not in printed
    rows = [line.split() for line in printed.splitlines()[1:] if line.split() and line.split()[0].isdigit()]
    selected = {int(r[0]): int(r[header.index("selected")]) for r in rows}
    kept = {int(r[0]) for r in rows if r[header.index("kept")] == "yes"}
    klass = starfile.read(out, always_dict=True)["particles"]["rlnClassNumber"].to_numpy()
    assert set(np.unique(klass)) == kept  # whole classes
    assert all(selected[k] == int((klass == k).sum()) for k in selected)
    # an excluded class stays out, whatever the particle step makes of its members
    assert cli.main(["select", str(run_wd / "run"), "--auto", "--exclude-classes", "1", "-o", str(out)]) == 0
    assert 1 not in starfile.read(out, always_dict=True)["particles"]["rlnClassNumber"].to_numpy()


def test_parse_classes():
    assert parse_classes("1,4,7") == [1, 4, 7]
    assert parse_classes(" 2-4, 9,2") == [2, 3, 4, 9]
    assert parse_classes(None) == []
    for bad in ("0", "a", "1,,x"):
        with pytest.raises(UserError):
            parse_classes(bad)


def test_auto_score_drops_noise_and_blob_classes_keeps_particles():
    """Synthetic class averages: six particle classes (one small), a noise class, a blob class."""
    rng = np.random.default_rng(1)
    n = 48
    particle = blob_image(n, [(0, 0, 4, 1.0), (6, 3, 3, 0.8), (-5, 4, 2, 0.6), (2, -7, 3, 0.7)])
    avgs = [particle + rng.normal(scale=0.03, size=(n, n)) for _ in range(6)]
    avgs.append(rng.normal(scale=0.3, size=(n, n)))  # average of pure noise
    avgs.append(blob_image(n, [(1, 1, 5, 1.0)]) + rng.normal(scale=0.1, size=(n, n)))  # a blob, low resolution
    avgs = np.array(avgs, dtype=np.float32)
    members = np.array([120, 110, 100, 90, 80, 25, 60, 50])
    res = np.array([12, 12.5, 13, 12, 14, 18, 999, 45.0])
    t = score_classes(members, res, avgs, apix=2.0)
    keep = select_classes(np.repeat(np.arange(1, 9), members), table=t, auto=True)
    assert keep == [1, 2, 3, 4, 5, 6], (t.score, t.terms)
    assert contrast(avgs)[6] < 1.5 < contrast(avgs)[0]
    # single criteria
    t2 = score_classes(members, res, avgs, apix=2.0, score="resolution")
    assert np.argmin(t2.score) == 6
    with pytest.raises(UserError):
        score_classes(members, None, avgs, score="resolution")


def test_auto_score_uses_stability_and_keeps_a_stable_rare_view():
    """Eight particle classes of one view each; class 7 is a rare view (12 particles), class 8
    as small but unstable, class 3 large but a mixture (stability 0.1). Without stability both
    small classes go for their size; with it the stable one is kept as a rare view and the
    unstable ones go, each for the reason the table gives."""
    rng = np.random.default_rng(2)
    n = 48
    particle = blob_image(n, [(0, 0, 4, 1.0), (6, 3, 3, 0.8), (-5, 4, 2, 0.6), (2, -7, 3, 0.7)])
    members = np.array([120, 110, 100, 90, 80, 70, 12, 12])
    avgs = np.array([particle + rng.normal(scale=0.3 / np.sqrt(m), size=(n, n)) for m in members], dtype=np.float32)
    res = np.full(8, 12.0)
    stab = np.array([0.8, 0.75, 0.1, 0.85, 0.7, 0.8, 0.9, 0.05])
    labels = np.repeat(np.arange(1, 9), members)
    plain = score_classes(members, res, avgs, apix=2.0)
    assert select_classes(labels, table=plain, auto=True, threshold=-1.0) == [1, 2, 3, 4, 5, 6]
    t = score_classes(members, res, avgs, apix=2.0, stability=stab)
    assert select_classes(labels, table=t, auto=True, threshold=-1.0) == [1, 2, 4, 5, 6, 7]
    assert t.rare.tolist() == [False] * 6 + [True, False] and t.terms["count"][6] == 0
    assert t.terms["stability"][[0, 1, 3, 5, 6]].max() == 0 and t.terms["stability"][2] < -1
    assert "rare view" in t.reason(6, True) and "unstable" in t.reason(2, False, -1.0)
    assert "few particles" in t.reason(7, False, -1.0) and "unstable" in t.reason(7, False, -1.0)
    assert np.argmin(score_classes(members, res, avgs, score="stability", stability=stab).score) == 7


def test_score_outliers():
    rng = np.random.default_rng(0)
    klass = np.repeat([1, 2, 0], [50, 50, 5])
    score = rng.normal(-0.9, 0.01, len(klass))
    score[[3, 60]] = -0.5  # far worse than their classes
    score[100] = 5.0  # unclassified: never an outlier
    np.testing.assert_array_equal(np.flatnonzero(score_outliers(klass, score, 3.0)), [3, 60])
    assert not score_outliers(klass, score, 0).any()


def test_unstable_misfits():
    """Dropped: agreed with no repeat *and* scores more than z robust σ worse than its class
    median; either alone is not enough; unclassified or unknown stability never."""
    rng = np.random.default_rng(3)
    klass = np.repeat([1, 2, 0], [40, 40, 4])
    score = rng.normal(-0.9, 0.01, len(klass))
    agreement = np.full(len(klass), 2 / 3)
    score[[1, 2, 41]] = -0.85  # misfits (5 σ)
    agreement[[1, 41, 5, 80]] = 0.0  # 1 and 41 also unstable; 5 unstable but fits; 80 unclassified
    agreement[2] = np.nan  # unknown stability: kept
    np.testing.assert_array_equal(np.flatnonzero(unstable_misfits(klass, score, agreement, 1.0)), [1, 41])
    assert not unstable_misfits(klass, score, agreement, 10.0).any()


@pytest.mark.slow
@pytest.mark.workflow
def test_auto_selection_on_a_junk_dataset(tmp_path, smk):
    """The whole workflow (about 1 min on 2 cores) on 1,000 simulated phantom particles with 10 %
    junk (noise or random blobs), then `r2d select --auto`: floors a little below what it does
    (94.9 % of the good particles kept, 61 % of the junk dropped, every noise pick): >= 93 % kept,
    >= 55 % of the junk and >= 90 % of the noise picks dropped."""
    import pandas as pd
    import yaml

    assert cli.main(["simulate", "--phantom", "--n", "1000", "--box", "64", "--apix", "5", "--snr", "0.1",
                     "--shift", "3", "--ctf", "flip", "--defocus", "10000", "30000", "--junk", "0.1",
                     "--seed", "11", "-o", str(tmp_path / "data")]) == 0
    (tmp_path / "config").mkdir()
    cfg = yaml.safe_load((REPO_CONFIG).read_text())
    cfg.update(input="data/particles.star", path="run", ncls=16, iter=4)
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = smk(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "auto.star"
    assert cli.main(["select", str(tmp_path / "run"), "--auto", "-o", str(out)]) == 0
    truth = pd.read_csv(tmp_path / "data" / "truth.tsv", sep="\t")
    names = starfile.read(out, always_dict=True)["particles"]["rlnImageName"]
    kept = np.zeros(len(truth), bool)
    kept[names.str.split("@").str[0].astype(int).to_numpy() - 1] = True
    junk = truth["junk"].to_numpy(bool)
    assert (kept & ~junk).sum() >= 0.93 * (~junk).sum()
    assert (~kept & junk).sum() >= 0.55 * junk.sum()
    noise = truth["junk_kind"].to_numpy() == "noise"
    assert (~kept & noise).sum() >= 0.90 * noise.sum()
