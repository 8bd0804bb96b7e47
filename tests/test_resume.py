"""A killed run resumes to the same result; inputs are never written; runs are deterministic.

The workflow runs on a tiny simulated data set (60 particles, 32 px, 2 iterations) in a temp
folder. Jobs call ``r2d`` through a small wrapper (first on PATH) that builds only the parser
of the command it runs (a faster start than the full CLI; the computation is the same code)
and that can *hold* a job at a chosen point: inside the alignment of a simmx or mra job, or
inside :func:`r2d.io.atomic_write` after an output's data has been written to its temporary
file but before the rename. The test then SIGKILLs the whole Snakemake process group there,
and resumes with the documented commands (``snakemake --unlock``, then the same command with
``--rerun-incomplete``, which the local profile sets).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_snakemake, snakemake_cmd as smk_cmd, snakemake_env

pytestmark = pytest.mark.workflow

CONFIG = {"ncls": 4, "iter": 2, "naliref": 2, "nbasisfp": 3, "classiter": 1, "seed": 7, "threads": 1,
          "chunks": 1, "path": "run"}
#: iteration 02's class averages and, beside them (classify mra), every iteration's steps 7-8
TARGETS = ("run/classes_02.hdf", "run/input_01_proj.h5", "run/input_02_proj.h5")


def artifacts(run: Path) -> list[str]:
    """The artifacts compared byte for byte: every matrix and image stack of the run folder
    (classmx_*, classes_*, simmx_*, ...)."""
    names = sorted(p.name for p in run.iterdir() if p.suffix in (".h5", ".hdf") and not p.name.startswith("."))
    assert any(n.startswith("classmx_") for n in names) and any(n.startswith("classes_") for n in names)
    return names


def assert_same_artifacts(run: Path, ref: Path) -> None:
    assert artifacts(run) == artifacts(ref)
    for name in artifacts(ref):
        assert (run / name).read_bytes() == (ref / name).read_bytes(), f"{name} differs from the reference run"

#: where the kill test stops the run, in workflow order: (hold tag, what is checked after the kill)
#: (all on the chain that leads to classes_02, so each one is still ahead when the run resumes)
KILL_POINTS = [
    "write:input_fp.h5",       # footprints computed, data in the temporary file, not renamed
    "write:classes_init.hdf",  # initial class averages being written
    "align:mra_01",            # inside the alignment of iteration 01 (mra: particles vs class averages)
    "write:resultmx_01.h5",    # classes_01.hdf already in place, its job's second output not yet
    "write:mra_02.h5",         # mra_02 being written (one chunk: by the mra job itself)
]

WRAPPER = '''#!{python}
"""r2d for the tests: only the running command's parser; optional hold points (R2D_TEST_HOLD)."""
import contextlib, os, sys, time
from pathlib import Path

import r2d.cli
import r2d.io

HOLD = Path(os.environ["R2D_TEST_HOLD"]) if os.environ.get("R2D_TEST_HOLD") else None


def pause(tag):
    spec = HOLD / "hold" if HOLD else None
    if spec is not None and spec.exists() and spec.read_text().strip() == tag:
        (HOLD / "reached.tmp").write_text(f"{{tag}} {{os.getpid()}}")
        os.replace(HOLD / "reached.tmp", HOLD / "reached")
        while True:  # until the test kills the process group
            time.sleep(0.05)


_atomic_write = r2d.io.atomic_write


@contextlib.contextmanager
def atomic_write(path):
    with _atomic_write(path) as tmp:
        yield tmp
        pause("write:" + Path(path).name)


r2d.io.atomic_write = r2d.io.atomic.atomic_write = atomic_write  # the package's writers call the latter
cmd = next(a for a in sys.argv[1:] if not a.startswith("-"))
r2d.cli.COMMANDS = {{cmd: r2d.cli.COMMANDS[cmd]}}
if cmd == "simmx":
    import r2d.simmx as simmx  # the library module the command calls, which calls align

    step = Path(sys.argv[sys.argv.index("-o") + 1]).parent.name  # simmx_01 (or mra_01: same command)
    _align = simmx.align

    def align(*args, **kwargs):
        pause("align:" + step)
        return _align(*args, **kwargs)

    simmx.align = align
