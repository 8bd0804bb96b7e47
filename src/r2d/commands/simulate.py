"""Simulate noisy particle images of a map (or the phantom) with known ground truth.

Writes to OUTDIR:

* ``particles.mrcs``: the images, MRC stack (float32, voxel size = pixel size);
* ``particles.star``: RELION 3.1 STAR (``data_optics`` + ``data_particles``): ``rlnImageName``
  (``000001@particles.mrcs``, 1-based), ``rlnOpticsGroup``, ``rlnDefocusU/V/Angle`` (with a CTF);
  optics: ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``,
  ``rlnImagePixelSize``, ``rlnImageSize``, ``rlnImageDimensionality``,
  ``rlnCtfDataArePhaseFlipped`` (1 with ``--ctf flip``) and ``rlnCtfDataAreCtfPremultiplied``
  (always 0: in RELION that flag means "multiplied by the CTF", which phase flipping is not).
  The true angles and shifts are *not* in the STAR file, so a classifier cannot see them;
* ``truth.tsv``: one row per particle, tab-separated, columns ``index rot tilt psi view_x
  view_y view_z shift_x shift_y defocus_u defocus_v defocus_angle junk junk_kind`` (see
  ``r2d.simulate``: RELION Euler angles in degrees, unit viewing direction in the map frame,
  shift in px of the particle centre from the box centre, defocus in Å, junk flag, and what
  the image is: ``particle`` or a junk kind);
* ``clean.mrcs``: the noise-free images (with ``--write-clean``).

Example::

    r2d simulate --map ribosome.mrc --apix 5 --n 2000 --box 64 --snr 0.1 --shift 3 \\
        --ctf flip --defocus 10000 30000 --seed 1 -o sim

Data as users meet it (raw CTF with astigmatism, SNR in the particle's disc, an envelope,
25 % junk of every kind)::

    r2d simulate --map ribosome.mrc --n 2000 --box 64 --snr 0.1 --snr-disc 0.4 --ctf full \
        --defocus 8000 25000 --bfactor 100 --junk 0.25 --junk-kinds all -o sim

At a real box and pixel size from a coarse map (``--apix`` finer than the map's ``--map-apix``:
the projections are Fourier-padded, no signal beyond the map's Nyquist; shifts, ``--snr-disc``,
CTF, envelope and junk at the target pixels; a coarser ``--apix`` Fourier-crops)::

    r2d simulate --map ribosome.mrc --map-apix 5 --apix 1.25 --box 256 --n 4000 --snr 0.01 \
        --snr-disc 0.4 --ctf full --defocus 8000 25000 --bfactor 100 --junk 0.05 -o sim
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from r2d.errors import ConfigError
from r2d.io import atomic_write, new_mrcs, read_map
from r2d.phantom import phantom_volume
from r2d.simulate import JUNK_KINDS, add_noise, draw_truth, render

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--map", metavar="MAP.mrc", help="cubic density map to project")
    src.add_argument("--phantom", action="store_true", help="project the built-in phantom instead")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    parser.add_argument("--n", type=int, default=2000, help="number of particles (default 2000)")
    parser.add_argument("--box", type=int, default=64, help="image box in px, even (default 64)")
    parser.add_argument("--apix", type=float, default=None,
                        help="pixel size of the images in Å (default: the map's; 5.0 for --phantom); "
                             "finer than the map's: the projections are Fourier-padded, coarser: "
                             "Fourier-cropped")
    parser.add_argument("--map-apix", type=float, default=None, metavar="APIX",
                        help="pixel size of the map in Å; must match the header's when it has one "
                             "(default: the header's, else --apix)")
    parser.add_argument("--snr", type=float, default=0.1,
                        help="signal variance / noise variance, over the box or with --snr-disc "
                             "inside the particle's disc (default 0.1)")
    parser.add_argument("--snr-disc", type=float, default=None, metavar="FRACTION",
                        help="measure the signal variance inside a centred disc of radius "
                             "FRACTION x box (e.g. 0.4) instead of over the whole box")
    parser.add_argument("--shift", type=float, default=0.0,
                        help="maximum shift in px, uniform in [-SHIFT, SHIFT] per axis (default 0)")
    parser.add_argument("--ctf", choices=("none", "flip", "full"), default="flip",
                        help="none, phase-flipped (|CTF|) or full CTF (default flip)")
    parser.add_argument("--defocus", type=float, nargs=2, default=(1e4, 3e4), metavar=("MIN", "MAX"),
                        help="mean defocus range in Å, underfocus positive (default 10000 30000)")
    parser.add_argument("--astigmatism", type=float, default=500.0,
                        help="maximum defocus U - V in Å (default 500)")
    parser.add_argument("--voltage", type=float, default=300.0, help="kV (default 300)")
    parser.add_argument("--cs", type=float, default=2.7, help="spherical aberration in mm (default 2.7)")
    parser.add_argument("--amp-contrast", type=float, default=0.1, help="amplitude contrast (default 0.1)")
    parser.add_argument("--bfactor", type=float, default=0.0,
                        help="envelope exp(-B s^2/4) in Å^2 on every image (default 0)")
    parser.add_argument("--junk", type=float, default=0.0, help="fraction of junk images (default 0)")
    parser.add_argument("--junk-kinds", default="noise,blobs", metavar="KINDS",
                        help=f"comma-separated kinds of junk, drawn uniformly: {', '.join(JUNK_KINDS)} "
                             "or 'all' (default noise,blobs)")
    parser.add_argument("--preferred", type=float, default=0.0, metavar="FRACTION",
                        help="preferred orientation: this fraction of the good particles views the map "
                             "within 10° of its z axis (default 0: uniform views)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--write-clean", action="store_true", help="also write clean.mrcs (no noise)")


def _check(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise ConfigError(f"--n {args.n}: need at least one particle")
    if args.box < 8 or args.box % 2:
        raise ConfigError(f"--box {args.box}: must be an even number of at least 8 px")
    if args.apix is not None and not args.apix > 0:
        raise ConfigError(f"--apix {args.apix}: must be a positive pixel size in Å")
    if args.map_apix is not None and not args.map_apix > 0:
        raise ConfigError(f"--map-apix {args.map_apix}: must be a positive pixel size in Å")
    if not args.snr > 0:
        raise ConfigError(f"--snr {args.snr}: must be > 0")
    if not 0 <= args.shift < args.box / 2:
        raise ConfigError(f"--shift {args.shift}: must be in [0, box/2)")
    lo, hi = args.defocus
    if not 0 < lo <= hi:
        raise ConfigError(f"--defocus {lo:g} {hi:g}: need 0 < MIN <= MAX (Å, underfocus positive)")
    if args.astigmatism < 0:
        raise ConfigError(f"--astigmatism {args.astigmatism}: must be >= 0")
    if not 0 <= args.amp_contrast < 1:
        raise ConfigError(f"--amp-contrast {args.amp_contrast}: must be in [0, 1)")
    if not args.voltage > 0 or args.cs < 0:
        raise ConfigError("--voltage must be > 0 and --cs >= 0")
    if not 0 <= args.junk <= 1:
        raise ConfigError(f"--junk {args.junk}: must be a fraction in [0, 1]")
    if not 0 <= args.preferred <= 1:
        raise ConfigError(f"--preferred {args.preferred}: must be a fraction in [0, 1]")
    bad = set(_junk_kinds(args)) - set(JUNK_KINDS)
    if bad or not _junk_kinds(args):
        raise ConfigError(f"--junk-kinds {args.junk_kinds}: choose from {', '.join(JUNK_KINDS)} or 'all'")
    if args.snr_disc is not None and not 0 < args.snr_disc <= 0.5:
        raise ConfigError(f"--snr-disc {args.snr_disc}: the disc radius must be in (0, 0.5] x box")
    if args.bfactor < 0:
        raise ConfigError(f"--bfactor {args.bfactor}: must be >= 0 (Å^2)")


def _volume(args: argparse.Namespace) -> tuple[np.ndarray, float, str]:
    """``(volume (m, m, m) float32, its pixel size in Å, source name)``: the map with the pixel
    size of ``--map-apix``, else its header's, else ``--apix``; or the phantom, built at
    ``--map-apix`` (default ``--apix``, 5.0)."""
    if args.phantom:
        apix = 5.0 if args.apix is None else float(args.apix)
        if args.map_apix is None or abs(args.map_apix - apix) <= 1e-3 * apix:
            size = max(args.box, 2 * int(np.ceil(160.0 / apix)))  # whole ~300 Å particle, even
            return phantom_volume(size, apix), apix, "phantom"
        map_apix = float(args.map_apix)
        return phantom_volume(2 * int(np.ceil(160.0 / map_apix)), map_apix), map_apix, "phantom"
    if args.map_apix is not None:
        vol, map_apix = read_map(args.map, args.map_apix)
        return vol, map_apix, args.map
    try:
        vol, map_apix = read_map(args.map, None)
    except ConfigError:  # the header has no voxel size: --apix is the map's (as before --map-apix)
        if args.apix is None:
            raise ConfigError(f"{args.map}: the header has no voxel size; give the pixel size of the "
                              "map with --map-apix (or --apix when the images have the same)") from None
        vol, map_apix = read_map(args.map, args.apix)
    return vol, map_apix, args.map


def _junk_kinds(args: argparse.Namespace) -> tuple[str, ...]:
    if args.junk_kinds.strip() == "all":
        return JUNK_KINDS
    return tuple(k.strip() for k in args.junk_kinds.split(",") if k.strip())


def star_tables(truth: pd.DataFrame, stack_name: str, box: int, apix: float, ctf: str | None,
                voltage: float, cs: float, amp_contrast: float) -> dict[str, pd.DataFrame]:
    """RELION 3.1 ``optics`` and ``particles`` tables for a simulated stack."""
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnOpticsGroup": [1],
        "rlnVoltage": [voltage],
        "rlnSphericalAberration": [cs],
        "rlnAmplitudeContrast": [amp_contrast],
        "rlnImagePixelSize": [apix],
        "rlnImageSize": [box],
        "rlnImageDimensionality": [2],
        "rlnCtfDataArePhaseFlipped": [int(ctf == "flip")],
        "rlnCtfDataAreCtfPremultiplied": [0],
    })
    n = len(truth)
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@{stack_name}" for i in range(n)],
        "rlnOpticsGroup": np.ones(n, dtype=int),
    })
    if ctf is not None:
        particles["rlnDefocusU"] = truth["defocus_u"].to_numpy()
        particles["rlnDefocusV"] = truth["defocus_v"].to_numpy()
        particles["rlnDefocusAngle"] = truth["defocus_angle"].to_numpy()
    return {"optics": optics, "particles": particles}


def main(args: argparse.Namespace) -> int:
    _check(args)
    vol, map_apix, source = _volume(args)
    apix = (5.0 if args.phantom else map_apix) if args.apix is None else float(args.apix)
    if abs(apix - map_apix) <= 1e-3 * map_apix:
        apix = map_apix  # the same pixel: projected as is (the map's value, as read_map allows)
    ctf = None if args.ctf == "none" else args.ctf
    t0 = time.perf_counter()
    # streamed into memory-mapped stacks: memory stays one batch of images, whatever --n
    truth = draw_truth(args.n, np.random.default_rng([args.seed, 0]), shift_max=args.shift, ctf=ctf,
                       defocus=tuple(args.defocus), astigmatism=args.astigmatism, junk_fraction=args.junk,
                       junk_kinds=_junk_kinds(args), preferred=args.preferred)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    shape = (args.n, args.box, args.box)
    with new_mrcs(out / "particles.mrcs", shape, apix) as images:
        render(vol, truth, args.box, apix, map_pixel_size=map_apix, ctf=ctf, voltage=args.voltage,
               cs=args.cs, amp_contrast=args.amp_contrast, bfactor=args.bfactor, seed=args.seed,
               out=images)
        if args.write_clean:
            step = max(1, (64 << 20) // (4 * args.box * args.box))  # about 64 MB at a time
            with new_mrcs(out / "clean.mrcs", shape, apix) as clean:
                for lo in range(0, args.n, step):
                    clean[lo:lo + step] = images[lo:lo + step]
        add_noise(images, truth, args.snr, args.seed,
                  radius=None if args.snr_disc is None else args.snr_disc * args.box)
    log.info("simulated %d images of %d px at %g Å/px from %s (%g Å/px) in %.1f s", args.n, args.box,
             apix, source, map_apix, time.perf_counter() - t0)
    tables = star_tables(truth, "particles.mrcs", args.box, apix, ctf, args.voltage, args.cs,
                         args.amp_contrast)
    with atomic_write(out / "particles.star") as tmp:
        starfile.write(tables, tmp, float_format="%.6f")
    with atomic_write(out / "truth.tsv") as tmp:
        truth.to_csv(tmp, sep="\t", index=False)
    log.info("wrote %s/particles.mrcs, particles.star, truth.tsv%s", out,
             ", clean.mrcs" if args.write_clean else "")
    return 0
