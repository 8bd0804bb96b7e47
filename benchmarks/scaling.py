#!/usr/bin/env python
"""Scaling benchmark: wall time, CPU time and peak memory per rule for growing datasets.

Data: simulated 70S particles (map from ../shared/data/maps, skipped cleanly when absent),
``--box`` px (default 96) at 5 Å/px, SNR 0.1, phase-flipped CTF (defocus 1-3 µm), shifts
±3 px, uniform views; one dataset per ``--sizes`` entry (default 2,000, 10,000 and 50,000).
Run: the whole workflow with ``ncls=64 naliref=5 iter=1`` (the init stage plus one iteration)
on ``--cores`` cores, every rule measured by its Snakemake ``benchmark:`` file.

Prints, per dataset, each job's wall time, CPU time and peak resident memory (max RSS), then
a summary: the wall clock of the init stage and of iteration 01 (chunks run side by side when
``--chunks`` × ``--threads`` fits ``--cores``; the sum of the jobs' wall times beside it), and
iteration 01's time per particle.

  $ .venv/bin/python benchmarks/scaling.py [--sizes 2000 10000 50000] [--box 96] [--cores 2]
        [--chunks 1] [--threads N] [--workdir /tmp/r2d-scaling]
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MAP = REPO.parent / "shared" / "data" / "maps" / "ribosome70S_65px.mrc"
BIN = Path(sys.executable).parent

#: rules of the init stage (everything else that is not export/report belongs to iteration 01)
INIT = ("input_fp", "input_fp_basis", "input_fp_basis_proj", "classmx_00", "classes_init")


def jobs(run: Path) -> list[tuple[str, float, float, float]]:
    """``(job, wall s, cpu s, max RSS MB)`` from the run's Snakemake benchmark files."""
    rows = []
    for f in glob.glob(str(run / "benchmarks" / "**" / "*.tsv"), recursive=True):
        with open(f) as fh:
            r = next(csv.DictReader(fh, delimiter="\t"))
        cpu = float(r.get("cpu_time", "nan") or "nan")
        rows.append((str(Path(f).relative_to(run / "benchmarks")), float(r["s"]), cpu, float(r["max_rss"])))
    return sorted(rows)


def stage(job: str) -> str:
    """``init``, ``iter`` (iteration 01) or ``other`` (export) for a benchmark file's job name."""
    name = job.split("/")[0].removesuffix(".tsv")
    if name in INIT:
        return "init"
    return "iter" if "_01" in name else "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 50000])
    ap.add_argument("--box", type=int, default=96)
    ap.add_argument("--ncls", type=int, default=64)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="threads per job (default: --cores)")
    ap.add_argument("--workdir", default="/tmp/r2d-scaling")
    ap.add_argument("--snakefile", default=str(REPO / "Snakefile"))
    args = ap.parse_args()
    if not MAP.exists():
        print(f"skipped: {MAP} not found (../shared absent)")
        return 0
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    summary = []
    for n in args.sizes:
        wd = Path(args.workdir) / f"n{n}_box{args.box}"
        (wd / "config").mkdir(parents=True, exist_ok=True)
        if not (wd / "data" / "truth.tsv").exists():
            t0 = time.time()
            subprocess.run([BIN / "r2d", "simulate", "--map", str(MAP), "--apix", "5", "--n", str(n),
                            "--box", str(args.box), "--snr", "0.1", "--shift", "3", "--ctf", "flip",
                            "--defocus", "10000", "30000", "--seed", "1", "-o", str(wd / "data")],
                           check=True, env=env)
            print(f"simulated {n} particles of {args.box} px in {time.time() - t0:.0f} s", flush=True)
        threads = args.threads or args.cores
        cfg = {"input": "data/particles.star", "path": "run", "ncls": args.ncls, "iter": 1, "naliref": 5,
               "threads": threads, "chunks": args.chunks, "seed": 1}
        (wd / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
        smk = [BIN / "snakemake", "-s", args.snakefile, "--workflow-profile", "none", "--directory", str(wd),
               "--cores", str(args.cores), "--quiet"]
        for old in glob.glob(str(wd / "run" / "benchmarks" / "**" / "*.tsv"), recursive=True):
            os.remove(old)  # chunk files of an earlier run with more chunks would be counted
        t0 = time.time()  # the init stage, then the rest: wall clock of each, chunks side by side
        # (targets after "--": --quiet takes optional values)
        subprocess.run([*smk, "--forceall", "--", "run/classes_init.hdf"], check=True, env=env)
        t1 = time.time()
        # every artifact of iteration 01 (with classify mra, classes_01 does not need input_01_proj)
        subprocess.run([*smk, "--", "run/classes_01.hdf", "run/input_01_proj.h5"], check=True, env=env)
        t2 = time.time()
        subprocess.run(smk, check=True, env=env)  # export and report
        rows = jobs(wd / "run")
        print(f"\n{n} particles, {args.box} px, ncls {args.ncls}, {args.chunks} chunk(s) of {threads} thread(s), "
              f"{args.cores} cores: init stage {t1 - t0:.1f} s, iteration 01 {t2 - t1:.1f} s wall")
        print(f"{'job':34s} {'wall s':>8s} {'cpu s':>8s} {'max RSS MB':>11s}")
        for job, s, cpu, rss in rows:
            print(f"{job:34s} {s:8.1f} {cpu:8.1f} {rss:11.0f}")
        it = sum(s for j, s, _, _ in rows if stage(j) == "iter")
        wall_it = t2 - t1
        peak = max((r for _, _, _, r in rows), default=float("nan"))
        summary.append((n, t1 - t0, wall_it, it, 1e3 * wall_it / n, peak))
    print(f"\n{'particles':>9s} {'init s':>8s} {'iter 01 s':>10s} {'(jobs sum)':>10s} {'ms/particle/iter':>17s} "
          f"{'peak RSS MB':>12s}")
    for n, init, wall_it, it, per, peak in summary:
        print(f"{n:9d} {init:8.1f} {wall_it:10.1f} {it:10.1f} {per:17.2f} {peak:12.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
