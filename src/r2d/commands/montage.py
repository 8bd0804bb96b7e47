"""Montage PNG of class averages (sorted by particle count), or a JSON summary of a run.

  $ r2d montage r2d_01/classes_08.hdf -o classes_08.png
  $ r2d montage --summary r2d_01 -o r2d_01/report/summary.json
"""

from __future__ import annotations

import json

from r2d import io
from r2d.montage import class_montage, run_summary


def add_args(p):
    p.add_argument("input", nargs="?", help="class-average stack (.hdf)")
    p.add_argument("-o", "--output", required=True, help="PNG (montage) or JSON (--summary)")
    p.add_argument("--title", default="", help="title above the montage")
    p.add_argument("--summary", metavar="RUN_DIR", help="write the per-iteration summary of RUN_DIR instead")


def main(args):
    if args.summary:
        data = run_summary(args.summary)
        with io.atomic_write(args.output) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")
        return 0
    class_montage(args.input, args.output, title=args.title)
