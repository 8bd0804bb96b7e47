"""Shared fixtures: small simulated data sets with ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


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
