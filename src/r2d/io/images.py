"""Particle image files and the lazy :class:`Stack` built on them.

Image files: MRC (``.mrc``/``.mrcs``/``.st``; data modes 0, 1, 2, 6, 12, either byte order; a
missing ``MAP`` ID or machine stamp is tolerated, as RELION does) read by plain file reads of
runs of consecutive images, and EMAN2-layout HDF5 (``.hdf``/``.h5``; image ``i`` at
``/MDF/images/<i>/image``). Images must be square with an even box. :class:`Stack` maps particle
``i`` to image ``index_in_file[i]`` (0-based) of ``files[file_of[i]]`` and reads float32
``(k, box, box)`` copies; build one with :func:`r2d.io.open_stack`. :func:`image_problems` is the
per-image data check (NaN/Inf pixels, zero variance). :func:`_open_referenced` and
:func:`_single_pixel_size` are shared by the STAR and cryoSPARC readers.
"""

from __future__ import annotations

import logging
import pathlib

import h5py
import numpy as np

from r2d.errors import InputError
from r2d.io.files import _check_file

log = logging.getLogger(__name__)
Path = pathlib.Path


MRC_EXTENSIONS = (".mrc", ".mrcs", ".st")
HDF_EXTENSIONS = (".hdf", ".h5")
#: MRC data modes we read: 0 int8, 1 int16, 2 float32, 6 uint16, 12 float16
_MRC_MODES = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2"}
#: MRC modes that exist but r2d does not read (complex, packed 4-bit)
_MRC_OTHER_MODES = (3, 4, 101)
_CTF_KEYS = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amp_contrast", "phase_shift")


class _MrcFile:
    """Header of one MRC file; images read with plain file reads (:meth:`read`)."""

    def __init__(self, path: Path):
        self.path = path
        _check_file(path, "MRC file")
        try:
            size = path.stat().st_size
            with open(path, "rb") as fh:
                head = fh.read(1024)
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror}); check permissions") from None
        if len(head) < 1024:
            raise InputError(f"{path}: {size} bytes, shorter than the 1024-byte MRC header; "
                             "the file is truncated or not an MRC file")
        self.problems = []
        if head[208:212] != b"MAP ":
            self.problems.append("no 'MAP ' ID string")
        order = {0x44: "<", 0x11: ">"}.get(head[212])
        if order is None:
            self.problems.append("unrecognised machine stamp")
            order = "<" if self._plausible(head, "<") or not self._plausible(head, ">") else ">"
        ints = np.frombuffer(head, dtype=order + "i4", count=24)
        nx, ny, nz, mode = (int(v) for v in ints[:4])
        mx, nsymbt = int(ints[7]), int(ints[23])
        cella_x = float(np.frombuffer(head, dtype=order + "f4", count=11)[10])
        if mode not in _MRC_MODES and (mode not in _MRC_OTHER_MODES or not 0 < nx < 1 << 24):
            raise InputError(f"{path}: does not look like an MRC file (header words nx={nx}, ny={ny}, nz={nz}, "
                             f"mode={mode} make no sense); check that it is an MRC image stack")
        if mode not in _MRC_MODES:
            raise InputError(f"{path}: unsupported MRC data mode {mode} (r2d reads modes 0, 1, 2, 6, 12); "
                             "convert the stack to mode 2 (float32), e.g. with relion_image_handler")
        if nx <= 0 or ny <= 0 or nz <= 0 or nsymbt < 0:
            raise InputError(f"{path}: MRC header gives an empty or invalid size "
                             f"(nx={nx}, ny={ny}, nz={nz}, nsymbt={nsymbt}); the file is damaged or empty")
        _check_box(path, nx, ny)
        self.dtype = np.dtype(order + _MRC_MODES[mode])
        self.offset = 1024 + nsymbt
        self.n, self.box = nz, nx
        expected = self.offset + nx * ny * nz * self.dtype.itemsize
        if size < expected:
            raise InputError(f"{path}: truncated MRC file: header ({nx} x {ny} x {nz}, mode {mode}) implies "
                             f"{expected} bytes, file has {size}; re-copy or re-extract it")
        self.pixel_size = cella_x / mx if mx > 0 and cella_x > 0 else None

    @staticmethod
    def _plausible(head: bytes, order: str) -> bool:
        nx, ny, nz, mode = np.frombuffer(head, dtype=order + "i4", count=4)
        return mode in _MRC_MODES and all(0 < v < 1 << 24 for v in (nx, ny, nz))

    def read(self, idx: np.ndarray) -> np.ndarray:
        """Images ``idx`` as float32 ``(k, box, box)``, in the order given.

        Plain reads of each run of consecutive images (a block is one read), not a memory map:
        the kernel maps the pages around every touched page of a mapped file that is in the page
        cache into the process, so reading a few thousand scattered particles of a freshly
        written 6.5 GB stack through ``np.memmap`` showed 3.5 GB resident.
        """
        idx = np.asarray(idx, dtype=np.intp).reshape(-1)
        nb, px = self.box * self.box * self.dtype.itemsize, self.box * self.box
        out = np.empty((len(idx), self.box, self.box), dtype=np.float32)
        if len(idx) == 0:
            return out
        order = np.argsort(idx, kind="stable")
        s = idx[order]
        cut = np.flatnonzero(np.diff(s) != 1) + 1
        try:
            with open(self.path, "rb") as fh:
                for a, b in zip(np.r_[0, cut], np.r_[cut, len(s)]):  # runs of consecutive images
                    fh.seek(self.offset + int(s[a]) * nb)
                    data = np.fromfile(fh, dtype=self.dtype, count=(b - a) * px)
                    if data.size < (b - a) * px:
                        raise EOFError
                    out[order[a:b]] = data.reshape(b - a, self.box, self.box)
        except (OSError, EOFError) as exc:
            expected = self.offset + self.n * nb
            try:
                size = self.path.stat().st_size
            except OSError:
                size = None
            if size is not None and size < expected:
                raise InputError(f"{self.path}: truncated MRC file: header ({self.box} x {self.box} x {self.n}) "
                                 f"implies {expected} bytes, file has {size} (it shrank while r2d was "
                                 "reading it); re-copy or re-extract it") from None
            raise InputError(f"{self.path}: cannot read images ({exc}); check the file") from None
        return out


