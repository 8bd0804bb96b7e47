"""cryoSPARC ``.cs`` particle files (a numpy structured array saved with ``np.save``).

:func:`read_cs_metadata` returns one column per field (vector fields split into ``<field>/0``,
``<field>/1``, ...; byte strings decoded). Images come from ``blob/path`` (a leading ``>``
means project-relative; looked up relative to the file's folder and its parents, then the
working directory) and ``blob/idx`` (0-based); pixel size from ``blob/psize_A``; CTF from
``ctf/df1_A``, ``ctf/df2_A``, ``ctf/df_angle_rad``, ``ctf/accel_kv``, ``ctf/cs_mm``,
``ctf/amp_contrast``, ``ctf/phase_shift_rad`` (angles converted to degrees).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from r2d.errors import InputError
from r2d.io.files import _check_file
from r2d.io.images import Stack, _open_referenced, _single_pixel_size

if TYPE_CHECKING:
    import pandas


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
