#!/usr/bin/env python
"""Cleaning a data set with junk: classification of the good particles, class sizes, and what
``r2d select --auto`` keeps, per junk kind.

Data and run: ``benchmarks/pipeline.py`` with ``--junk`` (every kind: noise, blobs, aggregates,
carbon edges, fragments), the 70S map (or ``--phantom``), 64 px, SNR 0.1 in the disc of
0.4 x box by default, 32 classes, 8 iterations, defaults. Then ``r2d select RUN --auto`` with
its defaults, with ``--unstable-z 1`` and with ``--junk-p 1`` (whole classes only). Prints the
view error of the good particles, the class sizes (classes with at least 5 members, the largest
over the mean) and, per kind, the share each selection keeps (good particles) or drops (junk).
Skips cleanly without ../shared unless ``--phantom``.

  $ .venv/bin/python benchmarks/cleaning.py --junk 0.25 --data-seed 21 --workdir /tmp/r2d-junk21
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MAP = REPO.parent / "shared" / "data" / "maps" / "ribosome70S_65px.mrc"
BIN = Path(sys.executable).parent


def selected_indices(star: Path) -> np.ndarray:
    """0-based input indices of the particles in a selected subset STAR file."""
    import starfile

    names = starfile.read(star, always_dict=True)["particles"]["rlnImageName"]
    return names.str.split("@").str[0].astype(int).to_numpy() - 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--junk", type=float, default=0.25)
    ap.add_argument("--data-seed", type=int, default=21)
    ap.add_argument("--ctf", default="full", choices=["full", "flip"])
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--snr-disc", type=float, default=0.4, help="disc (fraction of the box) the SNR is measured "
                    "in; 0: the whole box")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--ncls", type=int, default=32)
    ap.add_argument("--phantom", action="store_true")
    ap.add_argument("--workdir", default="/tmp/r2d-junk")
    args = ap.parse_args()
    if not args.phantom and not MAP.exists():
        print(f"skipped: {MAP} not found (../shared absent); use --phantom")
        return 0
    wd = Path(args.workdir)
    cmd = [sys.executable, str(REPO / "benchmarks" / "pipeline.py"), "--junk", str(args.junk), "--ctf", args.ctf,
           "--defocus", "8000", "25000", "--data-seed", str(args.data_seed), "--n", str(args.n),
           "--ncls", str(args.ncls), "--snr", str(args.snr), "--workdir", str(wd)]
    if args.snr_disc:
        cmd += ["--snr-disc", str(args.snr_disc)]
    if args.phantom:
        cmd.append("--phantom")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    print(out.strip())
    from r2d import export

    run = export.load_result(wd / "run")
    truth = pd.read_csv(wd / "data" / "truth.tsv", sep="\t").set_index("index")
    kind = truth.loc[np.arange(run.n), "junk_kind"].to_numpy()
    sizes = np.bincount(run.klass[run.klass >= 0])
    sizes = sizes[sizes > 0]
    print(f"\nclasses: {len(sizes)} non-empty, {int((sizes >= 5).sum())} with at least 5 members; "
          f"largest {sizes.max()} = {sizes.max() / sizes.mean():.2f} x the mean")
    variants = {"--auto": [], "--unstable-z 1": ["--unstable-z", "1"], "classes only": ["--junk-p", "1"]}
    kept = {}
    for name, extra in variants.items():
        sel = wd / ("selected.star" if not extra else f"selected_{extra[0].strip('-')}.star")
        subprocess.run([BIN / "r2d", "select", str(wd / "run"), "--auto", *extra, "-o", str(sel)], check=True,
                       capture_output=True)
        kept[name] = np.zeros(run.n, dtype=bool)
        kept[name][selected_indices(sel)] = True
    print("\nkept (good particles) or dropped (junk): r2d select --auto, with --unstable-z 1, and with "
          "--junk-p 1 (whole classes, no particle step)")
    print(f"{'kind':12s} {'particles':>9s} " + " ".join(f"{n:>14s}" for n in variants))
    junk = kind != "particle"
    rows = [(k, kind == k) for k in ["particle", *sorted(set(kind) - {"particle"})]]
    if junk.any():
        rows.append(("all junk", junk))
    for k, m in rows:
        shares = [kept[n][m].mean() if k == "particle" else 1 - kept[n][m].mean() for n in variants]
        print(f"{k:12s} {int(m.sum()):9d} " + " ".join(f"{s:14.1%}" for s in shares)
              + f"  {'kept' if k == 'particle' else 'dropped'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
