"""Write the synthetic asymmetric ribosome-like phantom as an MRC volume.

The phantom (``r2d.phantom``) is a deterministic sum of Gaussians about 250 Å across, with no
symmetry; ``--seed`` varies a few small surface bumps. Example::

    r2d phantom -o phantom.mrc --box 64 --apix 5
"""

from __future__ import annotations

import argparse
import logging

import mrcfile

from r2d.errors import ConfigError
from r2d.io import atomic_write
from r2d.phantom import phantom_volume

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, metavar="MAP.mrc", help="output MRC file")
    parser.add_argument("--box", type=int, default=64, help="box size in voxels (default 64)")
    parser.add_argument("--apix", type=float, default=5.0, help="voxel size in Å (default 5.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the surface bumps (default 0)")


def write_volume(path, volume, pixel_size: float) -> None:
    """Write a ``(m, m, m)`` float32 volume as an MRC map with voxel size ``pixel_size``, atomically."""
    with atomic_write(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(volume)
            mrc.voxel_size = float(pixel_size)


def main(args: argparse.Namespace) -> int:
    if args.box < 8:
        raise ConfigError(f"--box {args.box}: must be at least 8 voxels")
    if not args.apix > 0:
        raise ConfigError(f"--apix {args.apix}: must be a positive pixel size in Å")
    if args.box * args.apix < 300:
        log.warning("box %d x %.3g Å = %.0f Å is smaller than the ~300 Å the phantom needs; "
                    "it will be cut at the edges", args.box, args.apix, args.box * args.apix)
    vol = phantom_volume(args.box, args.apix, args.seed)
    write_volume(args.output, vol, args.apix)
    log.info("wrote %s (%d^3 voxels, %.3g Å/voxel)", args.output, args.box, args.apix)
    return 0
