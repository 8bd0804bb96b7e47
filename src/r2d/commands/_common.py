"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import numpy as np

from r2d import io
from r2d.errors import InputError


def add_threads(p):
    p.add_argument("--threads", type=int, default=1, help="worker threads for FFTs (default %(default)s)")


def add_seed(p):
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")


def add_exclude(p):
    p.add_argument("--exclude", default=None,
                   help="file of particle indices (0-based, one integer per line) to leave out")


def read_exclude(path, n: int | None = None) -> np.ndarray:
    """Particle indices listed in an ``exclude`` file (whitespace-separated integers, ``#`` comments)."""
    if not path:
        return np.zeros(0, dtype=np.int64)
    vals = []
    try:
        with open(path) as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.split("#", 1)[0].strip()
                for tok in line.split():
                    try:
                        vals.append(int(tok))
                    except ValueError:
                        raise InputError(f"{path}, line {lineno}: '{tok}' is not an integer particle index; "
                                         f"the exclude file must hold 0-based particle numbers") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the exclude file ({exc.strerror})") from None
    idx = np.unique(np.asarray(vals, dtype=np.int64))
    bad = idx[(idx < 0) | (idx >= (n if n is not None else np.iinfo(np.int64).max))]
    if len(bad):
        raise InputError(f"{path}: particle index {bad[0]} is out of range; the input has {n} particles "
                         f"(valid 0..{n - 1})")
    return idx


def read_particles(stack: io.Stack, index=None, *, chunk: int = 4096) -> np.ndarray:
    """Read particles (all, or ``index``) from a stack in chunks (float32 ``(k, n, n)``)."""
    idx = np.arange(len(stack)) if index is None else np.asarray(index)
    out = np.empty((len(idx), stack.box, stack.box), dtype=np.float32)
    for lo in range(0, len(idx), chunk):
        out[lo:lo + chunk] = stack.read(idx[lo:lo + chunk])
    return out


def stack_weight(stack: io.Stack, *, workers: int = 1) -> np.ndarray:
    """Matched-filter weight of a stack from a fixed sample (same for every chunk of a run)."""
    from r2d.transforms import sample_indices, spectral_snr_weight

    return spectral_snr_weight(stack.read(sample_indices(len(stack))), workers=workers)
