"""Tests for r2d.io: stack readers (MRC, EMAN2 HDF, RELION STAR, cryoSPARC CS), writers, helpers."""

from __future__ import annotations

import logging
import os
import pickle
import re
import stat
import subprocess
import sys

import h5py
import mrcfile
import numpy as np
import pytest
import starfile
import pandas as pd
from pathlib import Path

from r2d import io
from r2d.errors import InputError, UserError

# mrcfile's own complaints when tests cross-check against it on the header-less relion31.mrcs
pytestmark = pytest.mark.filterwarnings("ignore:Map ID string not found:RuntimeWarning",
                                        "ignore:Unrecognised machine stamp:RuntimeWarning")

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def real(name: str) -> Path:
    path = REAL / name
    if not path.exists():
        pytest.skip(f"shared test data {path} not present")
    return path


def images(n=5, box=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, box, box)).astype(np.float32)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- atomic_write
def test_atomic_write_replaces_file_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with io.atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.txt.") and tmp.suffix == ".part"
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~current_umask()
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_atomic_write_exception_keeps_old_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with io.atomic_write(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_writers_leave_no_partial_file_on_error(tmp_path):
    with pytest.raises(TypeError):
        io.write_image_stack(tmp_path / "x.hdf", images(2), headers=[{"bad": {"a": 1}}, {}])
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_removes_stale_partial_files_of_a_killed_writer(tmp_path):
    target = tmp_path / "classes_01.hdf"
    stale = tmp_path / ".classes_01.hdf.abc123.part"
    stale.write_text("half written by a killed job")
    old = stale.stat().st_mtime - 3600
    os.utime(stale, (old, old))
    other = tmp_path / ".classes_02.hdf.abc123.part"  # another target's: not touched
    other.write_text("x")
    os.utime(other, (old, old))
    with io.atomic_write(target) as tmp:
        tmp.write_text("new")
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".classes_02.hdf.abc123.part", "classes_01.hdf"]


def test_atomic_write_removes_a_just_killed_writers_file_by_its_pid(tmp_path):
    """The writer named in the file (this host, its pid) is gone: removed however recent the file.

    (Comparing the file's age with this process's start alone was flaky: a resumed job can start
    within a second or two of the kill, and a process start time is only known to about a second.)
    """
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.txt.{io._HOST}.{dead.pid}.x1y2z3.part"
    stale.write_text("half written by a job killed just now")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            busy = tmp_path / f".out.txt.{io._HOST}.{live.pid}.a1b2c3.part"
            busy.write_text("being written")
            old = busy.stat().st_mtime - 3600
            os.utime(busy, (old, old))
            with io.atomic_write(tmp_path / "out.txt") as tmp:
                assert tmp.name.startswith(f".out.txt.{io._HOST}.{os.getpid()}.")
                tmp.write_text("new")
        finally:
            live.kill()
    assert not stale.exists()
    assert busy.exists()  # its writer is alive, however old the file
    assert (tmp_path / "out.txt").read_text() == "new"


def test_atomic_write_keeps_a_fresh_partial_file(tmp_path):
    """A .part file newer than this process may belong to a live writer: left alone."""
    fresh = tmp_path / ".out.txt.live.part"
    fresh.write_text("being written")
    with io.atomic_write(tmp_path / "out.txt") as tmp:
        tmp.write_text("new")
    assert fresh.exists()


# ----------------------------------------------------------------------------- chunk_range
@pytest.mark.parametrize("n", [0, 1, 7, 100, 101])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_chunk_range_covers_exactly(n, k):
    ranges = [io.chunk_range(f"{i}-of-{k}", n) for i in range(1, k + 1)]
    covered = np.concatenate([np.arange(a, b) for a, b in ranges])
    assert np.array_equal(covered, np.arange(n))
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_chunk_range_value():
    assert io.chunk_range("3-of-8", 100) == (25, 37)


