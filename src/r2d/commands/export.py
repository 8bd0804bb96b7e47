"""Export a finished run for RELION, cryoSPARC and EMAN2 (particles.star, class averages, .cs).

Writes into OUTDIR (default RUN_DIR/export): ``particles.star`` (RELION 3.1: optics block,
every input particle once with ``rlnClassNumber`` (1-based; 0 = not classified),
``rlnAnglePsi``, ``rlnOriginXAngst``/``rlnOriginYAngst``, and r2d's ``r2dExcluded``,
``r2dMirror``, ``r2dScore``), ``class_averages.mrcs`` + ``class_averages.star`` (image k =
class k), ``class_averages.hdf`` (EMAN2, particle counts in the headers) and, for a cryoSPARC
input, ``particles.cs``. See ``r2d.export`` for the pose conversion and every column.

  $ r2d export r2d_01 --input particles.star
  $ r2d export r2d_01 --input particles.star -o /data/relion_project/r2d --paths absolute
"""

from __future__ import annotations

from pathlib import Path

from r2d.export import PATH_MODES, export_run


def add_args(p):
    p.add_argument("run_dir", help="run folder (the workflow's `path`)")
    p.add_argument("-i", "--input", required=True, help="the particle stack the run classified (config `input`)")
    p.add_argument("-o", "--output", help="output folder (default RUN_DIR/export)")
    p.add_argument("--iteration", help="iteration to export (default: the last finished one; 'init' for classes_init, "
                        "'final' for the full-size classes_final of a run with a working stack)")
    p.add_argument("--apix", type=float, help="pixel size in Å when the input has none")
    p.add_argument("--paths", choices=PATH_MODES, default="relative",
                   help="image names in the STAR file: relative to the output folder (default), absolute, "
                        "or as in the input STAR file (keep)")


    p.add_argument("--stability", help="stability table of the run's classes (r2d stability): adds r2dStability")


def main(args):
    out = Path(args.output) if args.output else Path(args.run_dir) / "export"
    written = export_run(args.run_dir, args.input, out, iteration=args.iteration, apix=args.apix,
                         paths=args.paths, stability=args.stability)
    for kind, path in written.items():
        print(f"{kind:22s} {path}")
    return 0