class _HdfFile:
    """An EMAN2-layout HDF5 stack: image i at /MDF/images/<i>/image."""

    def __init__(self, path: Path):
        self.path, self.problems = path, []
        _check_file(path, "HDF5 file")
        with self._open() as f:
            imgs = f.get("MDF/images")
            if not isinstance(imgs, h5py.Group):
                raise InputError(f"{path}: not an EMAN2 image stack (no /MDF/images group)")
            if "imageid_max" in imgs.attrs:
                self.n = int(imgs.attrs["imageid_max"]) + 1
            else:
                self.n = sum(1 for k in imgs if k.isdigit())
            if self.n <= 0:
                raise InputError(f"{path}: the image stack is empty; give a stack with images")
            shapes = [self._dataset(imgs, i).shape for i in {0, self.n - 1}]
            ny, nx = shapes[0][-2:]
            if any(s[-2:] != (ny, nx) or np.prod(s[:-2], dtype=int) != 1 for s in shapes):
                raise InputError(f"{path}: images are 3-D or differ in size {shapes}; give a 2-D stack")
            _check_box(path, nx, ny)
            self.box = nx
            apix = imgs["0"].attrs.get("EMAN.apix_x")
            self.pixel_size = float(apix) if apix is not None and float(apix) > 0 else None

    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot open as HDF5 ({exc}); is it an HDF5 file?") from None

    def _dataset(self, imgs: h5py.Group, i: int) -> h5py.Dataset:
        ds = imgs.get(f"{i}/image")
        if not isinstance(ds, h5py.Dataset):
            raise InputError(f"{self.path}: image {i} (/MDF/images/{i}/image) is missing; the file is damaged")
        return ds

    def read(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self.box, self.box), dtype=np.float32)
        with self._open() as f:
            imgs = f["MDF/images"]
            for k, i in enumerate(idx):
                ds = self._dataset(imgs, int(i))
                if ds.size != self.box * self.box:
                    raise InputError(f"{self.path}: image {i} has shape {ds.shape}, expected box {self.box}")
                try:
                    out[k] = ds[()].reshape(self.box, self.box)
                except OSError as exc:
                    raise InputError(f"{self.path}: image {i} cannot be read ({exc}); the file is damaged, "
                                     "re-copy or re-write it") from None
        return out


