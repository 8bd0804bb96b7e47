"""Merge the chunks of a scattered step into its named artifact (the gather step).

- Matrix chunks (``.h5``) of particle ranges (``simmx``, ``mra``, ``input_proj``): every
  dataset is concatenated along its first axis in the order the chunks are given.
- Result tables of class-averaging chunks (``.h5`` with ``artifact = resultmx``; every chunk
  has all rows, class −1 where another chunk owns the row): each row is taken from the chunk
  that averaged its class (rows in no class from the first chunk).
- Class-average stacks (``.hdf``) of class chunks: all images with their headers, ordered by
  ``class_id``.

Attributes are taken from the first chunk (``chunk`` is dropped). The result is what one job
over all particles or classes writes.

  $ r2d gather -o r2d_01/simmx_01.h5 chunk_1-of-4.h5 chunk_2-of-4.h5 ...
  $ r2d gather -o r2d_01/classes_01.hdf classes_01/1-of-4.hdf classes_01/2-of-4.hdf ...
"""

from __future__ import annotations

import numpy as np

from r2d import io


def add_args(p):
    p.add_argument("chunks", nargs="+", help="chunk files, in chunk order")
    p.add_argument("-o", "--output", required=True, help="merged artifact (.h5 matrix or .hdf class averages)")


def gather_matrix(chunks: list[str]) -> tuple[dict, dict]:
    """Merged columns and attributes of matrix chunks (row ranges, or class-averaging result tables)."""
    parts = [io.read_matrix(c) for c in chunks]
    attrs = {k: v for k, v in io.read_matrix_attrs(chunks[0]).items() if k != "chunk"}
    if attrs.get("artifact") == "resultmx":
        merged = {k: np.array(v) for k, v in parts[0].items()}
        for p in parts[1:]:
            own = p["class"] >= 0
            for k in merged:
                merged[k][own] = p[k][own]
        return merged, attrs
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}, attrs


def gather_classes(chunks: list[str]) -> tuple[np.ndarray, list[dict], float | None]:
    """Images ``(K, n, n)``, headers and pixel size of class-average chunks, ordered by class_id."""
    images, headers = [], []
    for c in chunks:
        h = io.read_image_headers(c)
        if h:
            images.append(io.read_image_stack(c))
            headers += h
    if not headers:
        raise ValueError(f"no class averages in {', '.join(chunks)}")
    apix = headers[0].get("apix_x")
    order = np.argsort([h["class_id"] for h in headers], kind="stable")
    images = np.concatenate(images)[order]
    headers = [io.user_header(headers[i]) for i in order]
    return images, headers, apix


def main(args):
    if args.output.lower().endswith(".hdf"):
        images, headers, apix = gather_classes(args.chunks)
        io.write_image_stack(args.output, images, headers, pixel_size=apix)
    else:
        merged, attrs = gather_matrix(args.chunks)
        io.write_matrix(args.output, merged, attrs)
