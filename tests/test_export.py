"""Exports for RELION / cryoSPARC / EMAN2 (r2d.export, `r2d export`, the workflow's export rule).

The pose conversion is checked three ways: algebra against r2d.transforms, simulated particles
with known RELION poses (ground truth from r2d.simulate), and RELION itself
(relion_stack_create --apply_transformation, when installed).

The workflow's exports are those of the ``tiny_run`` fixture (conftest.py): a small finished run
whose report and export rules Snakemake ran.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from r2d import cli, io
from r2d import transforms as tf
from r2d.export import (export_run, load_result, pose_from_relion, relion_pose, relion_tables,
                        cryosparc_table, write_cs)

from conftest import TINY_APIX as APIX, TINY_N as N

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"


def ncc(a, b):
    a = a - a.mean(axis=(1, 2), keepdims=True)
    b = b - b.mean(axis=(1, 2), keepdims=True)
    return (a * b).sum(axis=(1, 2)) / np.sqrt((a * a).sum(axis=(1, 2)) * (b * b).sum(axis=(1, 2)))


# ----------------------------------------------------------------------------- pose conversion
def _relion_map(psi, ox, oy):
    """RELION's reference -> particle map p = R_psi q - o as 3x3 homogeneous matrices."""
    a = np.deg2rad(np.asarray(psi, float))
    c, s = np.cos(a), np.sin(a)
    m = np.zeros((len(a), 3, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, s, -s, c
    m[:, 0, 2], m[:, 1, 2], m[:, 2, 2] = -np.asarray(ox), -np.asarray(oy), 1
    return m


def test_relion_pose_is_the_inverse_of_the_r2d_transform():
    rng = np.random.default_rng(0)
    alpha, tx, ty = rng.uniform(-180, 180, 50), rng.uniform(-5, 5, 50), rng.uniform(-5, 5, 50)
    psi, ox, oy = relion_pose(alpha, tx, ty)
    T = np.concatenate([tf.to_matrix(alpha, tx, ty, 0), np.tile([0, 0, 1.0], (50, 1, 1))], axis=1)
    # T maps particle -> average, RELION's map average -> particle: their product is the identity
    np.testing.assert_allclose(T @ _relion_map(psi, ox, oy), np.tile(np.eye(3), (50, 1, 1)), atol=1e-9)
    back = pose_from_relion(psi, ox, oy)
    np.testing.assert_allclose(tf._wrap(back[0] - alpha), 0, atol=1e-9)
    np.testing.assert_allclose(back[1], tx, atol=1e-9)
    np.testing.assert_allclose(back[2], ty, atol=1e-9)
    assert np.all((psi > -180) & (psi <= 180))


def test_relion_pose_against_simulation_truth():
    """Particles of one view with known RELION psi and shift (r2d.simulate's RELION conventions):
    the exported pose composed with the true one is the same rigid map for every particle."""
    from r2d.average import class_averages
    from r2d.phantom import phantom_volume
    from r2d.simulate import TRUTH_COLUMNS, render

    n, box, apix = 40, 48, 8.0
    rng = np.random.default_rng(5)
    psi_true, shift = rng.uniform(-180, 180, n), rng.uniform(-3, 3, (n, 2))
    truth = pd.DataFrame({"index": np.arange(n), "rot": 0.0, "tilt": 30.0, "psi": psi_true, "view_x": 0.0,
                          "view_y": 0.0, "view_z": 1.0, "shift_x": shift[:, 0], "shift_y": shift[:, 1],
                          "defocus_u": 0.0, "defocus_v": 0.0, "defocus_angle": 0.0, "junk": False,
                          "junk_kind": "particle"})[TRUTH_COLUMNS]
    clean = render(phantom_volume(box, apix), truth, box, apix)
    parts = clean + rng.normal(scale=0.5 * clean.std(), size=clean.shape).astype(np.float32)
    res = class_averages(parts, np.zeros(n, int), iterations=2, averager="mean", apix=apix)
    psi, ox, oy = relion_pose(res.alpha, res.tx, res.ty, res.mirror)
    ours = _relion_map(psi, ox, oy)
    mirrored = res.mirror > 0.5
    ours[mirrored] = ours[mirrored] @ np.diag([-1.0, 1, 1])  # relative to the mirrored average
    # RELION truth: origin = -shift (the shift moved the particle centre to +shift)
    G = np.linalg.inv(ours) @ _relion_map(psi_true, -shift[:, 0], -shift[:, 1])  # true frame -> average
    t = G[:, :2, 2]
    assert np.all(np.abs(t - np.median(t, axis=0)) < 0.6), t  # translations agree for every particle
    # the view is nearly mirror-symmetric, so members split between the average and its mirror
    # image; within each group the rotation to the true frame is one angle
    assert max(mirrored.sum(), (~mirrored).sum()) >= n // 2
    for grp in (~mirrored, mirrored):
        if grp.sum() < 5:
            continue
        ang = np.rad2deg(np.arctan2(G[grp, 0, 1], G[grp, 0, 0]))
        dev = np.abs(tf._wrap(ang - np.median(ang)))
        assert np.mean(dev < 5) >= 0.9, ang


# ----------------------------------------------------------------------------- the workflow's exports
def test_particles_star_round_trip(tiny_run):
    out = tiny_run / "run" / "export"
    tables = starfile.read(out / "particles.star", always_dict=True)
    optics, parts = tables["optics"], tables["particles"]
    src = starfile.read(tiny_run / "data" / "particles.star", always_dict=True)
    pd.testing.assert_frame_equal(optics, src["optics"])  # carried over unchanged
    assert len(parts) == N and parts["rlnImageName"].is_unique
    cmx = io.read_matrix(tiny_run / "run" / "classmx_01.h5")
    res = io.read_matrix(tiny_run / "run" / "resultmx_01.h5")
    np.testing.assert_array_equal(parts["rlnClassNumber"].to_numpy() - 1, cmx["class"])
    psi, ox, oy = relion_pose(res["dalpha"], res["dx"], res["dy"])
    np.testing.assert_allclose(parts["rlnAnglePsi"], psi, atol=1e-4)
    np.testing.assert_allclose(parts["rlnOriginXAngst"], ox * APIX, atol=1e-4)
    np.testing.assert_allclose(parts["rlnOriginYAngst"], oy * APIX, atol=1e-4)
    np.testing.assert_array_equal(parts["r2dMirror"], res["mirror"] > 0.5)
    np.testing.assert_array_equal(parts["r2dExcluded"], np.where(res["used"] != 0, 0, 1))
    for col in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"):
        np.testing.assert_allclose(parts[col], src["particles"][col])
    # r2d's own reader: same particles, same images, same pixel size and CTF
    a, b = io.open_stack(out / "particles.star"), io.open_stack(tiny_run / "data" / "particles.star")
    assert a.pixel_size == APIX and len(a) == N
    np.testing.assert_array_equal(a.read(slice(None)), b.read(slice(None)))
    np.testing.assert_allclose(a.ctf_params()["defocus_u"], b.ctf_params()["defocus_u"])
    r = load_result(tiny_run / "run")
    assert r.iteration == "01" and r.n == N


def test_class_average_exports(tiny_run):
    out = tiny_run / "run" / "export"
    hdf = io.read_image_stack(tiny_run / "run" / "classes_01.hdf")
    heads = io.read_image_headers(tiny_run / "run" / "classes_01.hdf")
    cmx = io.read_matrix(tiny_run / "run" / "classmx_01.h5")
    members = np.bincount(cmx["class"], minlength=4)
    import mrcfile

    with mrcfile.open(out / "class_averages.mrcs", permissive=True) as m:
        assert float(m.voxel_size.x) == pytest.approx(APIX)
        mrcs = np.asarray(m.data)
    for h, img in zip(heads, hdf):
        np.testing.assert_array_equal(mrcs[h["class_id"]], img)
    cls = starfile.read(out / "class_averages.star", always_dict=True)
    assert cls["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(APIX)
    table = cls["particles"]
    np.testing.assert_array_equal(table["rlnClassNumber"], np.arange(1, 5))
    np.testing.assert_array_equal(table["r2dParticleCount"], members)
    assert table["rlnClassDistribution"].sum() == pytest.approx(1.0)
    if "resolution" in heads[0]:
        assert "rlnEstimatedResolution" in table
    st = io.open_stack(out / "class_averages.star")  # r2d reads the class STAR as a stack
    np.testing.assert_array_equal(st.read(slice(None)), mrcs)
    eman = io.read_image_headers(out / "class_averages.hdf")
    assert [h["ptcl_repr"] for h in eman] == [len(h["class_ptcl_idxs"]) for h in heads]
    assert [h["n_members"] for h in eman] == members.tolist()
    assert [h["class_number"] for h in eman] == [1, 2, 3, 4]
    assert all(h["apix_x"] == pytest.approx(APIX) for h in eman)
    np.testing.assert_array_equal(io.read_image_stack(out / "class_averages.hdf"), mrcs)


def test_relion_reads_the_exports(tiny_run, tmp_path, relion):
    """RELION applies the exported psi/origin exactly as r2d's transform (mirror aside), reads the
    class STAR, and selects by rlnClassNumber."""
    out = tiny_run / "run" / "export"
    r = subprocess.run(["relion_stack_create", "--i", "particles.star", "--o", str(tmp_path / "aligned"),
                        "--apply_transformation"], cwd=out, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    aligned = io.read_image_stack(tmp_path / "aligned.mrcs")
    parts = io.open_stack(out / "particles.star").read(slice(None))
    res = load_result(tiny_run / "run")
    ours = tf.transform(parts, res.alpha, res.tx, res.ty, 0)
    assert ncc(aligned, ours).min() > 0.99
    r = subprocess.run(["relion_image_handler", "--i", "class_averages.star", "--stats"], cwd=out,
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count("angpix = 10") == 4, r.stdout + r.stderr
    r = subprocess.run(["relion_star_handler", "--i", "particles.star", "--o", str(tmp_path / "c2.star"),
                        "--select", "rlnClassNumber", "--minval", "2", "--maxval", "2"], cwd=out,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    sub = starfile.read(tmp_path / "c2.star", always_dict=True)["particles"]
    assert len(sub) == int((res.klass == 1).sum()) and "r2dExcluded" in sub  # RELION keeps our columns


def _cs_input(wd: Path, path: Path) -> Path:
    """A cryoSPARC-style .cs table for the simulated particles ('>'-prefixed project paths)."""
    stack = io.open_stack(wd / "data" / "particles.star")
    ctf = stack.ctf_params()
    dt = [("uid", "<u8"), ("blob/path", "S40"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
          ("blob/psize_A", "<f4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"),
          ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4")]
    a = np.zeros(N, dtype=dt)
    a["uid"] = np.arange(N) + 1000
    a["blob/path"] = b">data/particles.mrcs"
    a["blob/idx"] = np.arange(N)
    a["blob/shape"] = 32
    a["blob/psize_A"] = APIX
    a["ctf/accel_kv"], a["ctf/cs_mm"], a["ctf/amp_contrast"] = ctf["voltage"], ctf["cs"], ctf["amp_contrast"]
    a["ctf/df1_A"], a["ctf/df2_A"] = ctf["defocus_u"], ctf["defocus_v"]
    a["ctf/df_angle_rad"] = np.deg2rad(ctf["defocus_angle"])
    write_cs(path, a)
    return path


def test_cryosparc_and_mrcs_and_hdf_inputs(tiny_run, tmp_path):
    cs_in = _cs_input(tiny_run, tiny_run / "data" / "particles_in.cs")
    out = tiny_run / "run" / "export_cs"  # under the project folder the '>' paths are relative to
    written = export_run(tiny_run / "run", cs_in, out)
    assert set(written) >= {"particles_cs", "particles_star", "class_averages_mrcs"}
    cs = np.load(out / "particles.cs")
    src = np.load(cs_in)
    assert set(src.dtype.names) < set(cs.dtype.names)
    res = load_result(tiny_run / "run")
    np.testing.assert_array_equal(cs["uid"], src["uid"])
    np.testing.assert_array_equal(cs["alignments2D/class"], res.klass)
    psi, ox, oy = relion_pose(res.alpha, res.tx, res.ty)
    np.testing.assert_allclose(cs["alignments2D/pose"], np.deg2rad(psi), atol=1e-5)
    np.testing.assert_allclose(cs["alignments2D/shift"], np.column_stack([ox, oy]), atol=1e-4)
    meta = io.read_cs_metadata(out / "particles.cs")
    assert len(meta) == N and "alignments2D/shift/1" in meta
    # the blob paths still resolve from the export folder; the STAR file built from the .cs reads too
    np.testing.assert_array_equal(io.open_stack(out / "particles.cs").read([0, 59]),
                                  io.open_stack(cs_in).read([0, 59]))
    star = io.open_stack(out / "particles.star")
    np.testing.assert_allclose(star.ctf_params()["defocus_u"], io.open_stack(cs_in).ctf_params()["defocus_u"],
                               rtol=1e-6)
    opt = starfile.read(out / "particles.star", always_dict=True)["optics"]
    assert len(opt) == 1 and opt["rlnVoltage"].iloc[0] == 300 and opt["rlnImagePixelSize"].iloc[0] == APIX
    # MRCS input: image names point at the stack; EMAN2 HDF input: a copy of the particles as MRCS
    images = io.open_stack(tiny_run / "data" / "particles.mrcs").read(slice(None))
    io.write_image_stack(tmp_path / "parts.hdf", images, pixel_size=APIX)
    for src_path, name in ((tiny_run / "data" / "particles.mrcs", "mrcs"), (tmp_path / "parts.hdf", "hdf")):
        written = export_run(tiny_run / "run", src_path, tmp_path / name)
        assert ("particles_mrcs" in written) == (name == "hdf")
        st = io.open_stack(tmp_path / name / "particles.star")
        assert st.pixel_size == APIX
        np.testing.assert_array_equal(st.read(slice(None)), images)
        opt = starfile.read(tmp_path / name / "particles.star", always_dict=True)["optics"]
        assert opt["rlnImageSize"].iloc[0] == 32 and opt["rlnVoltage"].iloc[0] == 300  # placeholder optics


# ----------------------------------------------------------------------------- real files of other programs
def _real(name):
    p = REAL / name
    if not p.exists():
        pytest.skip(f"{p} not present")
    return p


class _FakeResult:
    """A RunResult stand-in for n particles in two classes."""

    def __init__(self, n):
        self.n = n
        self.klass = np.arange(n) % 2
        self.used = np.ones(n, bool)
        self.alpha, self.tx, self.ty = np.linspace(-90, 90, n), np.ones(n), -np.ones(n)
        self.mirror = np.zeros(n, np.int8)
        self.score = np.zeros(n)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_real_relion31_and_relion5_optics_carried_over(tmp_path):
    star = _real("relion31.star")
    stack = io.open_stack(star)
    tables = relion_tables(stack, _FakeResult(len(stack)), tmp_path, pixel_size=stack.pixel_size)
    pd.testing.assert_frame_equal(tables["optics"], starfile.read(star, always_dict=True)["optics"])
    out = tmp_path / "p.star"
    starfile.write(tables, out)
    back = starfile.read(out, always_dict=True)
    src = starfile.read(star, always_dict=True)["particles"]
    assert set(src.columns) - {"rlnClassNumber", "rlnAnglePsi"} <= set(back["particles"].columns)
    np.testing.assert_array_equal(back["particles"]["rlnClassNumber"], np.arange(len(stack)) % 2 + 1)
    np.testing.assert_array_equal(io.open_stack(out).read(slice(None)), stack.read(slice(None)))
    # RELION 5 (no stack here): optics with Zernike/MagMat columns kept as they are
    r5 = _real("relion5.star")
    src5 = starfile.read(r5, always_dict=True)

    class Stub:
        path, box = Path(r5), int(src5["optics"]["rlnImageSize"].iloc[0])

        def __len__(self):
            return len(src5["particles"])

    t5 = relion_tables(Stub(), _FakeResult(len(Stub())), tmp_path, pixel_size=0.89, paths="keep")
    pd.testing.assert_frame_equal(t5["optics"], src5["optics"])
    pd.testing.assert_series_equal(t5["particles"]["rlnImageName"], src5["particles"]["rlnImageName"])


def _relion30_tables(tmp_path):
    star = _real("empiar_10076_7.star")
    stack = io.open_stack(star)
    tables = relion_tables(stack, _FakeResult(len(stack)), tmp_path, pixel_size=stack.pixel_size)
    starfile.write(tables, tmp_path / "p.star")
    return star, stack, tables


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_real_relion30_star_gets_an_optics_block(tmp_path):
    star, stack, tables = _relion30_tables(tmp_path)
    opt, parts = tables["optics"], tables["particles"]
    src = io.read_star_metadata(star)
    assert len(opt) == 1 and opt["rlnImagePixelSize"].iloc[0] == pytest.approx(stack.pixel_size)
    assert opt["rlnVoltage"].iloc[0] == src["rlnVoltage"].iloc[0] and opt["rlnImageSize"].iloc[0] == 320
    assert "rlnVoltage" not in parts and "rlnMagnification" not in parts
    back = io.open_stack(tmp_path / "p.star")
    assert back.pixel_size == pytest.approx(stack.pixel_size)
    np.testing.assert_allclose(back.ctf_params()["defocus_u"], stack.ctf_params()["defocus_u"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_relion_selects_by_class_in_the_converted_relion30_star(tmp_path, relion):
    _relion30_tables(tmp_path)
    r = subprocess.run(["relion_star_handler", "--i", "p.star", "--o", "q.star", "--select", "rlnClassNumber",
                        "--minval", "1", "--maxval", "1"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and "with 4 item(s)" in r.stdout, r.stdout + r.stderr


def test_real_cryosparc_table_keeps_every_field(tmp_path):
    cs_path = _real("cryosparc_J2_particles_exported.cs")
    src = np.load(cs_path)
    fake = _FakeResult(len(src))
    fake.klass[0] = -1  # unclassified: left out
    out = cryosparc_table(cs_path, fake, 1.345)
    assert out.dtype == src.dtype  # alignments2D fields already there: same layout as cryoSPARC's
    assert len(out) == len(src) - 1
    np.testing.assert_array_equal(out["uid"], src["uid"][1:])
    np.testing.assert_array_equal(out["alignments2D/class"], fake.klass[1:])
    write_cs(tmp_path / "p.cs", out)
    meta = io.read_cs_metadata(tmp_path / "p.cs")
    assert len(meta) == len(src) - 1 and meta["alignments2D/psize_A"].iloc[0] == pytest.approx(1.345)


def test_export_command(tiny_run, tmp_path, capsys):
    assert cli.main(["export", str(tiny_run / "run"), "--input", str(tiny_run / "data" / "particles.star"),
                     "-o", str(tmp_path / "e"), "--paths", "absolute"]) == 0
    assert "particles_star" in capsys.readouterr().out
    names = starfile.read(tmp_path / "e" / "particles.star", always_dict=True)["particles"]["rlnImageName"]
    assert all(Path(n.split("@", 1)[1]).is_absolute() for n in names)