def _check_box(path: Path, nx: int, ny: int) -> None:
    if nx != ny:
        raise InputError(f"{path}: images are {nx} x {ny} pixels; r2d needs square images (re-extract or pad)")
    if nx % 2:
        raise InputError(f"{path}: box size {nx} is odd; r2d needs an even box (crop or pad by one pixel)")


def _open_image_file(path: Path):
    ext = path.suffix.lower()
    if ext in MRC_EXTENSIONS:
        return _MrcFile(path)
    if ext in HDF_EXTENSIONS:
        return _HdfFile(path)
    raise InputError(f"{path}: unknown image file type '{ext}'; particle stacks must be "
                     f"MRC ({', '.join(MRC_EXTENSIONS)}) or EMAN2 HDF ({', '.join(HDF_EXTENSIONS)})")


#: codes returned by :func:`image_problems`
IMAGE_OK, IMAGE_NONFINITE, IMAGE_CONSTANT = 0, 1, 2
IMAGE_PROBLEMS = {IMAGE_NONFINITE: "NaN/Inf pixels", IMAGE_CONSTANT: "zero variance"}


def image_problems(images: np.ndarray) -> np.ndarray:
    """Per image of a stack ``(k, ny, nx)``: 0 if usable, 1 if it has a NaN or infinite pixel,
    2 if all its pixels are equal (zero variance: blank or clipped). A pure function of each
    image, so every step and every chunk finds the same bad particles."""
    a = np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    out = np.zeros(len(a), dtype=np.int8)
    if a.size == 0:
        return out
    flat = a.reshape(len(a), -1)
    finite = np.isfinite(flat).all(axis=1)
    with np.errstate(invalid="ignore"):
        const = finite & (flat.max(axis=1) == flat.min(axis=1))
    out[~finite] = IMAGE_NONFINITE
    out[const] = IMAGE_CONSTANT
    return out


class Stack:
    """A particle stack opened lazily (never loaded whole; images are read as they are asked for).

    Attributes: ``path``, ``n`` (= ``len(stack)``), ``box``, ``shape`` = ``(n, box, box)``,
    ``pixel_size`` (Å/pixel or None), ``metadata`` (per-particle DataFrame for STAR/CS, else None),
    ``source`` (the particle input the user gave: ``path``, or for a particle index its input).
    Images may live in several files; particle ``i`` is image ``index_in_file[i]`` (0-based) of
    ``files[file_of[i]]``. Build it with :func:`open_stack`.
    """

    def __init__(self, path, files, file_of=None, index_in_file=None, pixel_size=None,
                 metadata=None, ctf=None, source=None):
        self.path = Path(path)
        self.source = Path(source) if source else self.path
        self._files = list(files)
        self.box = self._files[0].box
        if file_of is None:
            self._file_of, self._index = None, None
            self.n = self._files[0].n
        else:
            self._file_of = np.asarray(file_of, dtype=np.intp)
            self._index = np.asarray(index_in_file, dtype=np.intp)
            self.n = len(self._file_of)
        if self.n == 0:
            raise InputError(f"{self.path}: the stack has no particles; give a non-empty stack")
        self.shape = (self.n, self.box, self.box)
        self.pixel_size = None if pixel_size is None else float(pixel_size)
        self.metadata = metadata
        self._ctf = ctf

    @property
    def files(self) -> list[pathlib.Path]:
        """The image files the particles are read from."""
        return [f.path for f in self._files]

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"Stack({str(self.path)!r}, n={self.n}, box={self.box}, pixel_size={self.pixel_size})"

    def _indices(self, index) -> np.ndarray:
        if isinstance(index, slice):
            return np.arange(self.n)[index]
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (self.n,):
                raise IndexError(f"boolean mask of shape {idx.shape} for a stack of {self.n} images")
            return np.flatnonzero(idx)
        idx = idx.reshape(-1)
        if idx.size == 0:
            return idx.astype(np.intp)
        if not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"stack indices must be integers, got dtype {idx.dtype}")
        if idx.min() < -self.n or idx.max() >= self.n:
            raise IndexError(f"index out of range for {self.path} ({self.n} images)")
        return np.where(idx < 0, idx + self.n, idx).astype(np.intp)

    def read(self, index) -> np.ndarray:
        """Images `index` (slice, int, int array/list or boolean mask) as a new float32 C-contiguous
        array ``(k, box, box)``, in the order given (an int gives ``k = 1``)."""
        idx = self._indices(index)
        if self._file_of is None:
            return self._files[0].read(idx)
        out = np.empty((len(idx), self.box, self.box), dtype=np.float32)
        f, j = self._file_of[idx], self._index[idx]
        order = np.argsort(f, kind="stable")
        starts = np.flatnonzero(np.diff(f[order], prepend=-1))
        for sel in np.split(order, starts[1:]):
            if len(sel):
                out[sel] = self._files[f[sel[0]]].read(j[sel])
        return out

    def ctf_params(self) -> dict[str, np.ndarray] | None:
        """Per-particle CTF arrays (float64, length n): ``defocus_u``, ``defocus_v`` (Å, underfocus
        positive), ``defocus_angle`` (deg), ``voltage`` (kV), ``cs`` (mm), ``amp_contrast``
        (fraction), ``phase_shift`` (deg), and bool ``phase_flipped`` (RELION's
        rlnCtfDataArePhaseFlipped, else False) and bool ``premultiplied`` (rlnCtfDataAreCtfPremultiplied). None if the file has no CTF columns."""
        return None if self._ctf is None else {k: v.copy() for k, v in self._ctf.items()}


