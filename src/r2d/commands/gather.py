"""Concatenate the row chunks of a matrix artifact (the gather step of scattered jobs).

Every dataset is concatenated along its first axis in the order the chunks are given;
attributes are taken from the first chunk (``chunk`` is dropped).

  $ r2d gather -o r2d_01/simmx_01.h5 chunk_1-of-4.h5 chunk_2-of-4.h5 ...
"""

from __future__ import annotations

import numpy as np

from r2d import io


def add_args(p):
    p.add_argument("chunks", nargs="+", help="chunk files, in particle order")
    p.add_argument("-o", "--output", required=True, help="merged matrix file (.h5)")


def main(args):
    parts = [io.read_matrix(c) for c in args.chunks]
    merged = {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}
    attrs = {k: v for k, v in io.read_matrix_attrs(args.chunks[0]).items() if k != "chunk"}
    io.write_matrix(args.output, merged, attrs)
