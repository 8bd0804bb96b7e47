"""Shared fixtures: small simulated data sets with ground truth."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


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