def _open_referenced(meta_path: Path, names, idx: np.ndarray, bases: list[Path]) -> tuple:
    """Open the stacks named in a STAR/CS table; returns (files, file_of); checks idx and boxes."""
    import pandas as pd

    codes, uniques = pd.factorize(pd.Series(names, dtype=object))
    files = []
    for name in uniques:
        rel = Path(name)
        candidates = [rel] if rel.is_absolute() else [b / rel for b in bases] + [Path.cwd() / rel]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise InputError(f"{meta_path}: particle stack '{name}' not found (looked in "
                             f"{', '.join(str(c.parent) for c in candidates)}); run r2d from the project "
                             "folder the paths are relative to, or fix the paths in the file")
        files.append(_open_image_file(found))
    bad = [f for f in files if f.problems]
    if bad:
        log.warning("%s: %d of %d referenced stacks have a non-standard MRC header (e.g. %s: %s); "
                    "reading them anyway, as RELION does", meta_path, len(bad), len(files),
                    bad[0].path, " and ".join(bad[0].problems))
    boxes = {f.box for f in files}
    if len(boxes) > 1:
        raise InputError(f"{meta_path}: referenced stacks have different box sizes {sorted(boxes)}; "
                         "re-extract all particles with one box size")
    sizes = np.array([f.n for f in files])[codes]
    if np.any(idx < 0) or np.any(idx >= sizes):
        i = int(np.flatnonzero((idx < 0) | (idx >= sizes))[0])
        raise InputError(f"{meta_path}: particle {i} refers to image {idx[i] + 1} of "
                         f"{files[codes[i]].path}, which has {sizes[i]} images; the table and stacks disagree")
    return files, codes


def _single_pixel_size(path: Path, ps: np.ndarray) -> float | None:
    ps = np.asarray(ps, dtype=float)
    if not np.all(np.isfinite(ps) & (ps > 0)):
        return None
    if ps.max() - ps.min() > 1e-3 * ps.max():
        raise InputError(f"{path}: particles have different pixel sizes ({ps.min():g} to {ps.max():g} Å); "
                         "rescale them to one pixel size before 2-D classification")
    return float(ps[0])


def _as_stack(images) -> np.ndarray:
    a = np.asarray(images, dtype=np.float32)
    a = a[None] if a.ndim == 2 else a
    if a.ndim != 3:
        raise ValueError(f"images must be shaped (n, ny, nx) or (ny, nx), got {a.shape}")
    return np.ascontiguousarray(a)
