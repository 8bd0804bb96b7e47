"""Montage PNG of class averages (sorted by particle count), or a run's summary and plots.

A montage shows every average contrast-normalised on its own, largest class first, with its
class number (1-based, as in the RELION export), particle count and, when the averages carry a
``resolution`` header, the resolution in Å under it. ``--summary RUN_DIR`` writes the
per-iteration numbers as JSON (see ``r2d.montage.run_summary``) and, on request, the
convergence plot (particles that changed class and mean score per iteration) and the
class-size plot of the last iteration.

``--stability`` (the run's ``stability.h5``) adds each class's stability to its label;
``--table`` also writes a self-contained HTML page of the classes (picture, particles,
resolution, stability) that sorts by any column.

  $ r2d montage r2d_01/classes_08.hdf -o classes_08.png --title "iteration 08"
  $ r2d montage r2d_01/classes_08.hdf -o final.png --stability r2d_01/stability.h5 --table classes.html
  $ r2d montage --summary r2d_01 -o r2d_01/report/summary.json \\
        --convergence r2d_01/report/convergence.png --class-sizes r2d_01/report/class_sizes.png
"""

from __future__ import annotations

import json

from r2d import io
from r2d.errors import UserError
from r2d.montage import (class_montage, class_size_plot, class_stats, class_table_html, convergence_plot,
                         read_class_stability, run_summary)


def add_args(p):
    p.add_argument("input", nargs="?", help="class-average stack (.hdf)")
    p.add_argument("-o", "--output", required=True, help="PNG (montage) or JSON (--summary)")
    p.add_argument("--title", default="", help="title above the montage")
    p.add_argument("--stability", metavar="H5", help="class stability table (r2d stability) to show per class")
    p.add_argument("--table", metavar="HTML", help="also write an HTML table of the classes, sortable by column")
    p.add_argument("--summary", metavar="RUN_DIR", help="write the per-iteration summary of RUN_DIR instead")
    p.add_argument("--convergence", metavar="PNG", help="with --summary: also write the convergence plot")
    p.add_argument("--class-sizes", metavar="PNG", help="with --summary: also write the class-size plot")


def main(args):
    if args.summary:
        data = run_summary(args.summary)
        if not data["iterations"]:
            raise UserError(f"{args.summary}: no classmx_YY.h5 files; is it an r2d run folder?")
        with io.atomic_write(args.output) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")
        if args.convergence:
            convergence_plot(data, args.convergence)
        if args.class_sizes:
            class_size_plot(data, args.class_sizes)
        return 0
    if not args.input:
        raise UserError("give a class-average stack, or --summary RUN_DIR")
    stability = None
    if args.stability:
        ids = class_stats(io.read_image_headers(args.input))["class_id"]
        stability = read_class_stability(args.stability, int(ids.max(initial=-1)) + 1)
    class_montage(args.input, args.output, title=args.title, stability=stability)
    if args.table:
        class_table_html(args.input, args.table, title=args.title, stability=stability)
    return 0
