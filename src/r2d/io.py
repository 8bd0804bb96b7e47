"""All file I/O for r2d: particle stacks in, image stacks and matrix files out.

Reading: :func:`open_stack` opens a particle stack lazily (MRC/MRCS/.st memory-mapped, EMAN2 HDF,
RELION STAR, cryoSPARC CS); :meth:`Stack.read` returns float32 ``(k, box, box)`` copies.
Writing: :func:`write_image_stack` (EMAN2-layout HDF5 with per-image header attributes),
:func:`write_mrcs` (MRC mode 2 stack) and :func:`write_matrix` (HDF5, one dataset per name), all
through :func:`atomic_write`. Every problem with an input file raises :class:`InputError` whose
message names the file, says what is wrong and what to do.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pathlib
import re
import socket
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import h5py
import mrcfile
import numpy as np

from r2d.errors import ConfigError, InputError

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)
Path = pathlib.Path

MRC_EXTENSIONS = (".mrc", ".mrcs", ".st")
HDF_EXTENSIONS = (".hdf", ".h5")
#: MRC data modes we read: 0 int8, 1 int16, 2 float32, 6 uint16, 12 float16
_MRC_MODES = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2"}
#: MRC modes that exist but r2d does not read (complex, packed 4-bit)
_MRC_OTHER_MODES = (3, 4, 101)
_CTF_KEYS = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amp_contrast", "phase_shift")


# ----------------------------------------------------------------------------- atomic writes
def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask() is process-global and racy)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _process_start() -> float | None:
    """Start time of this process (seconds since the epoch), or None where unknown."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # pragma: no cover - psutil is a dependency of snakemake, but be safe
        return None


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _writer_alive(pid: int) -> bool:
    """Whether process `pid` of this machine (a temporary file's writer) may still be running."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def _remove_stale_parts(path: Path) -> None:
    """Delete temporary files ``.<name>.<host>.<pid>.<random>.part`` of `path` left by killed writers.

    A file is stale when its writer (this machine, process `pid`) is no longer running. A file
    from another machine (shared file system) is stale when it was last modified before this
    process started; a workflow job never has two writers of one output at a time.
    """
    start = None
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.([A-Za-z0-9-]+)\.(\d+)\.[^.]+\.part$")
    for part in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
        m = pattern.match(part.name)
        try:
            if m is not None and m.group(1) == _HOST:
                stale = not _writer_alive(int(m.group(2)))
            else:  # another machine, or an older naming
                start = _process_start() if start is None else start
                stale = start is not None and part.stat().st_mtime < start - 1.0
            if stale:
                part.unlink()
                log.info("removed %s, a partial file left by an interrupted earlier write", part)
        except OSError:
            pass


@contextlib.contextmanager
def atomic_write(path) -> Iterator[pathlib.Path]:
    """Yield a temporary path ``.<name>.<host>.<pid>.<random>.part`` next to `path` to write to.

    On normal exit the file is flushed to disk (fsync), gets mode ``0o666 & ~umask`` and is
    renamed onto `path` (atomic on POSIX): a reader, or a resumed workflow, sees either the old
    file or the complete new one, never a partial one. On an exception the temporary file is
    deleted and the exception propagates; after a hard kill it stays behind under its hidden
    name and is deleted by the next write of the same `path` (once its writer is gone).
    Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every file system lets a folder be fsync'ed)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- image files
def _check_file(path: Path, what: str = "file") -> None:
    if not path.exists():
        raise InputError(f"{path}: {what} not found (working directory {Path.cwd()}); check the path")
    if not path.is_file():
        raise InputError(f"{path}: is not a regular file; give the path of a {what}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: {what} is not readable (permission denied); fix its permissions "
                         "(chmod a+r) or copy it somewhere you can read")


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


# ----------------------------------------------------------------------------- data checks
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


# ----------------------------------------------------------------------------- Stack
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


