"""RELION STAR particle files (3.0: one data block; 3.1+/5: ``data_optics`` + ``data_particles``).

:func:`read_star_metadata` returns the particle table with the optics columns merged in by
``rlnOpticsGroup`` (particle columns win). ``rlnImageName`` is ``N@stack.mrcs`` with ``N``
counting from 1 (a bare file name means its image 1); stacks are found relative to the STAR
file's folder, then the working directory. Pixel size from ``rlnImagePixelSize`` (or
``rlnDetectorPixelSize``/``rlnMagnification``, else the first stack's header); CTF from
``rlnDefocusU/V/Angle``, ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``,
``rlnPhaseShift`` and the ``rlnCtfDataArePhaseFlipped``/``rlnCtfDataAreCtfPremultiplied`` flags.
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
