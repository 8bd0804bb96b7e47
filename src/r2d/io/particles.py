"""Reading particles for a step, with the data checks; ``exclude`` lists; the matched-filter weight.

:func:`read_particles` reads particles (all, or given input indices, 0-based) block by block as
float32 ``(k, n, n)``; a particle with a NaN/Inf pixel or zero variance
(:func:`r2d.io.image_problems`) is logged by input index and returned as an all-zero image, so
nothing non-finite reaches the arithmetic. :func:`read_good_particles` leaves those out instead
and returns the kept and left-out indices; :func:`bad_mask` finds them again in an array;
:class:`ParticleRows` reads rows of a large stack on demand. The bad set depends only on each
particle's pixels, so it is the same in every step and every chunk. :func:`read_exclude` reads an
``exclude`` file (0-based particle indices, whitespace- or comma-separated, ``#`` comments);
:func:`stack_weight` is the matched-filter weight of a stack from a fixed sample.
"""

from __future__ import annotations

import logging

import numpy as np

from r2d.errors import InputError
from r2d.io.blocks import image_block
from r2d.io.images import IMAGE_PROBLEMS, Stack, image_problems

log = logging.getLogger(__name__)


def read_exclude(path, n: int | None = None) -> np.ndarray:
    """Particle indices listed in an ``exclude`` file (whitespace-separated integers, ``#`` comments).

    Every token must be a whole number in ``0 .. n-1`` (with `n` given); duplicates are allowed.
    Problems raise :class:`InputError` naming the file and line.
    """
    if not path:
        return np.zeros(0, dtype=np.int64)
    vals, lines = [], []
    try:
        with open(path) as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.split("#", 1)[0].strip()
                for tok in line.replace(",", " ").split():
                    try:
                        vals.append(int(tok))
                    except ValueError:
                        raise InputError(f"{path}, line {lineno}: '{tok}' is not an integer particle index; "
                                         f"the exclude file must hold 0-based particle numbers") from None
                    lines.append(lineno)
    except UnicodeDecodeError:
        raise InputError(f"{path}: is not a text file; the exclude file must hold 0-based particle "
                         "numbers, one or more per line") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the exclude file ({exc.strerror}); check the path and "
                         "its permissions") from None
    arr = np.asarray(vals, dtype=np.int64)
    hi = n if n is not None else np.iinfo(np.int64).max
    bad = np.flatnonzero((arr < 0) | (arr >= hi))
    if len(bad):
        b = bad[0]
        raise InputError(f"{path}, line {lines[b]}: particle index {arr[b]} is out of range; the input has "
                         f"{n} particles (valid 0..{n - 1 if n is not None else ''}, counting from 0)")
    return np.unique(arr)


def _report_bad(stack: Stack, idx: np.ndarray, codes: np.ndarray, what: str) -> None:
    """Warn, with their input indices, about particles that cannot be used."""
    bad = np.flatnonzero(codes)
    if not len(bad):
        return
    shown = 200
    items = ", ".join(f"{int(idx[b])} ({IMAGE_PROBLEMS[int(codes[b])]})" for b in bad[:shown])
    more = f", ... ({len(bad)} in all)" if len(bad) > shown else ""
    log.warning("%s: %d particle(s) with NaN/Inf pixels or zero variance %s: %s%s", stack.source, len(bad),
                what, items, more)


def read_particles(stack: Stack, index=None, *, chunk: int = 4096, report: bool = True) -> np.ndarray:
    """Read particles (all, or input indices ``index``) in chunks, float32 ``(k, n, n)``.

    Data check: a particle with a NaN/Inf pixel or zero variance (:func:`r2d.io.image_problems`)
    is reported in the log by input index and returned as an all-zero image, so that nothing
    non-finite reaches the arithmetic. A zero image is itself a zero-variance image, so
    ``image_problems`` on the result (or :func:`bad_mask`) finds the same particles again;
    use :func:`read_good_particles` to leave them out instead.
    """
    idx = np.arange(len(stack)) if index is None else np.asarray(index)
    out = np.empty((len(idx), stack.box, stack.box), dtype=np.float32)
    codes = np.zeros(len(idx), dtype=np.int8)
    for lo in range(0, len(idx), chunk):
        block = stack.read(idx[lo:lo + chunk])
        c = image_problems(block)
        block[c != 0] = 0.0
        out[lo:lo + chunk] = block
        codes[lo:lo + chunk] = c
    if report:
        _report_bad(stack, idx, codes, "set to zero (they must not be used)")
    return out


class ParticleRows:
    """Particles ``index`` (input indices) of a stack, read when indexed: ``rows[r]`` is
    float32 ``(len(r), n, n)`` for an array of rows ``r`` (bad particles as zero images, see
    :func:`read_particles`). Lets a step go through a large stack block by block."""

    def __init__(self, stack: Stack, index):
        self.stack = stack
        self.index = np.asarray(index)
        self.shape = (len(self.index), stack.box, stack.box)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows) -> np.ndarray:
        return read_particles(self.stack, self.index[rows], report=False)

    def bad(self, chunk: int | None = None) -> np.ndarray:
        """``(len,)`` bool: particles that cannot be used (reported in the log once, here); read
        ``chunk`` at a time (default: 64 MiB, :func:`r2d.io.image_block`)."""
        chunk = chunk or image_block(self.stack.box)
        out = np.zeros(len(self), dtype=bool)
        for lo in range(0, len(self), chunk):
            rows = np.arange(lo, min(len(self), lo + chunk))
            out[rows] = bad_mask(read_particles(self.stack, self.index[rows]))
        return out


def bad_mask(images: np.ndarray) -> np.ndarray:
    """True for images that cannot be used (NaN/Inf pixels or zero variance, e.g. those that
    :func:`read_particles` set to zero)."""
    return image_problems(images) != 0


def read_good_particles(stack: Stack, index=None, *, chunk: int = 4096
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Particles without NaN/Inf pixels and with non-zero variance.

    Returns ``(images, kept, bad)``: the usable images ``(k, n, n)`` float32, their input
    indices, and the input indices of the particles left out (reported in the log). The bad set
    depends only on each particle's pixels, so it is the same in every step and every chunk.
    """
    idx = np.arange(len(stack)) if index is None else np.asarray(index, dtype=np.int64)
    parts: list[np.ndarray] = []
    keep = np.zeros(len(idx), dtype=bool)
    codes = np.zeros(len(idx), dtype=np.int8)
    for lo in range(0, len(idx), chunk):
        block = stack.read(idx[lo:lo + chunk])
        c = image_problems(block)
        codes[lo:lo + chunk] = c
        keep[lo:lo + chunk] = c == 0
        parts.append(block[c == 0])
    _report_bad(stack, idx, codes, "left out")
    images = np.concatenate(parts) if parts else np.empty((0, stack.box, stack.box), dtype=np.float32)
    return np.ascontiguousarray(images), idx[keep], idx[~keep]


def stack_weight(stack: Stack, *, workers: int = 1) -> np.ndarray:
    """Matched-filter weight of a stack from a fixed sample (same for every chunk of a run).

    Bad particles of the sample (NaN/Inf, zero variance) are left out, so one corrupt image
    cannot turn the weight into NaN.
    """
    from r2d.transforms import sample_indices, spectral_snr_weight

    sample = stack.read(sample_indices(len(stack)))
    good = image_problems(sample) == 0
    if not good.any():
        raise InputError(f"{stack.source}: every particle of a sample of {len(sample)} has NaN/Inf pixels or zero "
                         "variance; the stack is blank or corrupt, re-extract the particles")
    return spectral_snr_weight(sample[good], workers=workers)
