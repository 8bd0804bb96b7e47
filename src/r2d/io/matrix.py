"""r2d matrix files: HDF5 with one dataset per name and attributes on the root group.

:func:`write_matrix` writes them atomically (str arrays as UTF-8); :func:`read_matrix` returns
every dataset (nested ones named ``group/name``) and :func:`read_matrix_attrs` the root
attributes, with bytes decoded to str and numpy scalars as Python scalars (:func:`_plain`).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from r2d.errors import InputError
from r2d.io import atomic
from r2d.io.files import _check_file


def _plain(v):
    """An HDF5 attribute/dataset value as Python: bytes -> str, numpy scalars -> Python scalars."""
    if isinstance(v, bytes):
        return v.rstrip(b"\0").decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.dtype.kind in "SO":
        return np.array([_plain(x) for x in v.ravel()], dtype=object).reshape(v.shape).astype(str)
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_matrix(path, datasets: dict[str, np.ndarray], attrs: dict | None = None) -> None:
    """Write an HDF5 file with one dataset per key of `datasets` (str arrays stored as UTF-8) and
    `attrs` as attributes of the root group, atomically. Both are written in name order, so
    the file's bytes depend only on the names and values (a gathered artifact and the same
    one written by a single job are identical)."""
    with atomic.atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        for name, value in sorted(datasets.items()):
            a = np.asarray(value)
            f.create_dataset(name, data=np.char.encode(a, "utf-8") if a.dtype.kind == "U" else a)
        for key, value in sorted((attrs or {}).items()):
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
