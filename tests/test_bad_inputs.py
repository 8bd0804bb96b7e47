"""A catalogue of bad configs and bad input files: each gets one clear message, nothing is written.

Every case runs the start-up check (``r2d.check.check_workflow_config``, what the Snakefile runs
when it is parsed and what ``r2d check`` runs) in a fresh folder that already holds a run
folder, and asserts the kind of error (config key vs file), the message (which key or file,
what is wrong) and that no file in the folder was created, changed or removed. A few cases go
through Snakemake itself (``-n`` and a real run); with ``-m slow`` every case does.

The data checks while reading (NaN/Inf and zero-variance particles) are tested at the end.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import starfile
import yaml

from r2d import io
from r2d.check import check_workflow_config, format_error
from r2d.errors import ConfigError, InputError, UserError

from conftest import BIN, run_snakemake

pytestmark = pytest.mark.filterwarnings("ignore:Data array contains NaN values:RuntimeWarning")

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"

N, BOX, APIX = 60, 32, 10.0
BASE = {"input": "data/particles.mrcs", "path": "run", "ncls": 4, "iter": 2, "naliref": 2, "nbasisfp": 3,
        "seed": 7, "threads": 1}


def particles(n=N, box=BOX, seed=0, ny=None):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, ny or box, box)).astype(np.float32)


# ----------------------------------------------------------------------------- catalogue
@dataclass
class Case:
    name: str
    error: type  # ConfigError (a config value) or InputError (a file)
    match: str  # regex the message must contain (re.search)
    config: dict = field(default_factory=dict)  # changes to BASE (None value: delete the key)
    setup: Callable[[Path], None] | None = None  # makes bad files in the work folder
    root_skips: bool = False  # permission cases: root reads everything


def _write(rel, data):
    def setup(wd: Path):
        p = wd / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            p.write_text(data)
    return setup


def _mrc(rel, images, pixel_size=APIX):
    def setup(wd: Path):
        io.write_mrcs(wd / rel, images, pixel_size=pixel_size)
    return setup


def _truncate(wd: Path):
    io.write_mrcs(wd / "data" / "cut.mrcs", particles(), pixel_size=APIX)
    p = wd / "data" / "cut.mrcs"
    with open(p, "r+b") as fh:
        fh.truncate(p.stat().st_size - 1000)


def _star(rel, names, **cols):
    def setup(wd: Path):
        starfile.write(pd.DataFrame({"rlnImageName": names, **cols}), wd / rel)
    return setup


def _two_boxes(wd: Path):
    io.write_mrcs(wd / "data" / "a.mrcs", particles(30), pixel_size=APIX)
    io.write_mrcs(wd / "data" / "b.mrcs", particles(30, 24), pixel_size=APIX)
    names = [f"{i + 1}@a.mrcs" for i in range(30)] + [f"{i + 1}@b.mrcs" for i in range(30)]
    starfile.write(pd.DataFrame({"rlnImageName": names}), wd / "data" / "mixed.star")


def _unreadable(wd: Path):
    p = wd / "data" / "secret.mrcs"
    io.write_mrcs(p, particles(), pixel_size=APIX)
    p.chmod(0)


def _hdf_matrix(wd: Path):
    io.write_matrix(wd / "data" / "notstack.hdf", {"x": np.zeros(3)})


def _initial(box, n):
    def setup(wd: Path):
        io.write_image_stack(wd / "data" / "init.hdf", particles(n, box), pixel_size=APIX)
    return setup


CASES = [
    # --- config: schema (unknown keys, types, ranges)
    Case("unknown key (typo)", ConfigError, r"^nclss: unknown config key; did you mean 'ncls'\?",
         {"nclss": 8}),
    Case("wrong type", ConfigError, r"^ncls: 'many' is not a whole number", {"ncls": "many"}),
    Case("ncls < 2", ConfigError, r"^ncls: 1 is out of range; it must be at least 2", {"ncls": 1}),
    Case("nbasisfp < 1", ConfigError, r"^nbasisfp: 0 is out of range; it must be at least 1", {"nbasisfp": 0}),
    Case("iter 0", ConfigError, r"^iter: 0 is out of range; it must be at least 1", {"iter": 0}),
    Case("threads not a number", ConfigError, r"^threads: 'two' is not a whole number", {"threads": "two"}),
    Case("boolean as text", ConfigError, r"^classkeepsig: 'yes please' is not true or false",
         {"classkeepsig": "yes please"}),
    Case("boolean as --config text", ConfigError,
         r"^classprior: 'false' is not true or false.*snakemake --config reads only True and False: "
         r"classprior=False", {"classprior": "false"}),
    Case("classkeep 0", ConfigError, r"^classkeep: 0 is out of range; it must be greater than 0",
         {"classkeep": 0}),
    Case("input key missing", ConfigError, r"^input: missing; set `input`", {"input": None}),
    Case("input empty", ConfigError, r"^input: .*empty|^input: not set", {"input": ""}),
    Case("two problems at once", ConfigError, r"(?s)^naliref: 'x' is not a whole number.*\n\s*seed: -1 is out of range",
         {"naliref": "x", "seed": -1}),
    # --- config: relations
    Case("naliref > ncls", ConfigError, r"^naliref: 5 alignment references exceed ncls=4", {"naliref": 5}),
    Case("nbasisfp > ncls", ConfigError, r"^nbasisfp: 6 basis vectors exceed ncls=4", {"nbasisfp": 6}),
    Case("classkeep > 1 without classkeepsig", ConfigError, r"^classkeep: 1.5 must be in \(0, 1\] unless classkeepsig",
         {"classkeep": 1.5}),
    Case("unknown aligner", ConfigError, r"^simalign: unknown aligner 'rotate_flip'", {"simalign": "rotate_flip"}),
    Case("unknown option parameter", ConfigError, r"^classcmp: comparator 'frc' has no parameter bogus",
         {"classcmp": "frc:bogus=1"}),
    Case("malformed option string", ConfigError, r"^simaligncmp: 'ccc:normalize'.*not of the form key=value",
         {"simaligncmp": "ccc:normalize"}),
    Case("second-stage aligner not refine", ConfigError, r"^classralign: the second-stage aligner must be 'refine', "
         r"not 'rotational'", {"classralign": "rotational"}),
    Case("path is a file", ConfigError, r"^path: run.txt exists and is not a folder", {"path": "run.txt"},
         _write("run.txt", "x")),
    # --- config vs data
    Case("ncls > particles", InputError, r"^input: data/particles.mrcs has 60 particles, fewer than ncls=61",
         {"ncls": 61, "naliref": 2}),
    Case("maxshift >= half the box", ConfigError, r"^maxshift: 16 px is not less than half the box \(32 px\)",
         {"maxshift": 16}),
    Case("shrink too strong", ConfigError, r"^shrink: 8 reduces the 32 px box to 4 px", {"shrink": 8}),
    Case("more chunks than particles", ConfigError, r"^chunks: 61 chunks for 60 particles", {"chunks": 61}),
    # --- the input file
    Case("input does not exist", InputError, r"^input: data/nope.mrcs does not exist", {"input": "data/nope.mrcs"}),
    Case("input is a folder", InputError, r"^input: data is a folder, not a file", {"input": "data"}),
    Case("unknown format", InputError, r"^input: data/p.tif: unknown particle file type '.tif'",
         {"input": "data/p.tif"}, _write("data/p.tif", b"II*\0" * 300)),
    Case("not square", InputError, r"^input: data/rect.mrcs: images are 32 x 30 pixels; r2d needs square",
         {"input": "data/rect.mrcs"}, _mrc("data/rect.mrcs", particles(ny=30))),
    Case("odd box", InputError, r"^input: data/odd.mrcs: box size 31 is odd", {"input": "data/odd.mrcs"},
         _mrc("data/odd.mrcs", particles(box=31))),
    Case("truncated MRC", InputError,
         r"^input: data/cut.mrcs: truncated MRC file: header \(32 x 32 x 60, mode 2\) implies 246784 bytes, "
         r"file has 245784", {"input": "data/cut.mrcs"}, _truncate),
    Case("shorter than an MRC header", InputError, r"^input: data/tiny.mrcs: 100 bytes, shorter than the 1024-byte",
         {"input": "data/tiny.mrcs"}, _write("data/tiny.mrcs", b"\0" * 100)),
    Case("text file named .mrcs", InputError, r"^input: data/text.mrcs: does not look like an MRC file \(header words nx=",
         {"input": "data/text.mrcs"}, _write("data/text.mrcs", "particle list\n" * 200)),
    Case("HDF5 that is not an image stack", InputError, r"^input: data/notstack.hdf: not an EMAN2 image stack",
         {"input": "data/notstack.hdf"}, _hdf_matrix),
    Case("STAR with two box sizes", InputError, r"^input: data/mixed.star: referenced stacks have different box sizes "
         r"\[24, 32\]", {"input": "data/mixed.star"}, _two_boxes),
    Case("STAR naming a missing stack", InputError, r"^input: data/lost.star: particle stack 'gone.mrcs' not found",
         {"input": "data/lost.star"}, _star("data/lost.star", [f"{i}@gone.mrcs" for i in range(1, 9)])),
    Case("STAR index beyond its stack", InputError, r"^input: data/over.star: particle 1 refers to image 61 of "
         r".*particles.mrcs, which has 60 images", {"input": "data/over.star"},
         _star("data/over.star", ["1@particles.mrcs", "61@particles.mrcs"])),
    Case("STAR without rlnImageName", InputError, r"^input: data/noimg.star: no particle table",
         {"input": "data/noimg.star"}, lambda wd: starfile.write(pd.DataFrame({"rlnCoordinateX": [1.0, 2.0]}),
                                                               wd / "data" / "noimg.star")),
    Case("empty STAR file", InputError, r"^input: data/empty.star: the STAR file is empty", {"input": "data/empty.star"},
         _write("data/empty.star", "")),
    Case("unreadable input", InputError, r"^input: data/secret.mrcs is not readable \(permission denied\)",
         {"input": "data/secret.mrcs"}, _unreadable, root_skips=True),
    # --- the exclude file
    Case("exclude: not an integer", InputError, r"^exclude: data/excl.txt, line 2: 'seven' is not an integer",
         {"exclude": "data/excl.txt"}, _write("data/excl.txt", "3\nseven\n")),
    Case("exclude: a float", InputError, r"^exclude: data/excl.txt, line 1: '3.5' is not an integer",
         {"exclude": "data/excl.txt"}, _write("data/excl.txt", "3.5\n")),
    Case("exclude: index out of range", InputError, r"^exclude: data/excl.txt, line 3: particle index 60 is out of "
         r"range; the input has 60 particles \(valid 0..59", {"exclude": "data/excl.txt"},
         _write("data/excl.txt", "# bad ones\n1 2\n60\n")),
    Case("exclude: negative index", InputError, r"^exclude: .*particle index -1 is out of range",
         {"exclude": "data/excl.txt"}, _write("data/excl.txt", "-1\n")),
    Case("exclude: leaves fewer than ncls", InputError, r"^input: .* has 60 particles, 57 of them excluded by "
         r"data/excl.txt, fewer than ncls=4 classes", {"exclude": "data/excl.txt"},
         _write("data/excl.txt", "\n".join(map(str, range(57))))),
    Case("exclude: missing file", InputError, r"^exclude: data/none.txt does not exist", {"exclude": "data/none.txt"}),
    Case("exclude: binary file", InputError, r"^exclude: data/excl.bin: is not a text file",
         {"exclude": "data/excl.bin"}, _write("data/excl.bin", bytes(range(256)))),
    # --- the initial averages
    Case("initial: other box size", InputError, r"^initial: data/init.hdf has 64 px images but the particles are 32 px",
         {"initial": "data/init.hdf"}, _initial(64, 6)),
    Case("initial: too few averages", InputError, r"^initial: data/init.hdf has 2 images; iteration 01 needs at "
         r"least max\(naliref, nbasisfp\) = 3", {"initial": "data/init.hdf"}, _initial(32, 2)),
    Case("initial: missing", InputError, r"^initial: data/gone.hdf does not exist", {"initial": "data/gone.hdf"}),
]


def snapshot(folder: Path) -> dict:
    """Every file and folder under `folder` (except Snakemake's own .snakemake) with size and mtime."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if rel.parts[0] == ".snakemake":
            continue
        st = p.lstat()
        out[str(rel)] = (p.is_dir(), st.st_size, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A work folder with a good stack and an existing run folder (that must stay untouched)."""
    wd = tmp_path_factory.mktemp("template")
    io.write_mrcs(wd / "data" / "particles.mrcs", particles(), pixel_size=APIX)
    (wd / "run" / "logs").mkdir(parents=True)
    io.write_matrix(wd / "run" / "classmx_00.h5", {"class": np.zeros(N, np.int32)})
    (wd / "run" / "logs" / "input_fp.log").write_text("earlier run\n")
    return wd


def make_case(template: Path, folder: Path, case: Case) -> Path:
    wd = folder / "wd"
    shutil.copytree(template, wd, copy_function=shutil.copy2)
    if case.setup:
        case.setup(wd)
    cfg = dict(BASE)
    for k, v in case.config.items():
        if v is None and k == "input":
            cfg.pop(k)
        else:
            cfg[k] = v
    (wd / "config").mkdir()
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return wd


def test_catalogue_is_large_and_names_are_unique():
    assert len(CASES) >= 20
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_error_and_writes_nothing(case, template, tmp_path, monkeypatch):
    if case.root_skips and os.geteuid() == 0:
        pytest.skip("root can read every file")
    wd = make_case(template, tmp_path, case)
    before = snapshot(wd)
    monkeypatch.chdir(wd)
    config = yaml.safe_load((wd / "config" / "config.yaml").read_text())
    with pytest.raises(UserError) as err:
        check_workflow_config(config)
    assert type(err.value) is case.error, f"{type(err.value).__name__}: {err.value}"
    msg = str(err.value)
    assert re.search(case.match, msg), msg
    assert "Traceback" not in msg and len(msg) < 600
    assert format_error(err.value).startswith("r2d: configuration error: ")
    assert snapshot(wd) == before


def test_check_command_reports_the_same_message(template, tmp_path, capsys):
    from r2d.cli import main

    case = next(c for c in CASES if c.name == "exclude: index out of range")
    wd = make_case(template, tmp_path, case)
    before = snapshot(wd)
    assert main(["check", "--directory", str(wd)]) == 2
    err = capsys.readouterr().err
    assert "r2d check: error: exclude: data/excl.txt, line 3: particle index 60 is out of range" in err
    assert snapshot(wd) == before


def test_check_command_ok_with_override(template, tmp_path, capsys, monkeypatch):
    from r2d.cli import main

    wd = make_case(template, tmp_path, Case("ok", ConfigError, ""))
    assert main(["check", "--directory", str(wd), "--config", "ncls=5", "naliref=3"]) == 0
    out = capsys.readouterr().out
    assert "60 particles, 32 px, 10 Å/px" in out and "ncls=5" in out and "config OK" in out


def test_check_command_bad_yaml(tmp_path, capsys):
    from r2d.cli import main

    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("input: data/p.mrcs\nncls: [4\n")
    before = snapshot(tmp_path)
    assert main(["check", "--directory", str(tmp_path)]) == 2
    assert "config file config/config.yaml: not valid YAML" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_check_reads_headers_only(template, monkeypatch):
    """The start-up check runs on every Snakemake start: it must not read the images."""
    monkeypatch.chdir(template)

    def no_read(self, index):
        raise AssertionError("the start-up check read images")

    monkeypatch.setattr(io.Stack, "read", no_read)
    facts = check_workflow_config(dict(BASE))
    assert (facts["n"], facts["box"], facts["apix"]) == (N, BOX, APIX)


# ----------------------------------------------------------------------------- warnings, not errors
def test_missing_pixel_size_is_a_warning(template, tmp_path, monkeypatch):
    wd = make_case(template, tmp_path, Case("nopix", ConfigError, "", {"input": "data/nopix.mrcs"},
                                            _mrc("data/nopix.mrcs", particles(), pixel_size=None)))
    monkeypatch.chdir(wd)
    facts = check_workflow_config(yaml.safe_load((wd / "config" / "config.yaml").read_text()))
    assert facts["apix"] is None
    assert any("has no pixel size; assuming 1.0 Å/px" in w and "set `apix`" in w for w in facts["warnings"])
    cfg = dict(BASE, input="data/nopix.mrcs", apix=2.5)
    facts = check_workflow_config(cfg)
    assert facts["apix"] == 2.5 and facts["warnings"] == []


def test_apix_that_disagrees_with_the_input_is_a_warning(template, tmp_path, monkeypatch):
    monkeypatch.chdir(template)
    facts = check_workflow_config(dict(BASE, apix=3.0))
    assert facts["apix"] == APIX
    assert any(w.startswith("apix: 3.0 Å/px is ignored") for w in facts["warnings"])


def test_whole_number_floats_become_ints_and_defaults_are_filled(template, monkeypatch):
    monkeypatch.chdir(template)
    cfg = dict(BASE, ncls=4.0)
    check_workflow_config(cfg)
    assert cfg["ncls"] == 4 and type(cfg["ncls"]) is int
    assert cfg["classkeep"] == 0.85 and cfg["chunks"] == 1 and cfg["threads"] == 1 and cfg["exclude"] is None


def test_nonstandard_real_mrc_header_is_read_with_a_warning(tmp_path, monkeypatch):
    """relion31.mrcs (RELION 3.1) has no 'MAP ' ID string and no machine stamp. (The shared data
    README names empiar_10076_7.mrc, but that file's header is standard: 'MAP ' and 0x4444.)"""
    path = REAL / "relion31.mrcs"
    if not path.exists():
        pytest.skip(f"{path} not present")
    monkeypatch.chdir(tmp_path)
    facts = check_workflow_config(dict(BASE, input=str(path), ncls=2, naliref=2, nbasisfp=2))
    assert facts["n"] == 5 and facts["box"] == 256
    assert any("no 'MAP ' ID string" in w and "reading it anyway" in w for w in facts["warnings"])
    empiar = REAL / "empiar_10076_7.mrc"
    facts = check_workflow_config(dict(BASE, input=str(empiar), ncls=2, naliref=2, nbasisfp=2))
    assert facts["n"] == 7 and not any("MAP" in w for w in facts["warnings"])


# ----------------------------------------------------------------------------- through Snakemake
def _through_snakemake(case, template, tmp_path, *args):
    if case.root_skips and os.geteuid() == 0:
        pytest.skip("root can read every file")
    wd = make_case(template, tmp_path, case)
    before = snapshot(wd)
    r = run_snakemake(wd, *args, cores=1)
    assert r.returncode == 1, r.stdout + r.stderr
    msg = r.stderr.split("r2d: configuration error: ", 1)
    assert len(msg) == 2, r.stderr
    assert re.search(case.match, msg[1]), r.stderr
    assert "Traceback" not in r.stderr
    assert snapshot(wd) == before


SMK_CASES = ["unknown key (typo)", "truncated MRC", "exclude: index out of range", "naliref > ncls"]


@pytest.mark.workflow
@pytest.mark.parametrize("name", SMK_CASES)
def test_snakemake_stops_before_any_job(name, template, tmp_path):
    """The real command, not a dry run: it stops at parse time; the run folder is untouched."""
    _through_snakemake(next(c for c in CASES if c.name == name), template, tmp_path)


@pytest.mark.slow
@pytest.mark.workflow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_case_through_snakemake_dry_run(case, template, tmp_path):
    _through_snakemake(case, template, tmp_path, "-n")


@pytest.mark.workflow
def test_snakemake_prints_warnings_and_plans(template, tmp_path):
    case = Case("nopix", ConfigError, "", {"input": "data/nopix.mrcs"},
                _mrc("data/nopix.mrcs", particles(), pixel_size=None))
    wd = make_case(template, tmp_path, case)
    r = run_snakemake(wd, "-n", cores=1)
    assert r.returncode == 0, r.stderr
    assert "r2d: warning: input: data/nopix.mrcs has no pixel size" in r.stderr


# ----------------------------------------------------------------------------- data checks while reading
def _bad_stack(tmp_path):
    imgs = particles(12, 16)
    imgs[3, 4, 5] = np.nan
    imgs[7] = 0.0  # blank
    imgs[9, 0, 0] = np.inf
    imgs[10] = 2.5  # constant, non-zero
    path = tmp_path / "bad.mrcs"
    io.write_mrcs(path, imgs)
    return io.open_stack(path), imgs


def test_image_problems_codes(tmp_path):
    stack, imgs = _bad_stack(tmp_path)
    codes = io.image_problems(stack.read(slice(None)))
    assert np.flatnonzero(codes == io.IMAGE_NONFINITE).tolist() == [3, 9]
    assert np.flatnonzero(codes == io.IMAGE_CONSTANT).tolist() == [7, 10]
    assert io.image_problems(imgs[0]).tolist() == [0]


def test_read_particles_zeroes_and_reports_bad_ones(tmp_path, caplog):
    from r2d.io import bad_mask, read_particles

    stack, imgs = _bad_stack(tmp_path)
    with caplog.at_level(logging.WARNING):
        out = read_particles(stack, [9, 0, 3, 7], chunk=2)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[1], imgs[0])
    assert (out[[0, 2, 3]] == 0).all()
    assert bad_mask(out).tolist() == [True, False, True, True]  # found again downstream
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "9 (NaN/Inf pixels)" in msg and "3 (NaN/Inf pixels)" in msg and "7 (zero variance)" in msg
    assert "0 (" not in msg.replace("10 (", "")


def test_read_good_particles_same_bad_set_in_every_chunking(tmp_path):
    from r2d.io import read_good_particles

    stack, imgs = _bad_stack(tmp_path)
    whole = read_good_particles(stack)
    assert whole[2].tolist() == [3, 7, 9, 10]
    assert whole[1].tolist() == [0, 1, 2, 4, 5, 6, 8, 11]
    np.testing.assert_array_equal(whole[0], imgs[whole[1]])
    for k in (1, 2, 3, 5):  # as the simmx chunks split the particles
        bounds = [io.chunk_range(f"{i}-of-{k}", len(stack)) for i in range(1, k + 1)]
        parts = [read_good_particles(stack, np.arange(lo, hi), chunk=3) for lo, hi in bounds]
        assert np.concatenate([p[2] for p in parts]).tolist() == whole[2].tolist()
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole[0])


def test_stack_weight_ignores_bad_particles(tmp_path):
    from r2d.io import stack_weight

    stack, imgs = _bad_stack(tmp_path)
    w = stack_weight(stack)
    assert np.isfinite(w).all()
    io.write_mrcs(tmp_path / "good.mrcs", imgs[[0, 1, 2, 4, 5, 6, 8, 11]])
    np.testing.assert_array_equal(w, stack_weight(io.open_stack(tmp_path / "good.mrcs")))
    io.write_mrcs(tmp_path / "blank.mrcs", np.zeros((4, 16, 16), np.float32))
    with pytest.raises(InputError, match="blank or corrupt"):
        stack_weight(io.open_stack(tmp_path / "blank.mrcs"))


BAD = {5: "nan", 17: "zero", 42: "inf", 58: "constant"}


@pytest.mark.slow
@pytest.mark.workflow
def test_bad_particles_are_excluded_everywhere(tmp_path):
    """NaN/Inf/blank particles: class -1 in every classmx, never in an average, listed in the logs."""
    from r2d import io as rio

    wd = tmp_path
    subprocess.run([str(BIN / "r2d"), "simulate", "--phantom", "--n", "60", "--box", "32", "--apix", "10",
                    "--snr", "1", "--shift", "1", "--seed", "2", "-o", str(wd / "data")], check=True,
                   capture_output=True)
    stack = rio.open_stack(wd / "data" / "particles.mrcs")
    imgs = stack.read(slice(None))
    imgs[5, 3, 3] = np.nan
    imgs[17] = 0.0
    imgs[42, 10, 20] = np.inf
    imgs[58] = 1.5
    rio.write_mrcs(wd / "data" / "particles.mrcs", imgs, pixel_size=10.0)
    (wd / "config").mkdir()
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(
        {"input": "data/particles.star", "ncls": 4, "iter": 2, "naliref": 2, "nbasisfp": 3, "classiter": 1,
         "seed": 7, "threads": 1, "chunks": 2, "path": "run"}))
    r = run_snakemake(wd, "run/classes_02.hdf", cores=1)
    assert r.returncode == 0, r.stderr[-3000:]
    run = wd / "run"
    bad = sorted(BAD)
    for name in ("classmx_00.h5", "classmx_01.h5", "classmx_02.h5"):
        cmx = rio.read_matrix(run / name)
        cls = dict(zip(cmx["particle"].tolist(), cmx["class"].tolist()))
        assert all(cls.get(i, -1) == -1 for i in bad), (name, {i: cls.get(i) for i in bad})
        assert sum(c >= 0 for c in cls.values()) >= 60 - len(bad) - (60 if name == "classmx_00.h5" else 0)
    for name in ("classes_init.hdf", "classes_01.hdf", "classes_02.hdf"):
        assert np.isfinite(rio.read_image_stack(run / name)).all(), name
        for h in rio.read_image_headers(run / name):
            assert not set(bad) & set(h["class_ptcl_idxs"]), name
    log = (run / "logs" / "input_fp.log").read_text()
    assert "5 (NaN/Inf pixels)" in log and "17 (zero variance)" in log and "42 (NaN/Inf pixels)" in log


def test_auto_chunks_follow_the_particles_used(template, monkeypatch):
    """`chunks: auto`: one chunk per CHUNK_PARTICLES particles used, at least one; the config
    check writes the count into the config."""
    from r2d.resources import CHUNK_PARTICLES, auto_chunks

    assert [auto_chunks(n) for n in (1, CHUNK_PARTICLES, CHUNK_PARTICLES + 1, 20 * CHUNK_PARTICLES)] == [1, 1, 2, 20]
    monkeypatch.chdir(template)
    cfg = dict(BASE, chunks="auto")
    check_workflow_config(cfg)
    assert cfg["chunks"] == 1
    with pytest.raises(UserError, match="chunks"):
        check_workflow_config(dict(BASE, chunks="many"))
