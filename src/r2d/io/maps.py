"""Reading 3-D density maps (MRC) for simulation and evaluation.

:func:`read_map` returns a cubic float32 volume and its pixel size in Å: the header's voxel
size, which a pixel size given by the caller must match (r2d does not resample); a pixel size
must be given when the header has none.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mrcfile
import numpy as np

from r2d.errors import ConfigError, InputError

log = logging.getLogger(__name__)


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
