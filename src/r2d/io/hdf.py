"""EMAN2-layout HDF5 image stacks (class averages, references, footprints, ...).

Image ``i`` is dataset ``/MDF/images/<i>/image`` (float32 ``(ny, nx)``); its header items are
attributes ``EMAN.<key>`` of group ``/MDF/images/<i>``, stored the way EMAN2's HdfIO2 does (bool
as 1-byte 'T'/'F', int32, float64, null-terminated strings, 1-D int32/float32 arrays), so EMAN2
reads them; ``/MDF/images`` has ``imageid_max = n - 1``. :func:`write_image_stack` writes
atomically; :func:`read_image_headers` and :func:`read_image_stack` read them back
(:func:`read_image_stack` also reads any other format :func:`r2d.io.open_stack` opens).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from r2d.errors import InputError
from r2d.io import atomic
from r2d.io.files import _check_file
from r2d.io.images import HDF_EXTENSIONS, _as_stack
from r2d.io.matrix import _plain
from r2d.io.stacks import open_stack


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
    with atomic.atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
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
            for key, value in sorted(attrs.items()):  # name order: the bytes depend on the values only
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