@pytest.mark.parametrize("spec", ["0-of-3", "4-of-3", "3of8", "", "a-of-b", "1-of-0", "-1-of-2"])
def test_chunk_range_bad_spec(spec):
    with pytest.raises(InputError, match="I-of-K"):
        io.chunk_range(spec, 10)


# ----------------------------------------------------------------------------- MRC
def test_write_mrcs_roundtrip(tmp_path):
    data = images(6, 32)
    path = tmp_path / "p.mrcs"
    io.write_mrcs(path, data, pixel_size=1.75)
    assert mrcfile.validate(str(path), print_file=open(os.devnull, "w"))
    with mrcfile.open(path) as mrc:
        assert mrc.header.mode == 2 and mrc.is_image_stack()
    s = io.open_stack(path)
    assert (len(s), s.n, s.box, s.shape) == (6, 6, 32, (6, 32, 32))
    assert s.pixel_size == pytest.approx(1.75)
    assert s.metadata is None and s.ctf_params() is None
    out = s.read(slice(None))
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, data)
    np.testing.assert_array_equal(io.read_image_stack(path), data)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(s)).read([1]), data[[1]])  # for worker processes


def test_write_mrcs_single_image_and_no_pixel_size(tmp_path):
    data = images(1, 8)[0]
    io.write_mrcs(tmp_path / "one.mrc", data)
    s = io.open_stack(tmp_path / "one.mrc")
    assert s.shape == (1, 8, 8) and s.pixel_size is None
    np.testing.assert_array_equal(s.read([0])[0], data)


@pytest.mark.parametrize("index", [slice(1, 5, 2), slice(None, None, -1), [4, 0, 2, 2], np.array([3, 1]),
                                   np.array([], dtype=int), [-1], np.arange(6) % 2 == 0])
def test_read_index_equals_full_rows(tmp_path, index):
    data = images(6, 8)
    io.write_mrcs(tmp_path / "p.mrcs", data)
    s = io.open_stack(tmp_path / "p.mrcs")
    out = s.read(index)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape[1:] == (8, 8)
    np.testing.assert_array_equal(out, data[index])


def test_read_returns_new_array_and_int_index(tmp_path):
    data = images(3, 8)
    io.write_mrcs(tmp_path / "p.mrcs", data)
    s = io.open_stack(tmp_path / "p.mrcs")
    a = s.read(2)
    assert a.shape == (1, 8, 8)
    a[:] = 0
    np.testing.assert_array_equal(s.read(2)[0], data[2])
    with pytest.raises(IndexError):
        s.read([3])


def test_truncated_mrc(tmp_path):
    path = tmp_path / "t.mrcs"
    io.write_mrcs(path, images(4, 16))
    full = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(full - 100)
    with pytest.raises(InputError) as err:
        io.open_stack(path)
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg and str(full) in msg and str(full - 100) in msg


def test_mrc_truncated_after_opening(tmp_path):
    path = tmp_path / "t.mrcs"
    io.write_mrcs(path, images(4, 16))
    s = io.open_stack(path)
    full = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(full - 2 * 16 * 16 * 4)
    with pytest.raises(InputError) as err:
        s.read([3])
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg and str(full) in msg and str(full - 2048) in msg


def test_not_an_mrc_file(tmp_path):
    path = tmp_path / "list.mrcs"
    path.write_text("particle 1\n" * 200)
    with pytest.raises(InputError, match="does not look like an MRC file"):
        io.open_stack(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(tmp_path):
    path = tmp_path / "p.mrcs"
    io.write_mrcs(path, images(2, 8))
    path.chmod(0)
    with pytest.raises(InputError, match="not readable"):
        io.open_stack(path)


def test_empty_star(tmp_path):
    (tmp_path / "e.star").write_text("")
    with pytest.raises(InputError, match="STAR file is empty"):
        io.open_stack(tmp_path / "e.star")


def test_image_problems():
    a = images(5, 8)
    a[1, 2, 3] = np.nan
    a[2, 0, 0] = -np.inf
    a[3] = 0
    a[4] = np.inf  # all infinite: non-finite, not "constant"
    assert io.image_problems(a).tolist() == [0, io.IMAGE_NONFINITE, io.IMAGE_NONFINITE, io.IMAGE_CONSTANT,
                                             io.IMAGE_NONFINITE]
    assert io.image_problems(np.zeros((0, 8, 8))).tolist() == []


def test_mrc_shorter_than_header(tmp_path):
    path = tmp_path / "tiny.mrc"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(InputError, match="1024-byte"):
        io.open_stack(path)


def _mrc_with(tmp_path, name, shape, **header):
    path = tmp_path / name
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros(shape, np.float32))
        for key, value in header.items():
            setattr(mrc.header, key, value)
    return path


