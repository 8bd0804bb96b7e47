"""Writing MRC image stacks (mode 2 float32, ``ispg 0``), atomically.

:func:`write_mrcs` writes an array at once; :func:`new_mrcs` yields a writable memory map to
fill block by block and sets the header's min/max/mean/rms from the data on exit. ``pixel_size``
(Å) sets the voxel size (else 0).
"""

from __future__ import annotations

import contextlib
import struct
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


def _label(mrc) -> None:
    """One header label without mrcfile's time stamp: the same data give the same bytes."""
    mrc.header.label[0] = b"r2d"
    mrc.header.label[1:] = b""
    mrc.header.nlabl = 1


class _Stream:
    """Blocks appended in order to the data of an open MRC file, with running statistics."""

    def __init__(self, fh, n: int, shape: tuple[int, int]):
        self.fh, self.n, self.shape = fh, n, shape
        self.written, self.lo, self.hi, self.s1, self.s2 = 0, np.inf, -np.inf, 0.0, 0.0

    def write(self, images) -> None:
        """Append ``images`` (b, ny, nx) as float32 (little-endian, as the header says)."""
        b = np.ascontiguousarray(images, dtype="<f4")
        if b.shape[1:] != self.shape or self.written + len(b) > self.n:
            raise ValueError(f"block {b.shape} does not fit the stack ({self.n}, *{self.shape}) at {self.written}")
        self.fh.write(b.tobytes())
        self.written += len(b)
        if b.size:
            d = b.astype(np.float64)
            self.lo, self.hi = min(self.lo, float(d.min())), max(self.hi, float(d.max()))
            self.s1 += float(d.sum())
            self.s2 += float(np.square(d).sum())


@contextlib.contextmanager
def stream_mrcs(path, shape, pixel_size: float | None = None) -> Iterator[_Stream]:
    """Create an MRC image stack ``shape = (n, ny, nx)`` (mode 2 float32) and yield a writer whose
    ``write(images)`` appends blocks in order, with plain file writes; on exit (all ``n`` images
    written) the header gets min, max, mean and rms and the file is renamed into place
    (:func:`atomic_write`)."""
    n, ny, nx = (int(v) for v in shape)
    with atomic.atomic_write(path) as tmp:
        with mrcfile.new_mmap(tmp, shape=(n, ny, nx), mrc_mode=2, overwrite=True) as mrc:
            mrc.set_image_stack()
            _label(mrc)
            if pixel_size is not None:
                mrc.voxel_size = float(pixel_size)
            offset = mrc.header.nbytes + int(mrc.header.nsymbt)
            order = "<" if mrc.header.mode.dtype.byteorder in "<=|" else ">"
        if order != "<" and np.little_endian:
            raise RuntimeError("mrcfile wrote a big-endian header")  # new files are native, little-endian here
        with open(tmp, "r+b") as fh:
            fh.seek(offset)
            stream = _Stream(fh, n, (ny, nx))
            yield stream
            if stream.written != n:
                raise ValueError(f"{path}: {stream.written} of {n} images written")
            size = max(n * ny * nx, 1)
            mean = stream.s1 / size
            rms = float(np.sqrt(max(stream.s2 / size - mean**2, 0.0)))
            fh.seek(76)  # dmin, dmax, dmean: words 20-22; rms: word 55
            fh.write(struct.pack("<3f", stream.lo if n else 0.0, stream.hi if n else 0.0, mean))
            fh.seek(216)
            fh.write(struct.pack("<f", rms))
