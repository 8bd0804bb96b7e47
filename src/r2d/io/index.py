"""The r2d particle index: where every particle of a stack is, and its CTF, as an HDF5 matrix file.

Datasets ``files`` (absolute image file paths), ``file_of``, ``index_in_file`` (int64, 0-based)
and ``ctf/<name>``; root attributes ``r2d_particle_index`` (:data:`INDEX_MARK`, format version
1), ``source`` and ``pixel_size`` (NaN when unknown). The workflow writes one (rule
``particles``) so that its jobs need not parse the STAR/CS table again; :func:`r2d.io.open_stack`
recognises it by the mark and gives the same images, CTF and pixel size as the input.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from r2d.errors import InputError
from r2d.io.images import Stack, _open_image_file
from r2d.io.matrix import read_matrix, read_matrix_attrs, write_matrix


#: root attribute that marks an r2d particle index (:func:`write_particle_index`)
INDEX_MARK = "r2d_particle_index"


def write_particle_index(stack: Stack, path, attrs: dict | None = None) -> None:
    """Write where every particle of ``stack`` is and its CTF, atomically, as HDF5:
    ``files`` (absolute paths of the image files), ``file_of``, ``index_in_file`` (N,) int64
    (particle ``i`` is image ``index_in_file[i]``, 0-based, of ``files[file_of[i]]``) and
    ``ctf/<name>`` (N,) (:meth:`Stack.ctf_params`; absent without CTF); root attributes
    ``r2d_particle_index`` (format version 1), ``source`` (the input's path), ``pixel_size``
    (Å/px, NaN when unknown), and ``attrs`` (more root attributes, e.g. the working stack's
    ``input_box``, ``input_pixel_size``, ``maxres``).

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
                              "pixel_size": np.nan if stack.pixel_size is None else stack.pixel_size,
                              **(attrs or {})})


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
