#!/usr/bin/env python
"""r2d and RELION side by side on the same simulated particles: view error and wall time.

Data and r2d run: ``benchmarks/pipeline.py`` with the same arguments (the realistic set by
default: 70S map, 2,000 particles of 64 px at 5 Å, SNR 0.1 in the disc of 0.4 x box, raw CTF,
defocus 0.8-2.5 µm, 32 classes, 8 iterations, r2d's defaults). RELION: Debian's
``relion_refine`` 2D classification of the same ``particles.star`` with ``--ctf``, the same
number of classes, 25 iterations, ``--tau2_fudge 2``, a 280 Å mask, ``--j`` = the cores; its
classes are read from ``run_it025_data.star`` and scored against the truth like r2d's
(``r2d.evaluate.view_error``). Skips cleanly without ../shared or relion_refine.

  $ .venv/bin/python benchmarks/relion.py --data-seed 11 --workdir /tmp/r2d-relion11 [--ctf flip]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MAP = REPO.parent / "shared" / "data" / "maps" / "ribosome70S_65px.mrc"
BIN = Path(sys.executable).parent


def relion_labels(data_star: Path, n: int) -> np.ndarray:
    """Class (0-based) of particle ``0 … n-1`` from RELION's ``*_data.star`` (−1 where absent)."""
    from r2d.io.star import read_star_metadata

    table = read_star_metadata(data_star)
    idx = np.array([int(name.split("@")[0]) - 1 for name in table["rlnImageName"]])
    labels = np.full(n, -1, dtype=np.int64)
    labels[idx] = np.asarray(table["rlnClassNumber"], dtype=np.int64) - 1
    return labels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-seed", type=int, default=11)
    ap.add_argument("--ctf", default="full", choices=["full", "flip"])
    ap.add_argument("--ncls", type=int, default=32)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--relion-iter", type=int, default=25)
    ap.add_argument("--workdir", default="/tmp/r2d-relion")
    args = ap.parse_args()
    if not MAP.exists():
        print(f"skipped: {MAP} not found (../shared absent)")
        return 0
    if shutil.which("relion_refine") is None:
        print("skipped: relion_refine not found (Debian: apt-get install relion)")
        return 0
    wd = Path(args.workdir)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pipeline.py"), "--snr-disc", "0.4",
                          "--ctf", args.ctf, "--defocus", "8000", "25000", "--data-seed", str(args.data_seed),
                          "--ncls", str(args.ncls), "--cores", str(args.cores), "--workdir", str(wd)],
                         check=True, capture_output=True, text=True).stdout
    r2d_time = float(re.search(r"whole workflow: (\d+) s", out).group(1))
    r2d_error = float(out.split("\n08 ")[1].split()[0])
    rdir = wd / "relion"
    (rdir / "out").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    subprocess.run(["relion_refine", "--i", "particles.star", "--o", str(rdir / "out" / "run"), "--ctf", "--K", str(args.ncls),
                    "--iter", str(args.relion_iter), "--tau2_fudge", "2", "--particle_diameter", "280",
                    "--zero_mask", "--flatten_solvent", "--oversampling", "1", "--psi_step", "6",
                    "--offset_range", "5", "--offset_step", "2", "--norm", "--scale", "--pool", "30",
                    "--dont_combine_weights_via_disc", "--j", str(args.cores)],
                   cwd=wd / "data", check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    relion_time = time.time() - t0
    from r2d.evaluate import random_view_error, view_error

    truth = pd.read_csv(wd / "data" / "truth.tsv", sep="\t").set_index("index").sort_index()
    dirs = truth[["view_x", "view_y", "view_z"]].to_numpy(dtype=np.float64)
    labels = relion_labels(rdir / "out" / f"run_it{args.relion_iter:03d}_data.star", len(truth))
    sizes = np.bincount(labels[labels >= 0], minlength=args.ncls)
    print(f"{'program':10s} {'view error':>10s} {'random':>8s} {'classes < 5':>11s} {'wall':>8s}")
    from r2d.commands.evaluate import find_classmx, read_labels

    ours = read_labels(wd / "run" / f"resultmx_{find_classmx(wd / 'run', None)[1]:02d}.h5", truth.index)
    ours_sizes = np.bincount(ours[ours >= 0], minlength=args.ncls)
    print(f"{'r2d':10s} {r2d_error:10.1f} {random_view_error(ours, dirs):8.1f} "
          f"{int((ours_sizes < 5).sum()):11d} {r2d_time:7.0f}s")
    print(f"{'RELION':10s} {view_error(labels, dirs):10.1f} {random_view_error(labels, dirs):8.1f} "
          f"{int((sizes < 5).sum()):11d} {relion_time:7.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
