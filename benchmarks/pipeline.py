#!/usr/bin/env python
"""Benchmark the whole workflow on fixed simulated data; prints a table (time, memory, quality).

Data: the 70S ribosome map from ../shared/data/maps (skipped cleanly when absent) or, with
--phantom, r2d's own phantom; 64 px, 5 Å/px, SNR 0.1, phase-flipped CTF (defocus 1-3 µm),
shifts up to ±3 px, uniform views. Settings: ncls=32, iter=8, naliref=5, nbasisfp=12 (the
pipeline issue's acceptance run). Quality: view error against the ground truth, per iteration,
and for the last iteration the FRC-0.5 resolution of the class averages against their
best-matching noise-free projections (``r2d evaluate --map``).

  $ .venv/bin/python benchmarks/pipeline.py [--n 2000] [--iter 8] [--workdir /tmp/r2d-bench]

Realistic data (SNR inside the particle's disc of 0.4 x box, raw CTF, defocus 0.8-2.5 µm):

  $ .venv/bin/python benchmarks/pipeline.py --snr-disc 0.4 --ctf full --defocus 8000 25000 \
        --data-seed 11 --workdir /tmp/r2d-raw
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from scaling import jobs  # benchmarks/: Snakemake benchmark files per job

REPO = Path(__file__).resolve().parents[1]
MAP = REPO.parent / "shared" / "data" / "maps" / "ribosome70S_65px.mrc"
BIN = Path(sys.executable).parent


def kind(job: str) -> str:
    """A benchmark file's job as its kind: ``simmx_03/1-of-2.tsv`` -> ``simmx_YY chunk``."""
    name, _, chunk = job.removesuffix(".tsv").partition("/")
    if name.startswith("stability_"):
        return "stability_RR"  # the repeats
    name = re.sub(r"_(?!00)\d\d(?=_|$)", "_YY", name)  # iterations (classmx_00 is a step of its own)
    return f"{name} chunk" if chunk else name


def print_kinds(rows) -> None:
    """Jobs, summed and mean wall time and the largest peak memory per job kind, costliest first."""
    by: dict[str, list] = {}
    for job, s, _, rss in rows:
        by.setdefault(kind(job), []).append((s, rss))
    print(f"\n{'job kind':24s} {'jobs':>5s} {'wall s':>8s} {'s/job':>7s} {'max RSS MB':>11s}")
    for k, v in sorted(by.items(), key=lambda kv: -sum(s for s, _ in kv[1])):
        total = sum(s for s, _ in v)
        print(f"{k:24s} {len(v):5d} {total:8.1f} {total / len(v):7.2f} {max(r for _, r in v):11.0f}")
    print(f"{'all jobs':24s} {len(rows):5d} {sum(r[1] for r in rows):8.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--iter", type=int, default=8)
    ap.add_argument("--ncls", type=int, default=32)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1, help="workflow seed (the data are always simulated with seed 1)")
    ap.add_argument("--averager", default=None, help="classaverager (default: the workflow's default)")
    ap.add_argument("--ctf", default="flip", choices=["flip", "full"], help="CTF of the simulated data")
    ap.add_argument("--snr", type=float, default=0.1, help="SNR of the simulated data (default 0.1)")
    ap.add_argument("--snr-disc", type=float, default=None, metavar="FRACTION",
                    help="state the SNR inside a disc of radius FRACTION x box (r2d simulate --snr-disc)")
    ap.add_argument("--defocus", type=float, nargs=2, default=(10000, 30000), metavar=("MIN", "MAX"))
    ap.add_argument("--data-seed", type=int, default=1, help="seed of the simulated data (default 1)")
    ap.add_argument("--junk", type=float, default=0.0, help="junk fraction (all five kinds)")
    ap.add_argument("--preferred", type=float, default=0.0,
                    help="share of the particles in a preferred view (r2d simulate --preferred)")
    ap.add_argument("--phantom", action="store_true", help="use r2d's phantom instead of the 70S map")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config value (YAML), e.g. --set mramaxshift=12; repeatable")
    ap.add_argument("--workdir", default="/tmp/r2d-bench")
    ap.add_argument("--snakefile", default=str(REPO / "Snakefile"), help="workflow to run (default: this checkout's)")
    args = ap.parse_args()
    if not args.phantom and not MAP.exists():
        print(f"skipped: {MAP} not found (../shared absent); use --phantom")
        return 0
    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    src = ["--phantom"] if args.phantom else ["--map", str(MAP)]
    if not (wd / "data" / "truth.tsv").exists():
        extra = [] if args.snr_disc is None else ["--snr-disc", str(args.snr_disc)]
        if args.junk:
            extra += ["--junk", str(args.junk), "--junk-kinds", "all"]
        if args.preferred:
            extra += ["--preferred", str(args.preferred)]
        subprocess.run([BIN / "r2d", "simulate", *src, "--apix", "5", "--n", str(args.n), "--box", "64",
                        "--snr", str(args.snr), "--shift", "3", "--ctf", args.ctf, "--defocus", *map(str, args.defocus),
                        *extra, "--seed", str(args.data_seed), "-o", str(wd / "data")], check=True, env=env)
    (wd / "config").mkdir(exist_ok=True)
    cfg = {"input": "data/particles.star", "path": "run", "ncls": args.ncls, "iter": args.iter, "naliref": 5,
           "nbasisfp": 12, "seed": args.seed}  # threads and chunks: the defaults (1 thread, chunks auto)
    if args.averager:
        cfg["classaverager"] = args.averager
    for kv in args.set:
        key, _, value = kv.partition("=")
        cfg[key] = yaml.safe_load(value)
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    for old in (wd / "run" / "benchmarks").glob("**/*.tsv"):
        old.unlink()  # chunk files of an earlier run with more chunks would be counted
    t0, c0 = time.time(), os.times()
    subprocess.run([BIN / "snakemake", "-s", args.snakefile, "--workflow-profile", "none",
                    "--directory", str(wd), "--cores", str(args.cores), "--forceall", "--quiet"],
                   check=True, env=env)
    wall, c1 = time.time() - t0, os.times()
    cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    print_kinds(jobs(wd / "run"))
    chunks = yaml.safe_load((wd / "config" / "config.yaml").read_text()).get("chunks", "auto")
    print(f"\nwhole workflow: {wall:.0f} s wall on {args.cores} cores ({cpu:.0f} s CPU, Snakemake and its jobs), "
          f"{args.n} particles, {args.iter} iterations, chunks {chunks}\n")
    print(f"{'classmx':10s} {'view error':>10s} {'random':>8s}")
    for it in range(0, args.iter + 1):
        out = subprocess.run([BIN / "r2d", "evaluate", str(wd / "run"), str(wd / "data" / "truth.tsv"),
                              "--iteration", f"{it:02d}"], capture_output=True, text=True, env=env).stdout
        parts = out.split()
        try:
            ve = float(parts[parts.index("error") + 1])
            rnd = float(parts[parts.index("(random") + 2])
        except (ValueError, IndexError):
            continue
        print(f"{it:02d}         {ve:10.1f} {rnd:8.1f}")
    if not args.phantom:
        out = subprocess.run([BIN / "r2d", "evaluate", str(wd / "run"), str(wd / "data" / "truth.tsv"),
                              "--map", str(MAP), "--apix", "5", "--threads", str(args.cores)],
                             capture_output=True, text=True, env=env).stdout
        print("\n" + out.strip().splitlines()[-1] if out.strip() else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