@pytest.mark.parametrize("shape,match", [((2, 16, 12), "square"), ((2, 15, 15), "odd")])
def test_mrc_bad_shapes(tmp_path, shape, match):
    with pytest.raises(InputError, match=match):
        io.open_stack(_mrc_with(tmp_path, "bad.mrcs", shape))


def test_mrc_empty_and_bad_mode(tmp_path):
    path = _mrc_with(tmp_path, "e.mrcs", (1, 8, 8))
    with mrcfile.mmap(path, "r+", permissive=True) as mrc:
        mrc.header.nz = 0
    with pytest.raises(InputError, match="empty"):
        io.open_stack(path)
    path = _mrc_with(tmp_path, "m.mrcs", (1, 8, 8))
    with open(path, "r+b") as fh:
        fh.seek(12)
        fh.write(np.int32(4).tobytes())  # complex mode
    with pytest.raises(InputError, match="mode 4"):
        io.open_stack(path)


def test_mrc_modes_and_big_endian(tmp_path):
    data = np.arange(2 * 8 * 8, dtype=np.int16).reshape(2, 8, 8) - 50
    path = tmp_path / "i16.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data.astype(">i2"))
    out = io.open_stack(path).read(slice(None))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data)


def test_missing_map_id_warns_and_reads(tmp_path, caplog):
    data = images(3, 8)
    path = tmp_path / "noid.mrcs"
    io.write_mrcs(path, data)
    with open(path, "r+b") as fh:
        fh.seek(208)
        fh.write(b"\0" * 8)  # no 'MAP ' ID string, no machine stamp (as RELION-written relion31.mrcs)
    with caplog.at_level(logging.WARNING, logger="r2d.io"):
        s = io.open_stack(path)
    assert any("MAP" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(s.read(slice(None)), data)


def test_real_mrc_header_without_map_id_warns(caplog):
    """relion31.mrcs has no 'MAP ' ID and a zero machine stamp (RELION 3.1 output); RELION reads it."""
    with caplog.at_level(logging.WARNING, logger="r2d.io"):
        s = io.open_stack(real("relion31.mrcs"))
    assert any("MAP" in r.getMessage() for r in caplog.records)
    assert s.shape == (5, 256, 256)
    with mrcfile.open(real("relion31.mrcs"), permissive=True) as mrc:
        np.testing.assert_array_equal(s.read([4, 1]), mrc.data[[4, 1]])


def test_real_empiar_mrc():
    path = real("empiar_10076_7.mrc")
    s = io.open_stack(path)
    assert s.shape == (7, 320, 320)
    assert s.pixel_size is None  # header cell size is 0
    with mrcfile.open(path, permissive=True) as mrc:
        np.testing.assert_array_equal(s.read([6, 0]), mrc.data[[6, 0]])


# ----------------------------------------------------------------------------- errors
def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"x")
    with pytest.raises(InputError, match=r"a\.tif.*unknown particle file type '\.tif'.*\.star"):
        io.open_stack(tmp_path / "a.tif")
    with pytest.raises(InputError, match="not found"):
        io.open_stack(tmp_path / "missing.mrcs")
    with pytest.raises(InputError, match="not found"):
        io.read_star_metadata(tmp_path / "missing.star")
    assert issubclass(InputError, UserError)


