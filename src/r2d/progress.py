"""Progress of long steps, one update per block of particles.

On a terminal (stderr is a TTY) a ``tqdm`` bar; otherwise (Snakemake rules send stderr to
``logs/``) one plain log line per block, e.g. ``simmx: 4096/20000 particles (20%)``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

log = logging.getLogger("r2d")


def blocks(total: int, step: int, what: str, unit: str = "particles") -> Iterator[tuple[int, int]]:
    """Yield ``(lo, hi)`` ranges of ``step`` covering ``range(total)`` and report each one done."""
    step = max(1, int(step))
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc=what, unit=" " + unit.rstrip("s"), leave=False, file=sys.stderr)
    try:
        for lo in range(0, total, step):
            hi = min(total, lo + step)
            yield lo, hi
            if bar is not None:
                bar.update(hi - lo)
            else:
                log.info("%s: %d/%d %s (%.0f%%)", what, hi, total, unit, 100.0 * hi / max(total, 1))
    finally:
        if bar is not None:
            bar.close()
