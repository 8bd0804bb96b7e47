"""Opening a particle stack of any supported format: :func:`open_stack`, chosen by extension.

``.mrc``/``.mrcs``/``.st`` (MRC), ``.hdf``/``.h5`` (EMAN2 HDF, or an r2d particle index,
:mod:`r2d.io.index`), ``.star`` (RELION, :mod:`r2d.io.star`), ``.cs`` (cryoSPARC,
:mod:`r2d.io.cryosparc`). The result is a lazy :class:`~r2d.io.images.Stack`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from r2d.errors import InputError
from r2d.io.cryosparc import _open_cs
from r2d.io.images import HDF_EXTENSIONS, MRC_EXTENSIONS, Stack, _open_image_file
from r2d.io.index import _is_particle_index, _open_particle_index
from r2d.io.star import _open_star

log = logging.getLogger(__name__)


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
