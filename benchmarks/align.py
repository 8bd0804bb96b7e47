#!/usr/bin/env python
"""Benchmark the alignment engine: speed (alignments/s) and accuracy against ground truth.

Data: noise-free projections of the 70S map in ../shared/data/maps (skipped cleanly when
absent), scaled to 64, 96 and 128 px; particles are known rotations, shifts (|t| ≤ 3 px at
64 px) and mirrors of them plus white noise at SNR 1 and 0.1 (whole-box signal variance
over noise variance).

* speed: every particle against 5 and 20 references (all versus all), ``maxshift=8``, on
  ``--threads`` threads: particle-reference alignments per second, for every aligner, and
  the peak of memory allocated during a second, untimed call (``tracemalloc``, which sees
  numpy's buffers);
* accuracy: each particle against its own noise-free reference, the fraction within
  2° / 0.5 px (SNR 1) and 10° / 1.5 px (SNR 0.1) with the right mirror; each aligner's
  trials apply only what it searches (``rotational``: angles; ``translational``: shifts;
  ``rotate_translate``: angles and shifts; the others: angles, shifts and mirrors).

  $ .venv/bin/python benchmarks/align.py [--n 2000] [--threads 2] [--boxes 64 96 128]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from r2d import transforms as tf
from r2d.align import align

REPO = Path(__file__).resolve().parents[1]
MAP = REPO.parent / "shared" / "data" / "maps" / "ribosome70S_65px.mrc"
ALIGNERS = ["rotational", "translational:maxshift=8", "rotate_translate:maxshift=8",
            "rotate_translate_flip:maxshift=8", "rotate_translate_tree:maxshift=8",
            "rotate_translate_flip:maxshift=8+refine", "rotate_translate_tree+refine"]


def projections(n: int, count: int, seed: int) -> np.ndarray:
    import mrcfile

    from r2d.simulate import simulate

    with mrcfile.open(MAP, permissive=True) as m:
        vol = np.asarray(m.data, dtype=np.float32)
    apix = 5.0 * 64 / n
    if n != 64:  # resample the map to the box's pixel size (Fourier crop/pad of the volume)
        from scipy import ndimage
        vol = ndimage.zoom(vol, n / 64, order=3).astype(np.float32)
    _, truth, clean = simulate(vol, count, n, apix, snr=1e6, ctf=None, seed=seed, return_clean=True)
    return clean


def particles(refs, snr, rng, shift, rotate=True, mirror=True):
    """Known transforms of ``refs`` plus white noise: what each aligner searches (angle,
    shift ``|t| ≤ shift`` per axis, mirror), the rest left at zero."""
    N = len(refs)
    alpha = rng.uniform(-180, 180, N) if rotate else np.zeros(N)
    tx, ty = rng.uniform(-shift, shift, (2, N))
    mirror = rng.integers(0, 2, N).astype(float) if mirror else np.zeros(N)
    parts = tf.transform(refs, *tf.invert(alpha, tx, ty, mirror))
    sigma = np.sqrt(refs.reshape(N, -1).var(axis=1).mean() / snr)
    parts = parts + rng.normal(0, sigma, parts.shape).astype(np.float32)
    return parts.astype(np.float32), (alpha, tx, ty, mirror)


def split(aligner):
    first, _, ref = aligner.partition("+")
    return first, (ref or None)


def accuracy(aligner, refs, snr, rng, shift, threads):
    first, ref = split(aligner)
    name = first.split(":")[0]
    if name == "rotational":
        shift = 0.0  # searches the angle only
    parts, (alpha, tx, ty, mirror) = particles(refs, snr, rng, shift, rotate=name != "translational",
                                               mirror=name in ("rotate_translate_flip", "rotate_translate_tree"))
    a = align(parts, refs, first, "ccc", ralign=ref, raligncmp="ccc", pairs=np.arange(len(refs)), workers=threads)
    da = np.abs((a.alpha - alpha + 180) % 360 - 180)
    dt = np.hypot(a.tx - tx, a.ty - ty)
    ok_m = a.mirror == mirror
    return (float(np.mean(ok_m & (da <= 2) & (dt <= 0.5))), float(np.mean(ok_m & (da <= 10) & (dt <= 1.5))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="particles in the speed test (at 64 px)")
    ap.add_argument("--trials", type=int, default=500, help="particles in the accuracy test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--boxes", type=int, nargs="+", default=[64, 96, 128])
    ap.add_argument("--aligners", nargs="+", default=ALIGNERS)
    ap.add_argument("--refs", type=int, nargs="+", default=[5, 20], help="reference counts of the speed test")
    args = ap.parse_args()
    if not MAP.exists():
        print(f"skipped: {MAP} not found (../shared absent)")
        return 0
    rng = np.random.default_rng(0)
    print(f"{'box':>4} {'refs':>4} {'aligner':40} {'align/s':>9} {'peak MB':>8} {'SNR1 2°/0.5px':>14} "
          f"{'SNR0.1 10°/1.5px':>17}")
    for n in args.boxes:
        trial_refs = projections(n, args.trials, seed=12)
        npart = max(200, int(args.n * (64 / n) ** 2))
        for nref in args.refs:
            refs = projections(n, nref, seed=11)
            parts, _ = particles(refs[rng.integers(0, nref, npart)], 0.1, rng, 3 * n / 64)
            for aligner in args.aligners:
                first, ref = split(aligner)
                sub = parts if ref is None else parts[: max(50, len(parts) // 10)]  # refine is slow: fewer
                t0 = time.perf_counter()
                try:
                    align(sub, refs, first, "ccc", ralign=ref, raligncmp="ccc", workers=args.threads)
                except Exception as exc:  # an aligner this version cannot run: say so, go on
                    print(f"{n:>4} {nref:>4} {aligner:40} {'-':>9}  ({exc})")
                    continue
                speed = len(sub) * nref / (time.perf_counter() - t0)
                # peak memory in a second, untimed call (tracing slows numpy's many small allocations)
                tracemalloc.start()
                align(sub, refs, first, "ccc", ralign=ref, raligncmp="ccc", workers=args.threads)
                peak = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
                acc = ""
                if nref == args.refs[0]:  # accuracy does not depend on the reference count
                    acc1, _ = accuracy(aligner, trial_refs, 1.0, rng, 3 * n / 64, args.threads)
                    _, acc01 = accuracy(aligner, trial_refs, 0.1, rng, 3 * n / 64, args.threads)
                    acc = f"{acc1:14.3f} {acc01:17.3f}"
                print(f"{n:>4} {nref:>4} {aligner:40} {speed:9.0f} {peak:8.0f} {acc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