def test_hdf_without_eman_layout(tmp_path):
    io.write_matrix(tmp_path / "m.h5", {"x": np.zeros(3)})
    with pytest.raises(InputError, match="/MDF/images"):
        io.open_stack(tmp_path / "m.h5")
    (tmp_path / "junk.hdf").write_bytes(b"not hdf5" * 100)
    with pytest.raises(InputError, match="junk.hdf"):
        io.open_stack(tmp_path / "junk.hdf")


# ----------------------------------------------------------------------------- EMAN2 HDF
def test_image_stack_roundtrip_headers(tmp_path):
    data = images(3, 16)
    headers = [{"ptcl_repr": i, "class_ptcl_idxs": [i, i + 10, 7], "weights": [0.5, 1.5], "name": f"cls{i}",
                "score": 0.25 * i, "keep": i != 1, "empty": []} for i in range(3)]
    path = tmp_path / "classes.hdf"
    io.write_image_stack(path, data, headers, pixel_size=2.5)
    np.testing.assert_array_equal(io.read_image_stack(path), data)
    s = io.open_stack(path)
    assert s.shape == (3, 16, 16) and s.pixel_size == pytest.approx(2.5)
    np.testing.assert_array_equal(s.read([2, 0]), data[[2, 0]])
    back = io.read_image_headers(path)
    assert len(back) == 3
    for h, b in zip(headers, back):
        for key, value in h.items():
            assert b[key] == pytest.approx(value) if key != "name" else b[key] == value, key
        assert isinstance(b["ptcl_repr"], int) and isinstance(b["name"], str) and isinstance(b["keep"], bool)
        assert (b["nx"], b["ny"], b["nz"]) == (16, 16, 1)
        assert b["apix_x"] == b["apix_y"] == b["apix_z"] == pytest.approx(2.5)


def test_image_stack_layout_is_what_eman2_reads(tmp_path):
    """Types follow EMAN2's HdfIO2::read_attr: ints 4 bytes, float arrays float32, strings
    null-terminated fixed length, bools 1-byte 'T'/'F', imageid_max int32 on /MDF/images."""
    path = tmp_path / "c.hdf"
    io.write_image_stack(path, images(2, 8), [{"n": 3, "xs": [1.0, 2.0], "ids": [1, 2], "s": "abc", "b": True}] * 2)
    with h5py.File(path, "r") as f:
        grp = f["MDF/images"]
        assert grp.attrs["imageid_max"] == 1 and grp.attrs["imageid_max"].dtype == np.int32
        assert sorted(grp) == ["0", "1"]
        g = grp["1"]
        assert g["image"].dtype == np.float32 and g["image"].shape == (8, 8)
        for key in ("EMAN.nx", "EMAN.ny", "EMAN.nz", "EMAN.n", "EMAN.ids"):
            assert g.attrs[key].dtype == np.int32, key
        assert g.attrs["EMAN.xs"].dtype == np.float32
        assert g.attrs["EMAN.b"] == ord("T") and g.attrs["EMAN.b"].dtype.itemsize == 1
        tid = g.attrs.get_id("EMAN.s").get_type()
        assert tid.get_class() == h5py.h5t.STRING and not tid.is_variable_str()
        assert tid.get_strpad() == h5py.h5t.STR_NULLTERM and tid.get_size() == 4


def test_header_count_mismatch(tmp_path):
    with pytest.raises(ValueError):
        io.write_image_stack(tmp_path / "x.hdf", images(2), headers=[{}])


# ----------------------------------------------------------------------------- matrix files
def test_matrix_roundtrip(tmp_path):
    ds = {"classmx": np.arange(12, dtype=np.int32).reshape(4, 3), "weight": np.linspace(0, 1, 4),
          "names": np.array(["a", "bé"]), "scalar": np.float64(3.5)}
    attrs = {"iteration": 3, "comparator": "ccc", "shape": [4, 3], "ok": True}
    path = tmp_path / "m.h5"
    io.write_matrix(path, ds, attrs)
    back = io.read_matrix(path)
    assert set(back) == set(ds)
    for key, value in ds.items():
        np.testing.assert_array_equal(back[key], value)
    assert back["classmx"].dtype == np.int32
    a = io.read_matrix_attrs(path)
    assert a["iteration"] == 3 and a["comparator"] == "ccc" and a["ok"] is True
    np.testing.assert_array_equal(a["shape"], [4, 3])
    with pytest.raises(InputError, match="not found"):
        io.read_matrix(tmp_path / "none.h5")


