#!/usr/bin/env python
"""Rebalancing a preferred orientation: what ``r2d select --rebalance N`` keeps.

Data and run: ``benchmarks/pipeline.py --preferred F`` (a share F of the particles views the
70S map within 10° of its z axis, the others uniformly), 64 px, whole-box SNR 0.1,
phase-flipped, 32 classes, 8 iterations, defaults. Then ``r2d select RUN --rebalance N`` for
each N with the default view groups. Prints, per N: the view groups the preferred classes form,
the particles kept, the share of the preferred view among them, and the share of the other
views kept (rare views must stay). Skips cleanly without ../shared.

  $ .venv/bin/python benchmarks/rebalance.py --preferred 0.5 --workdir /tmp/r2d-pref
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from r2d import rebalance
from r2d.select import load_class_averages

REPO = Path(__file__).resolve().parents[1]
MAP = REPO.parent / "shared" / "data" / "maps" / "ribosome70S_65px.mrc"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "benchmarks"))
from cleaning import selected_indices  # noqa: E402

CAP = 10.0  # degrees: the preferred view's cap in the simulation


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preferred", type=float, default=0.5)
    ap.add_argument("--data-seed", type=int, default=31)
    ap.add_argument("--caps", type=int, nargs="+", default=[100, 200, 400])
    ap.add_argument("--snr-disc", type=float, default=None)
    ap.add_argument("--ctf", default="flip", choices=["full", "flip"])
    ap.add_argument("--workdir", default="/tmp/r2d-pref")
    args = ap.parse_args()
    if not MAP.exists():
        print(f"skipped: {MAP} not found (../shared absent)")
        return 0
    wd = Path(args.workdir)
    cmd = [sys.executable, str(REPO / "benchmarks" / "pipeline.py"), "--preferred", str(args.preferred),
           "--data-seed", str(args.data_seed), "--ctf", args.ctf, "--workdir", str(wd)]
    if args.snr_disc:
        cmd += ["--snr-disc", str(args.snr_disc), "--defocus", "8000", "25000"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    print(out.strip())
    truth = pd.read_csv(wd / "data" / "truth.tsv", sep="\t").set_index("index")
    tilt = np.degrees(np.arccos(np.abs(truth["view_z"].to_numpy())))
    pref = tilt <= CAP
    n = len(truth)
    print(f"\n{n} particles, {pref.mean():.1%} within {CAP:g}° of the preferred view")
    star = wd / "run" / "export" / "particles.star"
    klass = starfile.read(star, always_dict=True)["particles"]["rlnClassNumber"].to_numpy()
    imgs = load_class_averages(star)[1]
    group = rebalance.view_groups(rebalance.similarity(imgs))
    pg = np.where(klass >= 1, group[np.clip(klass, 1, len(imgs)) - 1], -1)
    top = int(np.bincount(pg[pref & (pg >= 0)]).argmax())
    in_top = np.flatnonzero(group == top) + 1
    print(f"{len(set(group))} view groups of {len(imgs)} classes; the preferred view's group: classes "
          f"{', '.join(map(str, in_top))}, {int(np.sum(pg == top))} particles, "
          f"{pref[pg == top].mean():.1%} of them preferred; {np.mean(pg[pref] == top):.1%} of the preferred "
          "particles in it")
    print(f"\n{'cap N':>6s} {'kept':>6s} {'preferred share':>15s} {'other views kept':>16s}")
    for cap in args.caps:
        sel = wd / f"rebalanced_{cap}.star"
        subprocess.run([BIN / "r2d", "select", str(wd / "run"), "--rebalance", str(cap), "-o", str(sel)],
                       check=True, capture_output=True, text=True)
        kept = np.zeros(n, dtype=bool)
        kept[selected_indices(sel)] = True
        print(f"{cap:6d} {int(kept.sum()):6d} {pref[kept].mean():15.1%} {kept[~pref].mean():16.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
