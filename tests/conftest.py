"""Shared fixtures: small simulated data sets with ground truth, the workflow's Snakemake runner
and a small finished run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
#: the virtualenv's programs (snakemake, r2d): first on the PATH of every workflow run
BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------- running the workflow
def snakemake_cmd(workdir, *args, cores: int = 2) -> list[str]:
    """The command line of the workflow (this checkout's Snakefile) in ``workdir``; no workflow
    profile, so that a ``profiles/default`` cannot change what the tests run."""
    return [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--workflow-profile", "none",
            "--directory", str(workdir), "--cores", str(cores), *map(str, args)]


def snakemake_env(*path) -> dict:
    """The environment of a workflow run: ``path`` folders, then the virtualenv's, first on PATH
    (jobs call ``r2d``)."""
    return dict(os.environ, PATH=os.pathsep.join([*map(str, path), str(BIN), os.environ["PATH"]]))


def run_snakemake(workdir, *args, cores: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the workflow in ``workdir`` with ``args``; stdout and stderr captured (as text)."""
    return subprocess.run(snakemake_cmd(workdir, *args, cores=cores), capture_output=True, text=True,
                          env=env if env is not None else snakemake_env())


@pytest.fixture(scope="session")
def smk():
    """The workflow runner: ``smk(workdir, *args, cores=2, env=None)`` -> CompletedProcess."""
    return run_snakemake


#: the simulated stack of the workflow tests (``r2d simulate`` arguments)
TINY_STACK = ["--phantom", "--n", "60", "--box", "32", "--apix", "10", "--snr", "1", "--shift", "1", "--seed", "2"]


@pytest.fixture(scope="session")
def tiny_stack(tmp_path_factory) -> Path:
    """A folder with 60 simulated 32 px particles (particles.star, particles.mrcs, truth.tsv).
    Shared by the workflow tests: link it, never write into it."""
    d = tmp_path_factory.mktemp("tiny_stack")
    subprocess.run([str(BIN / "r2d"), "simulate", *TINY_STACK, "-o", str(d)], check=True, capture_output=True)
    return d


def map_volume(name: str) -> np.ndarray:
    """A test molecule: ``"phantom"`` (r2d's own, 48 px at 6 Å) or a map file of ../shared/data/maps
    (the test is skipped when ../shared is absent); float32 ``(n, n, n)``."""
    import mrcfile

    from r2d.phantom import phantom_volume

    if name == "phantom":
        return phantom_volume(48, 6.0)
    path = SHARED / "maps" / name
    if not path.exists():
        pytest.skip(f"{path} not found (../shared absent)")
    return mrcfile.read(path).astype(np.float32)


#: the small finished run (tiny_run): 60 particles, 4 classes, one iteration
TINY_N = 60
TINY_APIX = 10.0
TINY_CONFIG = {"input": "data/particles.star", "ncls": 4, "iter": 1, "naliref": 2, "nbasisfp": 3, "classiter": 1,
               "seed": 7, "threads": 1, "path": "run", "stability": 0}
#: the rules the tiny run leaves to Snakemake (everything before them is made in-process)
TINY_RULES = ["montage_final", "montage", "montage_init", "summary", "export"]


def _view_labels(truth, k: int) -> np.ndarray:
    """Classes from the true viewing directions (nearest of k fixed axes, d == -d)."""
    axes = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=float)[:k]
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    d = truth[["view_x", "view_y", "view_z"]].to_numpy()
    return np.argmax(np.abs(d @ axes.T), axis=1).astype(np.int32)


def _write_classmx(path, labels) -> None:
    from r2d import io

    n = len(labels)
    z = np.zeros(n, dtype=np.float32)
    io.write_matrix(path, {"class": labels.astype(np.int32), "weight": np.ones(n, np.float32), "dx": z, "dy": z,
                           "dalpha": z, "mirror": z, "particle": np.arange(n, dtype=np.int64)})


