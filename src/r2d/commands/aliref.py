"""Select and chain-align the alignment references (steps 4–6, artifact ``aliref_YY``).

From ``allrefs_YY``: rank by ``eval_contrast_lowres``, take the first
``ncheck = max(ncls//3, naliref+2)``, greedily choose ``naliref`` mutually dissimilar
ones (ccc), and order/align them as a nearest-neighbour chain.

  $ r2d aliref r2d_01/allrefs_01.hdf -o r2d_01/aliref_01.hdf --naliref 5 --ncls 32
"""

from __future__ import annotations

import numpy as np

from r2d import io, refs
from r2d.commands._common import add_threads


def add_args(p):
    p.add_argument("input", help="allrefs_YY.hdf")
    p.add_argument("-o", "--output", required=True, help="aliref_YY.hdf")
    p.add_argument("--naliref", type=int, default=5, help="number of alignment references")
    p.add_argument("--ncls", type=int, default=32, help="requested number of classes (sets ncheck)")
    add_threads(p)


def main(args):
    imgs = io.read_image_stack(args.input)
    heads = io.read_image_headers(args.input)
    contrast = np.array([h.get("eval_contrast_lowres", 0.0) for h in heads])
    repr_ = np.array([h.get("ptcl_repr", 1) for h in heads])
    ali, idx = refs.select_alirefs(imgs, contrast, repr_, naliref=args.naliref, ncls=args.ncls,
                                   workers=args.threads)
    out_heads = []
    for i in idx:
        h = io.user_header(heads[i])
        h["allrefs_index"] = int(i)
        out_heads.append(h)
    io.write_image_stack(args.output, ali, out_heads, pixel_size=io.open_stack(args.input).pixel_size)
