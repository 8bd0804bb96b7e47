"""The working resolution: geometry, the CTF of cropped images, and a full workflow run that
classifies a raw-CTF GroEL stack on its working stack and delivers full-size class averages
whose exported poses RELION applies to the true molecule centres."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import scipy.fft as sfft
import starfile
import yaml

from r2d import cli, io
from r2d import transforms as tf
from r2d.ctf import ctf_2d
from r2d.errors import ConfigError
from r2d.working import MIN_WORKING_BOX, working_geometry

from conftest import SHARED, blob_image

GROEL = SHARED / "maps" / "groel_emd1080_100px.mrc"
BOX, APIX, N = 100, 2.7, 240  # the map's own grid: the working stack is 68 px at 3.97 Å/px


def test_working_geometry():
    w = working_geometry(256, 1.25, 8)
    assert (w.box, w.apix, w.cropped, w.scale) == (80, 4.0, True, 3.2)
    w = working_geometry(384, 1.0, 8)
    assert (w.box, w.apix) == (96, 4.0)
    for maxres, apix in ((None, 1.25), (0, 1.25), (2.0, 1.25), (8, None)):  # null, 0, finer than Nyquist, no apix
        w = working_geometry(256, apix, maxres)
        assert (w.box, w.cropped, w.scale) == (256, False, 1.0) and "full" in w.note
    with pytest.raises(ConfigError, match="at least 32 px"):
        working_geometry(64, 1.0, 8)  # 16 px
    w = working_geometry(64, 1.0, 8, strict=False)  # a default maxres: raised to the smallest box
    assert w.box == MIN_WORKING_BOX and w.apix == 2.0


def test_cropped_image_ctf_is_the_full_ctf_at_the_kept_frequencies():
    """A raw (CTF-convolved) image, Fourier-cropped, is the cropped clean image times the CTF
    evaluated on the working grid at the working pixel size (astigmatic, away from Nyquist)."""
    rng = np.random.default_rng(0)
    n, m, apix = 128, 48, 1.5
    clean = rng.standard_normal((2, n, n)).astype(np.float32)
    args = dict(defocus_u=np.array([12000.0, 21000]), defocus_v=np.array([11500.0, 20200]),
                defocus_angle=np.array([30.0, 120]), voltage=np.full(2, 300.0), cs=np.full(2, 2.7),
                amp_contrast=np.full(2, 0.1), phase_shift=np.zeros(2))
    full = ctf_2d(n, apix, *args.values(), rfft=True)
    raw = sfft.irfft2(sfft.rfft2(clean) * full, s=(n, n)).astype(np.float32)
    work = ctf_2d(m, apix * n / m, *args.values(), rfft=True)
    got = sfft.rfft2(tf.fourier_crop(raw, m))
    want = sfft.rfft2(tf.fourier_crop(clean, m)) * work
    inner = tf.freq_radius(m) < m // 2 - 1
    err = np.abs(got - want)[:, inner].max() / np.abs(want[:, inner]).max()
    assert err < 1e-4


@pytest.fixture(scope="module")
def groel_run(tmp_path_factory, smk):
    """A default workflow run (2 iterations) on 240 raw-CTF GroEL particles of 100 px at 2.7 Å/px,
    SNR 0.5 in the particle disc, shifts up to 5 px: classified at 68 px, averaged at 100 px."""
    if not GROEL.exists():
        pytest.skip(f"{GROEL} not available (../shared absent)")
    wd = tmp_path_factory.mktemp("working")
    assert cli.main(["simulate", "--map", str(GROEL), "--n", str(N), "--box", str(BOX), "--snr", "0.5",
                     "--snr-disc", "0.4", "--shift", "5", "--ctf", "full", "--defocus", "8000", "20000",
                     "--astigmatism", "400", "--seed", "4", "-o", str(wd / "data")]) == 0
    (wd / "config").mkdir()
    config = {"input": "data/particles.star", "path": "run", "ncls": 6, "iter": 2, "seed": 3}
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    r = smk(wd)
    assert r.returncode == 0, r.stderr[-4000:]
    return wd


def test_steps_run_on_the_working_stack_and_the_final_averages_are_full_size(groel_run):
    run = groel_run / "run"
    m = int(2 * round(BOX * APIX / 8))
    w_apix = APIX * BOX / m
    work = io.open_stack(run / "working.mrcs")
    assert work.shape == (N, m, m) and work.pixel_size == pytest.approx(w_apix, rel=1e-5)
    index = io.open_stack(run / "particles.h5")
    assert index.box == m and index.pixel_size == pytest.approx(w_apix)
    attrs = io.read_matrix_attrs(run / "particles.h5")
    assert attrs["input_box"] == BOX and attrs["input_pixel_size"] == pytest.approx(APIX)
    # CTF parameters are physical (Å): the same in the index as in the input
    np.testing.assert_allclose(index.ctf_params()["defocus_u"],
                               io.open_stack(groel_run / "data" / "particles.star").ctf_params()["defocus_u"])
    assert io.read_image_stack(run / "classes_02.hdf").shape[-1] == m
    final = io.read_image_stack(run / "classes_final.hdf")
    assert final.shape[-1] == BOX
    exported = io.open_stack(run / "export" / "class_averages.mrcs")
    assert exported.box == BOX and exported.pixel_size == pytest.approx(APIX)
    # the full-size averages are the working ones with the detail beyond the working Nyquist
    working = io.read_image_stack(run / "classes_02.hdf")
    crop = tf.fourier_crop(final, m)
    ncc = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(crop, working)]
    assert min(ncc) > 0.8, ncc
    summary = json.loads((run / "report" / "summary.json").read_text())["images"]
    assert summary["box"] == m and summary["input_box"] == BOX and summary["final_box"] == BOX
    wres = io.read_matrix_attrs(run / "resultmx_02.h5")
    fres = io.read_matrix_attrs(run / "resultmx_final.h5")
    assert (wres["box"], fres["box"]) == (m, BOX)
    a, b = io.read_matrix(run / "resultmx_02.h5"), io.read_matrix(run / "resultmx_final.h5")
    np.testing.assert_allclose(b["dx"], a["dx"] * BOX / m, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(b["dalpha"], a["dalpha"])


def test_relion_puts_the_true_molecule_centres_of_a_class_on_one_point(groel_run, tmp_path, relion):
    """RELION's own transformation (``relion_stack_create --apply_transformation``) with the
    exported psi and rlnOriginX/YAngst, applied to images of a dot at each particle's true
    molecule centre: within a class the dots land on one point (median residual under 4 Å)."""
    out = groel_run / "run" / "export"
    truth = pd.read_csv(groel_run / "data" / "truth.tsv", sep="\t")
    dots = np.stack([blob_image(BOX, [(x, y, 1.5, 1.0)]) for x, y in truth[["shift_x", "shift_y"]].to_numpy()])
    io.write_mrcs(tmp_path / "dots.mrcs", dots, APIX)
    tables = starfile.read(out / "particles.star", always_dict=True)
    parts = tables["particles"].copy()
    parts["rlnImageName"] = [f"{i + 1:06d}@{tmp_path / 'dots.mrcs'}" for i in range(len(parts))]
    parts = parts.drop(columns=[c for c in parts if c.startswith("rlnCtf") or c.startswith("rlnDefocus")])
    starfile.write({**tables, "particles": parts}, tmp_path / "dots.star", overwrite=True)
    r = subprocess.run(["relion_stack_create", "--i", "dots.star", "--o", "moved", "--apply_transformation"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    moved = io.read_image_stack(tmp_path / "moved.mrcs").astype(np.float64)
    v, u = np.mgrid[0:BOX, 0:BOX] - BOX // 2
    w = np.clip(moved, 0, None)
    pos = np.stack([(w * u).sum((1, 2)), (w * v).sum((1, 2))], axis=1) / w.sum((1, 2))[:, None]
    mirror = parts["r2dMirror"].to_numpy() > 0
    pos[mirror, 0] *= -1  # RELION has no mirror: those members sit in the mirrored average's frame
    cls = parts["rlnClassNumber"].to_numpy()
    resid = []
    for k in np.unique(cls[cls > 0]):
        p = pos[cls == k]
        resid.extend(np.linalg.norm(p - np.median(p, axis=0), axis=1) * APIX)
    resid = np.array(resid)
    assert len(resid) > 0.9 * N
    assert np.median(resid) < 4.0, np.percentile(resid, [50, 90])


def test_working_stack_is_the_fourier_crop_of_every_particle_and_reproducible(tmp_path):
    import mrcfile

    data = tmp_path / "data"
    assert cli.main(["simulate", "--phantom", "--n", "30", "--box", "96", "--apix", "2", "--snr", "1",
                     "--ctf", "full", "-o", str(data)]) == 0
    for name in ("a", "b"):
        assert cli.main(["index", str(data / "particles.star"), "-o", str(tmp_path / f"{name}.h5"),
                         "--maxres", "8", "--working", str(tmp_path / f"{name}.mrcs")]) == 0
    assert (tmp_path / "a.mrcs").read_bytes() == (tmp_path / "b.mrcs").read_bytes()
    assert mrcfile.validate(str(tmp_path / "a.mrcs"))
    src = io.open_stack(data / "particles.star")
    work = io.open_stack(tmp_path / "a.h5")
    assert work.box == 48 and work.pixel_size == pytest.approx(4.0)
    np.testing.assert_array_equal(work.read(slice(None)), tf.fourier_crop(src.read(slice(None)), 48))
    with mrcfile.open(tmp_path / "a.mrcs") as m:
        d = m.data.astype(np.float64)
        assert (m.header.dmin, m.header.dmax) == (np.float32(d.min()), np.float32(d.max()))
        assert float(m.header.rms) == pytest.approx(d.std(), rel=1e-5)


def test_maxres_finer_than_the_input_runs_at_full_resolution(tmp_path, caplog):
    import logging

    data = tmp_path / "data"
    assert cli.main(["simulate", "--phantom", "--n", "20", "--box", "64", "--apix", "3", "--snr", "1",
                     "-o", str(data)]) == 0
    with caplog.at_level(logging.INFO, logger="r2d"):
        assert cli.main(["index", str(data / "particles.star"), "-o", str(tmp_path / "p.h5"), "--maxres", "5",
                         "--working", str(tmp_path / "w.mrcs")]) == 0
    assert "not coarser than the input's Nyquist" in caplog.text and "full 64 px" in caplog.text
    assert not (tmp_path / "w.mrcs").exists() and io.open_stack(tmp_path / "p.h5").box == 64


@pytest.mark.parametrize("config, message", [
    ({"maxres": 30}, "maxres: 30 Å would leave a working box of 12 px"),
    ({"maxres": 8, "initial": "data/particles.mrcs"}, "at the working resolution"),
    ({"maskdiameter": 300}, "maskdiameter: 300 Å is larger than the box (64 px = 192 Å"),
])
def test_bad_maxres_or_mask_is_a_configuration_error_before_any_job(tmp_path, smk, config, message):
    data = tmp_path / "data"
    assert cli.main(["simulate", "--phantom", "--n", "40", "--box", "64", "--apix", "3", "--snr", "1",
                     "-o", str(data)]) == 0
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(
        yaml.safe_dump({"input": "data/particles.star", "path": "run", "ncls": 8, **config}))
    r = smk(tmp_path, "-n")
    assert r.returncode != 0 and message in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "run").exists()