def build_tiny_run(tmp_path_factory) -> Path:
    """The folder of a small finished run, built once per test session (in its temp folder).

    A simulated 60-particle, 32 px stack (``data/``), classmx files from the true views, class
    averages from the real ``r2d average`` (in-process), then Snakemake runs only the report and
    export rules (TINY_RULES); what it printed is in ``snakemake.out`` beside the run folder.
    """
    import pandas as pd
    import yaml

    from r2d import cli

    wd = tmp_path_factory.getbasetemp() / "r2d_tiny"
    printed = wd / "snakemake.out"
    if printed.exists():
        return wd
    if wd.exists():  # an earlier build failed
        shutil.rmtree(wd)
    wd.mkdir()
    assert cli.main(["simulate", "--phantom", "--n", str(TINY_N), "--box", "32", "--apix", str(TINY_APIX),
                     "--snr", "2", "--shift", "2", "--seed", "2", "-o", str(wd / "data")]) == 0
    (wd / "config").mkdir()
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    truth = pd.read_csv(wd / "data" / "truth.tsv", sep="\t")
    labels = _view_labels(truth, TINY_CONFIG["ncls"])
    run = wd / "run"
    run.mkdir()
    _write_classmx(run / "classmx_00.h5", labels)
    _write_classmx(run / "classmx_01.h5", np.where(np.arange(TINY_N) % 10 == 0, (labels + 1) % 4, labels))  # 6 change
    stack = str(wd / "data" / "particles.star")
    for name, cmx in (("init", "classmx_00"), ("01", "classmx_01")):
        assert cli.main(["average", stack, str(run / f"{cmx}.h5"), "-o", str(run / f"classes_{name}.hdf"),
                         "--resultmx", str(run / f"resultmx_{name}.h5"), "--iter", "1"]) == 0
    targets = ["run/report/final_classes.png", "run/report/summary.json", "run/report/classes_init.png",
               "run/report/classes_01.png", "run/export/particles.star"]
    r = run_snakemake(wd, "--rerun-triggers", "mtime", "--allowed-rules", *TINY_RULES, "--", *targets)
    assert r.returncode == 0, r.stderr[-4000:]
    printed.write_text(r.stdout + r.stderr)
    return wd


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A small finished run (see :func:`build_tiny_run`): its folder, with ``run/`` and ``data/``."""
    return build_tiny_run(tmp_path_factory)


def _apt_install(package: str, program: str) -> str | None:
    """Install Debian's ``package`` (which provides ``program``) with apt-get; None on success,
    else why not (for the skip)."""
    if os.environ.get("R2D_TEST_NO_INSTALL") == "1":
        return f"{program} not installed (R2D_TEST_NO_INSTALL=1: not installing {package})"
    if shutil.which("apt-get") is None:
        return f"{program} not installed and apt-get not available (not Debian/Ubuntu): install {package} by hand"
    if os.geteuid() != 0:
        return f"{program} not installed and not root: `sudo apt-get install {package}` to run this test"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    logfile = f"/tmp/r2d-{package}-apt.log"
    with open(logfile, "w") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], stdout=log, stderr=subprocess.STDOUT, env=env)
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode != 0:
                return f"{program} not installed: apt-get install {package} failed, see {logfile}"
    return None if shutil.which(program) else f"{package} installed but {program} not on PATH"


@pytest.fixture(scope="session")
def relion():
    """RELION's programs (``relion_image_handler``, ``relion_stack_create``), as users' RELION reads.

    Installed from Debian (``apt-get install relion``, about 10 s) when missing and root, as
    ``scripts/slurm-localhost.sh`` installs SLURM; the tests skip, saying why, only where that fails.
    """
    if shutil.which("relion_image_handler") is None:
        why = _apt_install("relion", "relion_image_handler")
        if why is not None:
            pytest.skip(why)
    return shutil.which("relion_image_handler")


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium for the report's rendering test (Debian's ``chromium`` installed when
    missing and root, about 12 s; else the test skips, saying why)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        why = _apt_install("chromium", "chromium")
        if why is not None:
            pytest.skip(why)
        found = shutil.which("chromium")
    return found


def blob_image(n: int, spec) -> np.ndarray:
    """Sum of Gaussian blobs ``(x, y, sigma, amplitude)`` (pixels from the centre), ``(n, n)`` float32."""
    v, u = np.mgrid[0:n, 0:n] - n // 2
    img = np.zeros((n, n))
    for x, y, s, a in spec:
        img += a * np.exp(-((u - x) ** 2 + (v - y) ** 2) / (2 * s * s))
    return img.astype(np.float32)


@pytest.fixture(scope="session")
def ribosome_map():
    path = SHARED / "maps" / "ribosome70S_65px.mrc"
    if not path.exists():
        pytest.skip(f"{path} not available (../shared absent)")
    import mrcfile

    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data, dtype=np.float32)


@pytest.fixture(scope="session")
def ribosome_projections(ribosome_map):
    """40 noise-free projections of the 70S map at 64 px (random views), and their truth."""
    from r2d.simulate import simulate

    imgs, truth, clean = simulate(ribosome_map, 40, 64, 5.0, snr=1e6, shift_max=0.0, ctf=None, seed=3,
                                  return_clean=True)
    return clean, truth