# ----------------------------------------------------------------------------- RELION STAR
def test_star_relion31_real():
    path = real("relion31.star")
    s = io.open_stack(path)
    assert s.shape == (5, 256, 256)
    assert s.pixel_size == pytest.approx(2.806)  # rlnImagePixelSize in data_optics
    ctf = s.ctf_params()
    np.testing.assert_allclose(ctf["defocus_u"], [13108.082418, 12906.018499, 12730.825404, 12506.042289, 12725.541100])
    np.testing.assert_allclose(ctf["defocus_v"][:2], [12845.582418, 12643.518499])
    np.testing.assert_allclose(ctf["defocus_angle"], -160.39)
    np.testing.assert_allclose(ctf["voltage"], 300.0)  # from data_optics
    np.testing.assert_allclose(ctf["cs"], 0.01)
    np.testing.assert_allclose(ctf["amp_contrast"], 0.1)
    assert not ctf["phase_flipped"].any()
    assert list(s.metadata["rlnOpticsGroupName"]) == ["opticsGroup1"] * 5
    assert "rlnCoordinateX" in s.metadata and s.metadata["rlnCoordinateX"].iloc[3] == 3406.0
    with mrcfile.open(real("relion31.mrcs"), permissive=True) as mrc:
        np.testing.assert_array_equal(s.read(slice(None)), mrc.data)


def test_star_relion31_v2_blocks_reversed_equals_v1():
    a, b = io.open_stack(real("relion31.star")), io.open_stack(real("relion31.v2.star"))
    assert b.pixel_size == a.pixel_size
    for key, value in a.ctf_params().items():
        np.testing.assert_array_equal(b.ctf_params()[key], value)
    pd.testing.assert_frame_equal(a.metadata, b.metadata[a.metadata.columns])


def test_star_relion30_real():
    s = io.open_stack(real("empiar_10076_7.star"))
    assert s.shape == (7, 320, 320)
    assert s.pixel_size == pytest.approx(5 * 1e4 / 38168)  # rlnDetectorPixelSize * 1e4 / rlnMagnification
    ctf = s.ctf_params()
    np.testing.assert_allclose(ctf["defocus_u"][[0, 2, 6]], [15301.1, 15150.7, 15177.4])
    np.testing.assert_allclose(ctf["defocus_v"][[0, 2, 6]], [14916.4, 14766.0, 14792.7])
    np.testing.assert_allclose(ctf["cs"], 2.7)
    np.testing.assert_allclose(ctf["amp_contrast"], 0.07)
    with mrcfile.open(real("empiar_10076_7.mrc"), permissive=True) as mrc:
        np.testing.assert_array_equal(s.read([6, 0, 3]), mrc.data[[6, 0, 3]])


def test_star_relion5_metadata_without_stacks():
    path = real("relion5.star")
    with pytest.raises(InputError, match=r"relion5\.star.*toy_images_a\.mrcs.*not found"):
        io.open_stack(path)
    meta = io.read_star_metadata(path)
    assert len(meta) == 17
    np.testing.assert_allclose(meta["rlnImagePixelSize"], 0.89)
    np.testing.assert_allclose(meta["rlnVoltage"], 100.0)
    assert (meta["rlnCtfDataAreCtfPremultiplied"] == 0).all()
    assert meta["rlnDefocusU"].iloc[0] == pytest.approx(11949.061330)
    assert meta["rlnImageName"].iloc[1] == "2@toy_images_b.mrcs"