sys.exit(r2d.cli.main())
'''


def make_wrapper(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "r2d"
    path.write_text(WRAPPER.format(python=sys.executable))
    path.chmod(0o755)
    return folder


def smk_env(wrapper: Path, hold: Path | None = None) -> dict:
    """The wrapper first on PATH; R2D_TEST_HOLD only when `hold` is given."""
    env = snakemake_env(wrapper)
    env.pop("R2D_TEST_HOLD", None)
    if hold is not None:
        env["R2D_TEST_HOLD"] = str(hold)
    return env


def smk(wd, wrapper, *args, hold=None):
    return run_snakemake(wd, *args, env=smk_env(wrapper, hold))


def fingerprint(path: Path) -> tuple:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size, st.st_mode


def new_workdir(root: Path, data: Path, **config) -> Path:
    wd = root
    (wd / "config").mkdir(parents=True)
    (wd / "data").symlink_to(data)
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump({"input": "data/particles.star", **CONFIG, **config}))
    return wd


@pytest.fixture(scope="module")
def data(tiny_stack):
    """The simulated particles (60 x 32 px), linked into every work folder."""
    return tiny_stack


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory):
    return make_wrapper(tmp_path_factory.mktemp("bin"))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, data, wrapper):
    """An uninterrupted run; the inputs' checksum, mtime, size and mode before and after it."""
    wd = new_workdir(tmp_path_factory.mktemp("base"), data)
    inputs = [data / "particles.mrcs", data / "particles.star"]
    before = [fingerprint(p) for p in inputs]
    r = smk(wd, wrapper, *TARGETS)
    assert r.returncode == 0, r.stderr[-3000:]
    after = [fingerprint(p) for p in inputs]
    return wd, before, after


def test_inputs_are_never_written(baseline):
    _, before, after = baseline
    assert before == after


def _parts(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*.part"))


def _kill_at(wd: Path, wrapper: Path, hold: Path, tag: str, timeout: float = 180.0) -> None:
    """Resume with a hold at `tag`; SIGKILL the process group there.

    Between kills the lock is removed directly (what ``snakemake --unlock`` does, without
    another Snakemake start-up); the final resume uses the documented commands.
    """
    for lock in (wd / ".snakemake" / "locks").glob("*"):
        lock.unlink()
    (hold / "reached").unlink(missing_ok=True)
    (hold / "hold").write_text(tag)
    log = open(hold / f"smk_{tag.replace(':', '_')}.log", "w")
    proc = subprocess.Popen(smk_cmd(wd, "--rerun-incomplete", *TARGETS), env=smk_env(wrapper, hold),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.monotonic()
        while not (hold / "reached").exists():
            if proc.poll() is not None:
                log.close()
                pytest.fail(f"the run ended (rc {proc.returncode}) before reaching {tag}:\n"
                            + (hold / log.name).read_text()[-3000:])
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"{tag} not reached in {timeout} s")
            time.sleep(0.02)
        reached, pid = (hold / "reached").read_text().split()
        assert reached == tag
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        (hold / "hold").unlink(missing_ok=True)
    # the held job died with the group (it was a child of Snakemake, same process group)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.02)
    assert not Path(f"/proc/{pid}").exists(), f"job {pid} survived the kill"


def test_killed_five_times_resumes_to_identical_result(tmp_path, data, wrapper, baseline):
    """Five SIGKILLs of the process group, then the documented resume: byte-identical artifacts.

    This run also uses 2 threads per job and 2 simmx chunks (the baseline 1 and 1), so the
    comparison checks that neither changes a byte (see also the slow test below).
    """
    base, _, _ = baseline
    wd = new_workdir(tmp_path / "wd", data, threads=2, chunks=2)
    hold = tmp_path / "hold"
    hold.mkdir()
    run = wd / "run"
    for tag in KILL_POINTS:
        _kill_at(wd, wrapper, hold, tag)
        if tag.startswith("write:"):
            name = tag.split(":", 1)[1]
            assert not (run / name).exists(), f"{name} renamed into place although its job was killed"
            assert any(p.endswith(".part") and f".{name}." in p for p in _parts(run)), _parts(run)
        if tag == "write:resultmx_01.h5":
            assert (run / "classes_01.hdf").is_file()  # complete, but its job is not: must be redone
        if tag == "align:mra_01":
            assert not (run / "mra_01.h5").exists()
            assert not list(run.glob("mra_01/*.h5")), "an mra chunk was written although its job was killed"
    # the documented resume: unlock, then the same command (the local profile adds --rerun-incomplete)
    u = smk(wd, wrapper, "--unlock")
    assert u.returncode == 0, u.stderr[-2000:]
    r = smk(wd, wrapper, "--rerun-incomplete", *TARGETS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_artifacts(run, base / "run")
    assert _parts(run) == [], "temporary files of killed writes were not cleaned up"
    again = smk(wd, wrapper, "-n", *TARGETS)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_threads_and_chunks_do_not_change_the_result(tmp_path, data, wrapper, baseline):
    """Same seed, 2 threads per job and 2 simmx chunks: byte-identical classmx and classes."""
    base, _, _ = baseline
    wd = new_workdir(tmp_path / "wd", data, threads=2, chunks=2)
    r = smk(wd, wrapper, *TARGETS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((wd / "run" / "logs" / "simmx_02").glob("*.log"))) == 2
    assert_same_artifacts(wd / "run", base / "run")


@pytest.mark.slow
def test_another_seed_runs_and_differs(tmp_path, data, wrapper, baseline):
    from r2d import io

    base, _, _ = baseline
    wd = new_workdir(tmp_path / "wd", data, seed=8, iter=1)
    r = smk(wd, wrapper, "run/classes_01.hdf")
    assert r.returncode == 0, r.stderr[-3000:]
    a = io.read_matrix(wd / "run" / "classmx_01.h5")
    b = io.read_matrix(base / "run" / "classmx_01.h5")
    assert len(a["class"]) == len(b["class"]) == 60 and a["class"].max() < CONFIG["ncls"]
    assert (wd / "run" / "classmx_00.h5").read_bytes() != (base / "run" / "classmx_00.h5").read_bytes()
