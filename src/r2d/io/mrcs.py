"""Writing MRC image stacks (mode 2 float32, ``ispg 0``), atomically.

:func:`write_mrcs` writes an array at once; :func:`new_mrcs` yields a writable memory map to
fill block by block and sets the header's min/max/mean/rms from the data on exit. ``pixel_size``
(Å) sets the voxel size (else 0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import mrcfile
import numpy as np

from r2d.io import atomic
from r2d.io.images import _as_stack


def write_mrcs(path, images, pixel_size: float | None = None) -> None:
    """Write images ``(n, ny, nx)`` as an MRC image stack (mode 2 float32, ispg 0), atomically;
    `pixel_size` (Å) sets the voxel size (else 0)."""
    data = _as_stack(images)
    with atomic.atomic_write(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.set_image_stack()
            if pixel_size is not None:
                mrc.voxel_size = float(pixel_size)


@contextlib.contextmanager
def new_mrcs(path, shape, pixel_size: float | None = None) -> Iterator[np.ndarray]:
    """Create an MRC image stack ``shape = (n, ny, nx)`` (mode 2 float32) and yield its data as
    a writable memory map: fill it block by block (only what is being written is in memory);
    on normal exit the file is renamed into place (:func:`atomic_write`)."""
    with atomic.atomic_write(path) as tmp:
        with mrcfile.new_mmap(tmp, shape=tuple(int(v) for v in shape), mrc_mode=2, overwrite=True) as mrc:
            mrc.set_image_stack()
            if pixel_size is not None:
                mrc.voxel_size = float(pixel_size)
            yield mrc.data
            _header_stats(mrc)


def _header_stats(mrc, block_bytes: int = 64 << 20) -> None:
    """min, max, mean and rms of an MRC file's data in the header, read about ``block_bytes``
    of float64 images at a time (mrcfile's own update would make full-size temporaries)."""
    d = mrc.data
    block = max(1, block_bytes // (8 * int(np.prod(d.shape[1:], dtype=np.int64))))
    lo, hi, s1, s2 = np.inf, -np.inf, 0.0, 0.0
    for i in range(0, len(d), block):
        b = np.asarray(d[i:i + block], dtype=np.float64)
        lo, hi = min(lo, float(b.min())), max(hi, float(b.max()))
        s1 += float(b.sum())
        s2 += float(np.square(b).sum())
    n = d.size
    mean = s1 / n
    mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = lo, hi, mean
    mrc.header.rms = float(np.sqrt(max(s2 / n - mean**2, 0.0)))