def _two_stacks(folder):
    a, b = images(4, 8, seed=1), images(3, 8, seed=2)
    io.write_mrcs(folder / "stacks" / "a.mrcs", a, pixel_size=9.0)
    io.write_mrcs(folder / "stacks" / "b.mrcs", b, pixel_size=9.0)
    # particle order interleaves the two files and is not monotonic within a file
    refs = [("a", 3), ("b", 0), ("a", 0), ("b", 2), ("a", 1), ("b", 1)]
    expected = np.stack([(a if f == "a" else b)[i] for f, i in refs])
    names = [f"{i + 1:06d}@stacks/{f}.mrcs" for f, i in refs]
    return names, expected


def test_star_relion30_style_multi_stack(tmp_path, monkeypatch):
    names, expected = _two_stacks(tmp_path)
    df = pd.DataFrame({"rlnImageName": names, "rlnDefocusU": np.arange(6) * 1000.0 + 1e4,
                       "rlnVoltage": 200.0, "rlnSphericalAberration": 2.0, "rlnAmplitudeContrast": 0.1,
                       "rlnMagnification": 50000.0, "rlnDetectorPixelSize": 7.0})
    starfile.write(df, tmp_path / "p.star")
    monkeypatch.chdir(tmp_path.parent)  # paths are relative to the STAR file's folder, not cwd
    s = io.open_stack(tmp_path / "p.star")
    assert s.pixel_size == pytest.approx(1.4) and s.box == 8
    np.testing.assert_array_equal(s.read(slice(None)), expected)
    np.testing.assert_array_equal(s.read([5, 0, 3]), expected[[5, 0, 3]])
    ctf = s.ctf_params()
    np.testing.assert_allclose(ctf["defocus_v"], ctf["defocus_u"])  # no rlnDefocusV -> astigmatism 0
    np.testing.assert_allclose(ctf["voltage"], 200.0)


def test_star_relion31_style_two_optics_groups(tmp_path, monkeypatch):
    names, expected = _two_stacks(tmp_path)
    optics = pd.DataFrame({"rlnOpticsGroup": [1, 2], "rlnOpticsGroupName": ["g1", "g2"], "rlnVoltage": [300.0, 200.0],
                           "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1, "rlnImagePixelSize": 1.2,
                           "rlnCtfDataAreCtfPremultiplied": [0, 1], "rlnCtfDataArePhaseFlipped": [1, 0]})
    parts = pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": [2, 1, 1, 2, 1, 2],
                          "rlnDefocusU": 1e4, "rlnDefocusV": 9e3, "rlnDefocusAngle": 30.0})
    starfile.write({"optics": optics, "particles": parts}, tmp_path / "p.star")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)  # STAR in another folder: paths resolved relative to cwd as fallback
    (tmp_path / "sub" / "p.star").write_text((tmp_path / "p.star").read_text())
    s = io.open_stack("sub/p.star")
    assert s.pixel_size == pytest.approx(1.2)  # from the optics table, not the MRC header (9.0)
    np.testing.assert_array_equal(s.read(slice(None)), expected)
    ctf = s.ctf_params()
    np.testing.assert_allclose(ctf["voltage"], [200, 300, 300, 200, 300, 200])
    np.testing.assert_array_equal(ctf["premultiplied"], [True, False, False, True, False, True])
    np.testing.assert_array_equal(ctf["phase_flipped"], [False, True, True, False, True, False])
    assert list(s.metadata["rlnOpticsGroupName"]) == ["g2", "g1", "g1", "g2", "g1", "g2"]


def test_star_bad_tables(tmp_path):
    names, _ = _two_stacks(tmp_path)
    starfile.write(pd.DataFrame({"rlnImageName": [names[0], "7@stacks/a.mrcs"]}), tmp_path / "idx.star")
    with pytest.raises(InputError, match="image 7 of .*a.mrcs, which has 4 images"):
        io.open_stack(tmp_path / "idx.star")
    starfile.write(pd.DataFrame({"rlnCoordinateX": [1.0, 2.0]}), tmp_path / "noimg.star")
    with pytest.raises(InputError, match="rlnImageName"):
        io.open_stack(tmp_path / "noimg.star")
    starfile.write(pd.DataFrame({"rlnImageName": names[:2], "rlnImagePixelSize": [1.0, 2.0]}), tmp_path / "ps.star")
    with pytest.raises(InputError, match="different pixel sizes"):
        io.open_stack(tmp_path / "ps.star")


