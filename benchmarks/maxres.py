#!/usr/bin/env python
"""Does the working stack cost quality? The default run (``maxres`` 8 Å: classified on a
Fourier-cropped working stack, full-size ``classes_final``) against ``maxres: null`` (every step
at the full box) on the same particles.

Data: 70S ribosome particles (map from ../shared/data/maps at 5 Å/voxel, skipped cleanly when
absent) simulated by ``r2d simulate`` at ``--box`` px of ``--apix`` Å (default 2,000 of 128 px
at 2.5 Å: the working stack is 80 px at 4 Å), SNR 0.1 inside the particle's disc (0.4 x box),
defocus 0.8-2.5 µm with astigmatism up to 500 Å, B-factor 100 Å², shifts up to ±10 Å; one set
per ``--ctf`` (``full``: raw, signed CTF; ``flip``: phase-flipped). Runs: the default workflow
(``--ncls``, ``--iter``, ``--seed``) with and without ``maxres``, ``snakemake --cores 2``.

Prints per set and run: the workflow's wall time, the view error of the last iteration
(``r2d evaluate``) and the mean and median FRC-0.5 resolution of the final class averages at
full size (``classes_final`` of the default run, ``classes_YY`` of the null run) against the
noise-free projections (``r2d evaluate --map``).

  $ .venv/bin/python benchmarks/maxres.py [--n 2000] [--box 128] [--apix 2.5] [--ctf full flip]
        [--iter 8] [--ncls 32] [--seed 1] [--out /tmp/r2d-maxres]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MAP = REPO.parent / "shared" / "data" / "maps" / "ribosome70S_65px.mrc"
MAP_APIX = 5.0  # the 70S map's header has no pixel size (shared/data/maps/README.md)
BIN = Path(sys.executable).parent
SHIFT_A = 10.0


def simulate(out: Path, args, ctf: str, env) -> Path:
    """The particle set of one CTF mode (made once per parameters); its folder."""
    d = out / f"data_{ctf}"
    params = {"n": args.n, "box": args.box, "apix": args.apix, "ctf": ctf}
    stamp = d / "params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return d
    subprocess.run([BIN / "r2d", "simulate", "--map", str(MAP), "--map-apix", str(MAP_APIX), "--apix",
                    str(args.apix), "--box", str(args.box), "--n", str(args.n), "--snr", "0.1", "--snr-disc",
                    "0.4", "--ctf", ctf, "--defocus", "8000", "25000", "--astigmatism", "500", "--bfactor",
                    "100", "--shift", str(round(SHIFT_A / args.apix, 2)), "--seed", "1", "-o", str(d)],
                   check=True, env=env, capture_output=True)
    stamp.write_text(json.dumps(params))
    return d


def run(wd: Path, data: Path, cfg: dict, env) -> float:
    """The default workflow with ``cfg`` on ``data/particles.star`` in ``wd``; wall s."""
    (wd / "config").mkdir(parents=True, exist_ok=True)
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump({"input": str(data / "particles.star"),
                                                               "path": "run", **cfg}))
    t0 = time.time()
    subprocess.run([BIN / "snakemake", "-s", str(REPO / "Snakefile"), "--workflow-profile", "none",
                    "--directory", str(wd), "--cores", "2", "--forceall", "--quiet"], check=True, env=env,
                   capture_output=True)
    return time.time() - t0


def scores(wd: Path, data: Path, final: bool, env) -> dict:
    """``r2d evaluate`` of the last iteration with ``--map``: view error and FRC-0.5 (Å)."""
    out = wd / "evaluate.json"
    subprocess.run([BIN / "r2d", "evaluate", str(wd / "run"), str(data / "truth.tsv"), "--map", str(MAP),
                    "--apix", str(MAP_APIX), "--json", str(out), *(["--final"] if final else [])],
                   check=True, env=env, capture_output=True)
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--apix", type=float, default=2.5)
    ap.add_argument("--ctf", nargs="+", default=["full", "flip"], choices=["full", "flip"])
    ap.add_argument("--iter", type=int, default=8)
    ap.add_argument("--ncls", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="/tmp/r2d-maxres")
    args = ap.parse_args()
    if not MAP.exists():
        print(f"skipped: {MAP} not found (../shared absent)")
        return 0
    out = Path(args.out)
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    cfg = {"ncls": args.ncls, "iter": args.iter, "seed": args.seed}
    rows = []
    for ctf in args.ctf:
        data = simulate(out, args, ctf, env)
        for name, extra in (("maxres 8", {}), ("maxres null", {"maxres": None})):
            wd = out / f"{ctf}_{name.split()[1]}"
            wall = run(wd, data, {**cfg, **extra}, env)
            s = scores(wd, data, final=not extra, env=env)
            rows.append((ctf, name, wall, s))
            print(f"{ctf} {name}: {wall:.0f} s, view error {s['view_error_deg']:.1f}°", flush=True)
    print(f"\n{args.n} particles of {args.box} px at {args.apix:g} Å/px, SNR 0.1 in the disc, ncls {args.ncls}, "
          f"iter {args.iter}, seed {args.seed}, 2 cores")
    print(f"{'CTF':5s} {'run':12s} {'wall s':>7s} {'view err':>9s} {'random':>7s} {'FRC mean Å':>11s} "
          f"{'FRC median Å':>13s} {'averages':>9s}")
    for ctf, name, wall, s in rows:
        print(f"{ctf:5s} {name:12s} {wall:7.0f} {s['view_error_deg']:9.1f} {s['random_view_error_deg']:7.1f} "
              f"{s['average_frc05_mean_A']:11.1f} {s['average_frc05_median_A']:13.1f} {s['n_averages']:9d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
