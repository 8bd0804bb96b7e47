"""Preprocess and mutually align the current class averages (steps 1–2, artifact ``allrefs_YY``).

Each average gets ``eval_contrast_lowres`` computed on the unfiltered image, then a 2-px
Gaussian high-pass and ``normalize.circlemean:radius=-5``; all are then aligned into one
frame along nearest-neighbour chains (``e2stacksort --iterative``) and written in the new
order. Headers keep the class-average fields and add ``eval_contrast_lowres``,
``source_index`` (position in the input stack).

  $ r2d allrefs r2d_01/classes_init.hdf -o r2d_01/allrefs_01.hdf
"""

from __future__ import annotations

from r2d import io, refs
from r2d.commands._common import add_threads


def add_args(p):
    p.add_argument("input", help="class averages (classes_init.hdf, classes_YY.hdf or --initial)")
    p.add_argument("-o", "--output", required=True, help="allrefs_YY.hdf")
    p.add_argument("--apix", type=float, default=None, help="pixel size (Å) if the stack has none")
    add_threads(p)


def main(args):
    stack = io.open_stack(args.input)
    imgs = stack.read(slice(None))
    heads = io.read_image_headers(args.input) if str(args.input).endswith((".hdf", ".h5")) else [{} for _ in imgs]
    apix = stack.pixel_size or args.apix
    contrast = refs.contrast_lowres(imgs, apix)
    pre = refs.preprocess(imgs)
    aligned, order = refs.mutual_align(pre, apix=apix, workers=args.threads)
    out_heads = []
    for i in order:
        h = io.user_header(heads[i])
        h.update(eval_contrast_lowres=float(contrast[i]), source_index=int(i))
        h.setdefault("ptcl_repr", 1)
        out_heads.append(h)
    io.write_image_stack(args.output, aligned, out_heads, pixel_size=apix)