# ----------------------------------------------------------------------------- cryoSPARC
def test_cs_real_metadata_without_stacks():
    path = real("cryosparc_J2_particles_exported.cs")
    with pytest.raises(InputError, match=r"J1/imported/000090334788266266069_18jam15b_0345_ali_DW\.mrcs.*not found"):
        io.open_stack(path)
    meta = io.read_cs_metadata(path)
    assert len(meta) == 22
    assert meta["blob/path"].iloc[0] == ">J1/imported/000090334788266266069_18jam15b_0345_ali_DW.mrcs"
    assert list(meta["blob/idx"].iloc[:2]) == [0, 1]
    assert meta["blob/psize_A"].iloc[0] == pytest.approx(1.345)
    assert meta["ctf/df1_A"].iloc[0] == pytest.approx(16412.178)
    assert list(meta["blob/shape/0"].iloc[:1]) == [300]


def test_cs_synthetic_project(tmp_path, monkeypatch):
    project = tmp_path / "P1"
    stack = images(5, 8)
    io.write_mrcs(project / "J1" / "imported" / "s.mrcs", stack)
    fields = [("uid", "<u8"), ("blob/path", "S32"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4"),
              ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/accel_kv", "<f4"),
              ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/phase_shift_rad", "<f4"),
              ("alignments2D/shift", "<f4", (2,))]
    arr = np.zeros(3, dtype=fields)
    arr["blob/path"] = b">J1/imported/s.mrcs"
    arr["blob/idx"] = [4, 0, 2]
    arr["blob/psize_A"] = 1.5
    arr["ctf/df1_A"], arr["ctf/df2_A"] = 15000.0, 14000.0
    arr["ctf/df_angle_rad"] = np.pi / 6
    arr["ctf/accel_kv"], arr["ctf/cs_mm"], arr["ctf/amp_contrast"] = 300.0, 2.7, 0.07
    arr["alignments2D/shift"] = [[1, 2], [3, 4], [5, 6]]
    out = project / "exports" / "groups" / "J2_particles" / "J2_particles_exported.cs"
    out.parent.mkdir(parents=True)
    with open(out, "wb") as fh:
        np.save(fh, arr)
    monkeypatch.chdir(tmp_path)
    s = io.open_stack(out)
    assert s.shape == (3, 8, 8) and s.pixel_size == pytest.approx(1.5)
    np.testing.assert_array_equal(s.read(slice(None)), stack[[4, 0, 2]])
    ctf = s.ctf_params()
    np.testing.assert_allclose(ctf["defocus_angle"], 30.0, rtol=1e-6)
    np.testing.assert_allclose(ctf["defocus_v"], 14000.0)
    np.testing.assert_allclose(ctf["phase_shift"], 0.0)
    assert list(s.metadata["alignments2D/shift/1"]) == [2, 4, 6]


# ----------------------------------------------------------------------------- particle index
def _same_stack(a: io.Stack, b: io.Stack):
    assert a.shape == b.shape and a.pixel_size == b.pixel_size
    rows = np.random.default_rng(0).permutation(a.n)
    np.testing.assert_array_equal(a.read(rows), b.read(rows))
    ca, cb = a.ctf_params(), b.ctf_params()
    assert (ca is None) == (cb is None)
    for key, value in (cb or {}).items():
        assert ca[key].dtype == value.dtype, key
        np.testing.assert_array_equal(ca[key], value)


def test_particle_index_reads_like_its_input(tmp_path, monkeypatch):
    """The index of a STAR file with two stacks, interleaved rows and two optics groups (phase
    flipped and premultiplied flags per particle) gives the same images, CTF and pixel size,
    from any working directory, and names the STAR as its source; so does the index of a plain stack."""
    test_star_relion31_style_two_optics_groups(tmp_path, monkeypatch)  # writes sub/p.star in tmp_path
    star = io.open_stack("sub/p.star")
    io.write_particle_index(star, tmp_path / "run" / "particles.h5")
    monkeypatch.chdir(tmp_path / "run")
    idx = io.open_stack("particles.h5")
    _same_stack(idx, star)
    assert idx.source == Path("sub/p.star") and idx.metadata is None
    assert len(idx.files) == 2
    stack = images(6, 8, seed=3)
    io.write_mrcs(tmp_path / "plain.mrcs", stack, pixel_size=2.5)
    plain = io.open_stack(tmp_path / "plain.mrcs")
    io.write_particle_index(plain, tmp_path / "plain_index.h5")
    _same_stack(io.open_stack(tmp_path / "plain_index.h5"), plain)


@pytest.mark.parametrize("name", ["relion31.star", "empiar_10076_7.star"])
def test_particle_index_of_real_relion_files(tmp_path, name):
    star = io.open_stack(real(name))
    io.write_particle_index(star, tmp_path / "particles.h5")
    _same_stack(io.open_stack(tmp_path / "particles.h5"), star)


def test_particle_index_command_and_stale_index(tmp_path, monkeypatch):
    """`r2d index` writes the index without touching its input; an index whose image file is
    gone, or shorter than it was, says so and how to remake it."""
    from r2d import cli

    names, expected = _two_stacks(tmp_path)
    starfile.write(pd.DataFrame({"rlnImageName": names}), tmp_path / "p.star")
    before = {p: p.read_bytes() for p in [tmp_path / "p.star", *(tmp_path / "stacks").iterdir()]}
    assert cli.main(["index", str(tmp_path / "p.star"), "-o", str(tmp_path / "run" / "particles.h5")]) == 0
    assert {p: p.read_bytes() for p in before} == before
    np.testing.assert_array_equal(io.open_stack(tmp_path / "run" / "particles.h5").read(slice(None)), expected)
    assert io.open_stack(tmp_path / "run" / "particles.h5").ctf_params() is None
    io.write_mrcs(tmp_path / "stacks" / "a.mrcs", images(2, 8))  # 4 images before
    with pytest.raises(InputError, match=r"particles\.h5: refers to images past the end.*--forcerun particles"):
        io.open_stack(tmp_path / "run" / "particles.h5")
    (tmp_path / "stacks" / "b.mrcs").unlink()
    with pytest.raises(InputError, match=r"particles\.h5: image file .*b\.mrcs \(from .*p\.star\) is gone"):
        io.open_stack(tmp_path / "run" / "particles.h5")


# ----------------------------------------------------------------------------- RELION itself
def test_relion_reads_write_mrcs_output(tmp_path, relion):
    data = images(3, 32, seed=5) * np.array([1.0, 2.0, 0.5], np.float32)[:, None, None] + np.float32(3.0)
    path = tmp_path / "r2d.mrcs"
    io.write_mrcs(path, data, pixel_size=1.5)
    res = subprocess.run(["relion_image_handler", "--i", str(path), "--stats"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    pattern = (r"(\d+)@\S+ : \(x,y,z,n\)= (\d+) x (\d+) x 1 x 1 ; avg= (\S+) stddev= (\S+) "
               r"minval= (\S+) maxval= (\S+); angpix = (\S+)")
    rows = re.findall(pattern, res.stdout)
    assert len(rows) == 3, res.stdout
    for i, (num, nx, ny, avg, std, vmin, vmax, angpix) in enumerate(rows):
        img = data[i].astype(np.float64)
        assert (int(num), int(nx), int(ny)) == (i + 1, 32, 32)
        assert float(avg) == pytest.approx(img.mean(), rel=1e-4, abs=1e-4)
        assert float(std) == pytest.approx(img.std(), rel=1e-3)
        assert (float(vmin), float(vmax)) == pytest.approx((img.min(), img.max()), rel=1e-5)
        assert float(angpix) == pytest.approx(1.5)
