"""Work partitioning: how many images a step holds at once, and which particles a chunk gets.

:func:`image_block` sizes blocks by memory (64 MiB of images); :func:`chunk_index` and
:func:`chunk_range` parse Snakemake scattergather chunk names ``"i-of-k"`` (1-based) and give
chunk ``i``'s half-open particle range, the ``k`` ranges covering ``[0, n)`` exactly.
"""

from __future__ import annotations

import re

from r2d.errors import InputError


def image_block(n: int) -> int:
    """Particles a step holds at once: 64 MiB of ``n × n`` float32 images, between 256 and 4096
    (64 px: 4096, 96 px: 1820, 128 px: 1024), so a job's memory depends on the box, not on the
    number of particles (simmx, input_proj, class averaging)."""
    return int(min(4096, max(256, 2**26 // (4 * n * n))))


def chunk_index(spec: str) -> tuple[int, int]:
    """``(i, k)`` of a chunk spec ``"i-of-k"`` (1 <= i <= k), as Snakemake's scattergather names them."""
    m = re.fullmatch(r"\s*(\d+)-of-(\d+)\s*", str(spec))
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise InputError(f"chunk {spec!r} is not of the form I-of-K with 1 <= I <= K (e.g. 3-of-8)")
    return int(m[1]), int(m[2])


def chunk_range(spec: str, n: int) -> tuple[int, int]:
    """Half-open particle range ``[(i-1)*n//k, i*n//k)`` of chunk spec ``"i-of-k"`` (1 <= i <= k).
    The k chunks cover ``[0, n)`` exactly, without overlap."""
    i, k = chunk_index(spec)
    if n < 0:
        raise ValueError(f"number of particles must be >= 0, got {n}")
    return (i - 1) * n // k, i * n // k