def open_stack(path) -> Stack:
    """Open a particle stack by extension: .mrc/.mrcs/.st (MRC), .hdf/.h5 (EMAN2 HDF, or an
    r2d particle index, :func:`write_particle_index`), .star (RELION 3.0/3.1+), .cs (cryoSPARC)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".star":
        return _open_star(path)
    if ext in HDF_EXTENSIONS and _is_particle_index(path):
        return _open_particle_index(path)
    if ext == ".cs":
        return _open_cs(path)
    if ext not in MRC_EXTENSIONS + HDF_EXTENSIONS:
        raise InputError(f"{path}: unknown particle file type '{ext}'; use .mrc/.mrcs/.st (MRC), "
                         ".hdf/.h5 (EMAN2 HDF), .star (RELION) or .cs (cryoSPARC)")
    src = _open_image_file(path)
    if src.problems:
        log.warning("%s: MRC header has %s; reading it anyway, as RELION does",
                    path, " and ".join(src.problems))
    return Stack(path, [src], pixel_size=src.pixel_size)


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


# ----------------------------------------------------------------------------- RELION STAR
def read_star_metadata(path) -> pandas.DataFrame:
    """The particle table of a RELION STAR file (3.0: one block; 3.1+/5: data_optics merged into
    data_particles by rlnOpticsGroup, particle columns win). All columns are kept, file order."""
    import starfile
    import pandas as pd

    path = Path(path)
    _check_file(path, "STAR file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the STAR file is empty; give a RELION particle STAR file")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises many kinds
        raise InputError(f"{path}: cannot parse STAR file ({exc}); check it is a RELION STAR file") from None
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    parts = tables.get("particles")
    if parts is None:
        parts = next((v for k, v in tables.items() if k != "optics" and "rlnImageName" in v), None)
    if parts is None or "rlnImageName" not in parts:
        raise InputError(f"{path}: no particle table (a data block with rlnImageName) found; "
                         "give a RELION particle STAR file (e.g. from Extract or Select)")
    parts = parts.reset_index(drop=True).copy()
    optics = tables.get("optics")
    if optics is not None and "rlnOpticsGroup" in optics and "rlnOpticsGroup" in parts:
        optics = optics.set_index("rlnOpticsGroup")
        missing = set(parts["rlnOpticsGroup"]) - set(optics.index)
        if missing or not optics.index.is_unique:
            raise InputError(f"{path}: optics groups {sorted(missing)} of the particles are missing or "
                             "duplicated in data_optics; fix the optics table")
        for col in optics.columns.difference(parts.columns, sort=False):
            parts[col] = parts["rlnOpticsGroup"].map(optics[col]).to_numpy()
    if len(parts) == 0:
        raise InputError(f"{path}: the particle table is empty; give a STAR file with particles")
    return parts


def _single_pixel_size(path: Path, ps: np.ndarray) -> float | None:
    ps = np.asarray(ps, dtype=float)
    if not np.all(np.isfinite(ps) & (ps > 0)):
        return None
    if ps.max() - ps.min() > 1e-3 * ps.max():
        raise InputError(f"{path}: particles have different pixel sizes ({ps.min():g} to {ps.max():g} Å); "
                         "rescale them to one pixel size before 2-D classification")
    return float(ps[0])


def _star_ctf(path: Path, meta) -> dict[str, np.ndarray] | None:
    if "rlnDefocusU" not in meta:
        return None
    need = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
    missing = [c for c in need if c not in meta]
    if missing:
        raise InputError(f"{path}: has defocus values but no {', '.join(missing)}; add them (or the "
                         "data_optics block) to the STAR file")

    def col(name, default):
        return meta[name].to_numpy(dtype=float) if name in meta else np.full(len(meta), default, dtype=float)

    u = col("rlnDefocusU", 0.0)
    ctf = dict(defocus_u=u, defocus_v=col("rlnDefocusV", np.nan), defocus_angle=col("rlnDefocusAngle", 0.0),
               voltage=col("rlnVoltage", 0), cs=col("rlnSphericalAberration", 0),
               amp_contrast=col("rlnAmplitudeContrast", 0), phase_shift=col("rlnPhaseShift", 0.0))
    ctf["defocus_v"] = np.where(np.isnan(ctf["defocus_v"]), u, ctf["defocus_v"])
    ctf["phase_flipped"] = col("rlnCtfDataArePhaseFlipped", 0) != 0
    ctf["premultiplied"] = col("rlnCtfDataAreCtfPremultiplied", 0) != 0
    return ctf


def _open_star(path: Path) -> Stack:
    import pandas as pd

    meta = read_star_metadata(path)
    name = meta["rlnImageName"].astype(str).str.strip()
    at = name.str.partition("@")
    has_at = (at[1] == "@").to_numpy()
    num = np.where(has_at, at[0].to_numpy(dtype=object), "1")  # "file" alone means its image 1
    files_col = np.where(has_at, at[2].to_numpy(dtype=object), at[0].to_numpy(dtype=object))
    idx = pd.to_numeric(pd.Series(num), errors="coerce").to_numpy(dtype=float) - 1
    bad = np.flatnonzero(~np.isfinite(idx) | (idx < 0) | (idx != np.round(idx)))
    if len(bad):
        raise InputError(f"{path}: rlnImageName of particle {bad[0]} is {name.iloc[bad[0]]!r}; it must look "
                         "like 'N@stack.mrcs' with N counting from 1")
    idx = idx.astype(np.int64)
    files, file_of = _open_referenced(path, files_col, idx, [path.parent])
    if "rlnImagePixelSize" in meta:
        ps = _single_pixel_size(path, meta["rlnImagePixelSize"])
    elif "rlnDetectorPixelSize" in meta and "rlnMagnification" in meta:
        ps = _single_pixel_size(path, meta["rlnDetectorPixelSize"].to_numpy(float) * 1e4
                                / meta["rlnMagnification"].to_numpy(float))
    else:
        ps = files[0].pixel_size
    return Stack(path, files, file_of, idx, ps, metadata=meta, ctf=_star_ctf(path, meta))


# ----------------------------------------------------------------------------- cryoSPARC
def read_cs_metadata(path) -> pandas.DataFrame:
    """The table of a cryoSPARC .cs file (numpy structured array): one column per field, vector
    fields split into ``<field>/0``, ``<field>/1``, ...; byte strings decoded to str."""
    import pandas as pd

    path = Path(path)
    _check_file(path, "cryoSPARC .cs file")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{path}: cannot read as a cryoSPARC .cs file ({exc}); re-export it") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.names is None or arr.ndim != 1:
        raise InputError(f"{path}: not a cryoSPARC .cs table (expected a numpy structured array)")
    if len(arr) == 0:
        raise InputError(f"{path}: the .cs table has no particles")
    cols = {}
    for field in arr.dtype.names:
        v = arr[field]
        if v.dtype.kind == "S":
            v = np.char.decode(v, "utf-8")
        if v.ndim == 1:
            cols[field] = v
        else:
            for k, c in enumerate(v.reshape(len(v), -1).T):
                cols[f"{field}/{k}"] = c
    return pd.DataFrame(cols)


def _open_cs(path: Path) -> Stack:
    meta = read_cs_metadata(path)
    if "blob/path" not in meta or "blob/idx" not in meta:
        raise InputError(f"{path}: no blob/path and blob/idx fields, so it does not locate particle "
                         "images; export the particles job (not e.g. a passthrough) from cryoSPARC")
    names = [s[1:] if s.startswith(">") else s for s in meta["blob/path"]]  # '>' = project-relative
    idx = meta["blob/idx"].to_numpy(dtype=np.int64)
    files, file_of = _open_referenced(path, names, idx, [path.parent, *path.parent.parents])
    ps = _single_pixel_size(path, meta["blob/psize_A"]) if "blob/psize_A" in meta else files[0].pixel_size
    ctf = None
    if "ctf/df1_A" in meta:
        def col(name, default=0.0):
            return meta[name].to_numpy(dtype=float) if name in meta else np.full(len(meta), default)

        ctf = dict(defocus_u=col("ctf/df1_A"), defocus_v=col("ctf/df2_A"),
                   defocus_angle=np.degrees(col("ctf/df_angle_rad")), voltage=col("ctf/accel_kv"),
                   cs=col("ctf/cs_mm"), amp_contrast=col("ctf/amp_contrast"),
                   phase_shift=np.degrees(col("ctf/phase_shift_rad")),
                   phase_flipped=np.zeros(len(meta), dtype=bool))
    return Stack(path, files, file_of, idx, ps, metadata=meta, ctf=ctf)


# ----------------------------------------------------------------------------- particle index
#: root attribute that marks an r2d particle index (:func:`write_particle_index`)
INDEX_MARK = "r2d_particle_index"


def write_particle_index(stack: Stack, path) -> None:
    """Write where every particle of ``stack`` is and its CTF, atomically, as HDF5:
    ``files`` (absolute paths of the image files), ``file_of``, ``index_in_file`` (N,) int64
    (particle ``i`` is image ``index_in_file[i]``, 0-based, of ``files[file_of[i]]``) and
    ``ctf/<name>`` (N,) (:meth:`Stack.ctf_params`; absent without CTF); root attributes
    ``r2d_particle_index`` (format version 1), ``source`` (the input's path), ``pixel_size``
    (Å/px, NaN when unknown).

    The workflow writes one (rule ``particles``) so that its jobs open the particles without
    parsing the STAR/CS table again (pandas alone costs 0.3 s per job). Reading it with
    :func:`open_stack` gives the same images, CTF and pixel size as the input.
    """
    n = stack.n
    file_of = np.zeros(n, dtype=np.int64) if stack._file_of is None else stack._file_of.astype(np.int64)
    index = np.arange(n, dtype=np.int64) if stack._index is None else stack._index.astype(np.int64)
    data = {"files": np.array([str(Path(p).resolve()) for p in stack.files]),
            "file_of": file_of, "index_in_file": index}
    for key, v in (stack.ctf_params() or {}).items():
        data[f"ctf/{key}"] = v
    write_matrix(path, data, {INDEX_MARK: 1, "source": str(stack.source),
                              "pixel_size": np.nan if stack.pixel_size is None else stack.pixel_size})


def _is_particle_index(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return INDEX_MARK in f.attrs
    except OSError:
        return False  # not HDF5 (or unreadable): the image-stack reader says what is wrong


def _open_particle_index(path: Path) -> Stack:
    d = read_matrix(path)
    attrs = read_matrix_attrs(path)
    source = attrs.get("source")
    files = []
    for name in d["files"]:
        p = Path(str(name))
        if not p.is_file():
            raise InputError(f"{path}: image file {p} (from {source}) is gone; the particle "
                             "index is stale: rerun its rule (snakemake --forcerun particles)")
        files.append(_open_image_file(p))
    file_of, idx = d["file_of"], d["index_in_file"]
    ctf = {k[4:]: v for k, v in d.items() if k.startswith("ctf/")} or None
    ps = float(attrs.get("pixel_size", np.nan))
    ps = ps if np.isfinite(ps) else None
    if len(files) == 1 and len(idx) == files[0].n and np.array_equal(idx, np.arange(len(idx))):
        return Stack(path, files, pixel_size=ps, ctf=ctf, source=source)  # the whole of one file, in order
    sizes = np.array([f.n for f in files])[file_of]
    if np.any(idx >= sizes):
        raise InputError(f"{path}: refers to images past the end of their files; the particle index is "
                         "stale: rerun its rule (snakemake --forcerun particles)")
    return Stack(path, files, file_of, idx, ps, ctf=ctf, source=source)


# ----------------------------------------------------------------------------- helpers
def image_block(n: int) -> int:
    """Particles a step holds at once: 64 MiB of ``n × n`` float32 images, between 256 and 4096
    (64 px: 4096, 96 px: 1820, 128 px: 1024), so a job's memory depends on the box, not on the
    number of particles (simmx, input_proj, class averaging)."""
    return int(min(4096, max(256, 2**26 // (4 * n * n))))


def chunk_index(spec: str) -> tuple[int, int]:
    """``(i, k)`` of a chunk spec ``"i-of-k"`` (1 <= i <= k), as Snakemake's scattergather names them."""
    m = re.fullmatch(r"\s*(\d+)-of-(\d+)\s*", str(spec))
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise InputError(f"chunk {spec!r} is not of the form I-of-K with 1 <= I <= K (e.g. 3-of-8)")
    return int(m[1]), int(m[2])


def chunk_range(spec: str, n: int) -> tuple[int, int]:
    """Half-open particle range ``[(i-1)*n//k, i*n//k)`` of chunk spec ``"i-of-k"`` (1 <= i <= k).
    The k chunks cover ``[0, n)`` exactly, without overlap."""
    i, k = chunk_index(spec)
    if n < 0:
        raise ValueError(f"number of particles must be >= 0, got {n}")
    return (i - 1) * n // k, i * n // k


def _as_stack(images) -> np.ndarray:
    a = np.asarray(images, dtype=np.float32)
    a = a[None] if a.ndim == 2 else a
    if a.ndim != 3:
        raise ValueError(f"images must be shaped (n, ny, nx) or (ny, nx), got {a.shape}")
    return np.ascontiguousarray(a)


def _plain(v):
    """An HDF5 attribute/dataset value as Python: bytes -> str, numpy scalars -> Python scalars."""
    if isinstance(v, bytes):
        return v.rstrip(b"\0").decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.dtype.kind in "SO":
        return np.array([_plain(x) for x in v.ravel()], dtype=object).reshape(v.shape).astype(str)
    if isinstance(v, np.generic):
        return v.item()
    return v


# ----------------------------------------------------------------------------- EMAN2 HDF stacks
def _write_eman_attr(grp: h5py.Group, name: str, value) -> None:
    """Write one header item the way EMAN2's HdfIO2::write_attr does, so that EMAN2 reads it:
    bool -> 1-byte 'T'/'F'; int -> int32; float -> float64 scalar; str -> null-terminated fixed
    string; list/array -> 1-D int32 or float32 (EMAN2 reads no other arrays)."""
    if isinstance(value, (bool, np.bool_)):
        grp.attrs[name] = np.int8(ord("T" if value else "F"))
    elif isinstance(value, (int, np.integer)):
        grp.attrs[name] = np.int32(value) if -2**31 <= value < 2**31 else np.int64(value)
    elif isinstance(value, (float, np.floating)):
        grp.attrs[name] = np.float64(value)
    elif isinstance(value, str):
        b = value.encode("utf-8")
        tid = h5py.h5t.C_S1.copy()
        tid.set_size(len(b) + 1)
        tid.set_strpad(h5py.h5t.STR_NULLTERM)
        aid = h5py.h5a.create(grp.id, name.encode(), tid, h5py.h5s.create(h5py.h5s.SCALAR))
        aid.write(np.array(b, dtype=f"S{len(b) + 1}"))
    else:
        a = np.asarray(value)
        if a.ndim != 1 or a.dtype.kind not in "biuf":
            raise TypeError(f"header item {name!r}: cannot store {type(value).__name__} {a.shape} "
                            "in an EMAN2 header (use a number, str, or 1-D list of numbers)")
        grp.attrs[name] = a.astype(np.float32 if a.dtype.kind == "f" else np.int32)


def _read_eman_attr(v):
    """Inverse of _write_eman_attr; EMAN2 Transform attributes come back as a 3x4 float array."""
    if isinstance(v, np.int8):
        return bool(v == ord("T"))
    if isinstance(v, np.void) and v.dtype.names:
        return np.array(v.tolist(), dtype=float).reshape(3, 4)
    if isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "iuf":
        return v.tolist()
    return _plain(v)


def write_image_stack(path, images, headers: list[dict] | None = None, pixel_size: float | None = None) -> None:
    """Write images ``(n, ny, nx)`` (float32) as an EMAN2-layout HDF5 file, atomically.

    Image i goes to dataset ``/MDF/images/<i>/image`` (float32, ``(ny, nx)``); ``headers[i]``'s
    items become attributes ``EMAN.<key>`` on group ``/MDF/images/<i>`` (lists -> 1-D arrays).
    As EMAN2 does, every image also gets ``EMAN.nx/ny/nz`` (int32, needed by EMAN2 to read it),
    ``EMAN.is_complex=0``, ``is_complex_x=0``, ``is_complex_ri=1``, and, with `pixel_size`,
    ``EMAN.apix_x/apix_y/apix_z``; ``/MDF/images`` has int32 ``imageid_max = n - 1``.
    """
    data = _as_stack(images)
    n, ny, nx = data.shape
    if headers is not None and len(headers) != n:
        raise ValueError(f"{len(headers)} headers for {n} images")
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        grp = f.create_group("MDF/images")
        grp.attrs["imageid_max"] = np.int32(n - 1)
        for i in range(n):
            g = grp.create_group(str(i))
            g.create_dataset("image", data=data[i])
            attrs = dict(is_complex=0, is_complex_x=0, is_complex_ri=1)
            if pixel_size is not None:
                attrs.update(apix_x=float(pixel_size), apix_y=float(pixel_size), apix_z=float(pixel_size))
            attrs.update(headers[i] if headers is not None else {})
            attrs.update(nx=nx, ny=ny, nz=1)
            for key, value in attrs.items():
                _write_eman_attr(g, f"EMAN.{key}", value)


def user_header(header: dict) -> dict:
    """A header without the fields that describe the image itself (nx/ny/nz, is_complex*), to copy onto another image."""
    return {k: v for k, v in header.items() if k not in ("nx", "ny", "nz") and not k.startswith("is_complex")}


def read_image_headers(path) -> list[dict]:
    """Per-image header dicts of an EMAN2-layout HDF5 stack (``EMAN.`` prefix stripped; numbers as
    Python scalars, 1-D arrays as lists, strings as str; includes nx/ny/nz etc.)."""
    path = Path(path)
    _check_file(path, "image stack")
    with h5py.File(path, "r") as f:
        imgs = f["MDF/images"]
        out = []
        for i in sorted((k for k in imgs.keys() if k.isdigit()), key=int):
            attrs = imgs[i].attrs
            out.append({k[5:]: _read_eman_attr(attrs[k]) for k in attrs if k.startswith("EMAN.")})
    return out


def read_image_stack(path) -> np.ndarray:
    """The whole (small) stack of any format :func:`open_stack` reads, float32 ``(n, ny, nx)``.

    EMAN2 HDF stacks written by r2d may hold non-square images (footprint bases); they are
    read directly here without the particle-stack checks.
    """
    path = Path(path)
    if path.suffix.lower() in HDF_EXTENSIONS:
        _check_file(path, "image stack")
        try:
            with h5py.File(path, "r") as fh:
                imgs = fh["MDF/images"]
                keys = sorted((k for k in imgs.keys() if k.isdigit()), key=int)
                return np.stack([np.asarray(imgs[k]["image"], dtype=np.float32) for k in keys])
        except (OSError, KeyError) as exc:
            raise InputError(f"{path}: not an EMAN2 HDF image stack ({exc}); give an r2d/EMAN2 .hdf stack") from None
    return open_stack(path).read(slice(None))


def write_mrcs(path, images, pixel_size: float | None = None) -> None:
    """Write images ``(n, ny, nx)`` as an MRC image stack (mode 2 float32, ispg 0), atomically;
    `pixel_size` (Å) sets the voxel size (else 0)."""
    data = _as_stack(images)
    with atomic_write(path) as tmp:
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
    with atomic_write(path) as tmp:
        with mrcfile.new_mmap(tmp, shape=tuple(int(v) for v in shape), mrc_mode=2, overwrite=True) as mrc:
            mrc.set_image_stack()
            if pixel_size is not None:
                mrc.voxel_size = float(pixel_size)
            yield mrc.data
            _header_stats(mrc)


def _header_stats(mrc, block: int = 1024) -> None:
    """min, max, mean and rms of an MRC file's data in the header, read ``block`` images at a
    time (mrcfile's own update would make full-size temporaries)."""
    d = mrc.data
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


# ----------------------------------------------------------------------------- matrix files
def write_matrix(path, datasets: dict[str, np.ndarray], attrs: dict | None = None) -> None:
    """Write an HDF5 file with one dataset per key of `datasets` (str arrays stored as UTF-8) and
    `attrs` as attributes of the root group, atomically."""
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        for name, value in datasets.items():
            a = np.asarray(value)
            f.create_dataset(name, data=np.char.encode(a, "utf-8") if a.dtype.kind == "U" else a)
        for key, value in (attrs or {}).items():
            try:
                f.attrs[key] = value
            except (TypeError, ValueError) as exc:
                raise TypeError(f"attribute {key!r}: cannot store {value!r} in HDF5 ({exc})") from None


def _open_h5(path) -> h5py.File:
    path = Path(path)
    _check_file(path, "HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: cannot open as HDF5 ({exc}); is it an r2d matrix file?") from None


def read_matrix(path) -> dict[str, np.ndarray]:
    """All datasets of an HDF5 file (nested ones named ``group/name``) as numpy arrays."""
    out = {}
    with _open_h5(path) as f:
        f.visititems(lambda name, obj: out.__setitem__(name, np.asarray(_plain(obj[()])))
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def read_matrix_attrs(path) -> dict:
    """The root-group attributes of an HDF5 file (str, Python scalars, or numpy arrays)."""
    with _open_h5(path) as f:
        return {k: _plain(v) for k, v in f.attrs.items()}


def read_map(path: str, apix: float | None) -> tuple[np.ndarray, float]:
    """Read a cubic MRC map read-only; return ``(volume float32 (m, m, m), pixel size in Å)``.

    ``apix`` (Å) is required when the header has no voxel size and must match it otherwise
    (r2d does not resample); ``None`` takes the header's.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: map not found (working directory {Path.cwd()}); check the path")
    try:
        with mrcfile.open(p, mode="r", permissive=True) as mrc:
            if mrc.data is None:
                raise InputError(f"{p}: not a readable MRC map (bad header); check the file")
            vol = np.asarray(mrc.data, dtype=np.float32).copy()
            header_apix = float(mrc.voxel_size.x)
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: cannot read as MRC ({exc})") from None
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"{p}: map must be a cubic 3-D volume, got shape {vol.shape}; "
                         "pad or resample it to a cube")
    if not np.isfinite(vol).all():
        raise InputError(f"{p}: map contains NaN or infinite values")
    if header_apix > 0:
        if apix is not None and abs(apix - header_apix) > 1e-3 * header_apix:
            raise ConfigError(f"the pixel size given ({apix:g} Å) differs from the voxel size "
                              f"{header_apix:g} Å in the header of {p}; r2d does not resample: "
                              "give no pixel size or resample the map")
        return vol, header_apix
    if apix is None:
        raise ConfigError(f"{p}: the header has no voxel size; give the pixel size")
    log.warning("%s: header has no voxel size; using the pixel size given, %g Å", p, apix)
    return vol, float(apix)
