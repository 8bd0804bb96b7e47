#!/usr/bin/env python
"""Benchmark the whole workflow on realistic stack sizes against a Fourier-cropped working stack.

Data: 70S ribosome particles (map from ../shared/data/maps at 5 Å/voxel, skipped cleanly when
absent) simulated by ``r2d simulate`` at the size users' data have (default 4,000 particles of
256 px at 1.25 Å/px: the projections Fourier-padded from the map), SNR 0.01 inside the
particle's disc (0.4 x box), raw signed CTF (``--ctf full``, defocus 0.8-2.5 µm, astigmatism up
to 500 Å), B-factor 100 Å², 5 % junk of every kind, shifts up to ±15 Å; then the same particles
Fourier-cropped to a working box (default 80 px: 4 Å/px), written as an MRC stack + STAR with
the same CTF. Runs: the default workflow (``--ncls``, ``--iter``, ``--seed``; ``maxres`` at its
default, 8 Å, so the full-size run classifies its own working stack and adds the full-size
``classes_final``) on both, ``snakemake --cores 2``.

Prints, per job kind (rule), the sum of its jobs' wall times, the largest max RSS from the
Snakemake benchmark files and the memory the job asked for (``resources: mem_mb``, from
``r2d.resources``), for both runs; the total wall time of each run and their ratio; and
the view error against the ground truth per iteration (``r2d evaluate``, as benchmarks/pipeline.py);
and for the full-size run's exports, how well the exported poses centre the true molecule centres
of each class (:func:`centre_residuals`).

  $ .venv/bin/python benchmarks/realsize.py [--n 4000] [--box 256] [--apix 1.25] [--working-box 80]
        [--iter 8] [--ncls 32] [--seed 1] [--out /tmp/r2d-realsize] [--keep]

A quick check (a few minutes on 2 cores):

  $ .venv/bin/python benchmarks/realsize.py --n 300 --box 128 --apix 2.5 --working-box 64 --iter 2 --ncls 8
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
import yaml
from scaling import jobs  # benchmarks/: Snakemake benchmark files per job

from r2d.io import new_mrcs
from r2d.transforms import fourier_crop

REPO = Path(__file__).resolve().parents[1]
MAP = REPO.parent / "shared" / "data" / "maps" / "ribosome70S_65px.mrc"
MAP_APIX = 5.0  # the 70S map's header has no pixel size (shared/data/maps/README.md)
BIN = Path(sys.executable).parent
SHIFT_A = 15.0  # largest shift per axis in Å (benchmarks/pipeline.py: 3 px at 5 Å)


def fourier_crop_stack(src: Path, dst: Path, box: int, block_mb: int = 64) -> float:
    """Fourier-crop every image of the MRC stack ``src`` (n, N, N) to ``(n, box, box)`` into the
    new stack ``dst`` (``r2d.transforms.fourier_crop``: the central frequencies, same field of
    view), about ``block_mb`` MB read at a time; returns the new pixel size (Å)."""
    with mrcfile.mmap(src, mode="r", permissive=True) as mrc:
        data = mrc.data
        n, big = data.shape[0], data.shape[-1]
        apix = float(mrc.voxel_size.x) * big / box
        step = max(1, (block_mb << 20) // (4 * big * big))
        with new_mrcs(dst, (n, box, box), apix) as out:
            for lo in range(0, n, step):
                out[lo:lo + step] = fourier_crop(np.asarray(data[lo:lo + step]), box)
    return apix


def working_star(src: Path, dst: Path, box: int, apix: float) -> None:
    """The STAR file ``src`` for its stack Fourier-cropped to ``box`` px of ``apix`` Å (same
    image names and CTF; optics image size and pixel size changed)."""
    tables = starfile.read(src, always_dict=True)
    tables["optics"]["rlnImageSize"] = box
    tables["optics"]["rlnImagePixelSize"] = apix
    starfile.write(tables, dst, float_format="%.6f")


def rule_patterns() -> list[tuple[re.Pattern, str]]:
    """``(regex of a benchmark file relative to run/benchmarks, rule name)`` from the workflow's
    rules (``benchmark: art("benchmarks/...")``; ``{it}`` matches digits, other wildcards a path
    component), the ones with fewer wildcards first (``classmx_00`` before ``classmx_{it}``)."""
    out = []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        rule, want = None, False
        for line in smk.read_text().splitlines():
            m = re.match(r"\s*(?:use\s+rule\s+\w+\s+as\s+(\w+)|rule\s+(\w+))\s*(?:with)?\s*:", line)
            if m:
                rule, want = m.group(1) or m.group(2), False
                continue
            if re.match(r"\s+benchmark:\s*$", line):
                want = True
                continue
            m = re.search(r'benchmarks/([^"]+)"', line)
            if want and rule and m:
                text = m.group(1)
                pat = re.escape(text).replace(r"\{it\}", r"\d+")
                pat = re.sub(r"\\\{[^}]*\\\}", "[^/]+", pat)
                out.append((text.count("{"), -len(text), re.compile(pat + "$"), rule))
                want = False
    return [(pat, rule) for _, _, pat, rule in sorted(out, key=lambda t: t[:2])]


def rule_of(job: str, patterns) -> str:
    """The rule that wrote a benchmark file (its path relative to run/benchmarks)."""
    for pat, rule in patterns:
        if pat.match(job):
            return rule
    return re.sub(r"_\d\d$", "", job.split("/")[0].removesuffix(".tsv"))


def per_rule(run: Path, patterns) -> dict[str, tuple[float, float, int]]:
    """``{rule: (sum of wall s, max of max RSS MB, jobs)}`` of a run folder."""
    acc = defaultdict(lambda: [0.0, 0.0, 0])
    for job, s, _, rss in jobs(run):
        a = acc[rule_of(job, patterns)]
        a[0] += s
        a[1] = max(a[1], rss)
        a[2] += 1
    return {k: tuple(v) for k, v in acc.items()}


def view_errors(run: Path, truth: Path, iters: int, env) -> dict[int, tuple[float, float]]:
    """``{iteration: (view error, random)}`` in degrees from ``r2d evaluate``."""
    res = {}
    for it in range(0, iters + 1):
        out = subprocess.run([BIN / "r2d", "evaluate", str(run), str(truth), "--iteration", f"{it:02d}"],
                             capture_output=True, text=True, env=env).stdout
        parts = out.split()
        try:
            res[it] = (float(parts[parts.index("error") + 1]), float(parts[parts.index("(random") + 2]))
        except (ValueError, IndexError):
            continue
    return res


def centre_residuals(run: Path, truth: Path) -> tuple[np.ndarray, float, tuple]:
    """Per good classified particle: the distance (Å) of its true molecule centre, moved by its
    exported pose (``rlnOriginX/YAngst`` then ``rlnAnglePsi``, RELION's convention:
    ``q = R_psiᵀ (s + o)``, x negated for ``r2dMirror``), from its class's median point; with the
    export's pixel size and the class averages' shape."""
    tables = starfile.read(run / "export" / "particles.star", always_dict=True)
    parts = tables["particles"]
    apix = float(tables["optics"]["rlnImagePixelSize"].iloc[0])
    t = pd.read_csv(truth, sep="\t")
    good = ~t["junk"].astype(bool).to_numpy()
    psi = np.deg2rad(parts["rlnAnglePsi"].to_numpy())
    v = t[["shift_x", "shift_y"]].to_numpy() + parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / apix
    c, s = np.cos(psi), np.sin(psi)
    q = np.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1]], axis=1)
    q[parts["r2dMirror"].to_numpy() > 0, 0] *= -1  # RELION has no mirror: the mirrored average's frame
    cls = parts["rlnClassNumber"].to_numpy()
    res = []
    for k in np.unique(cls[cls > 0]):
        sel = (cls == k) & good
        if sel.sum() > 1:
            res.extend(np.linalg.norm(q[sel] - np.median(q[sel], axis=0), axis=1) * apix)
    with mrcfile.open(run / "export" / "class_averages.mrcs", permissive=True) as m:
        shape = m.data.shape
    return np.array(res), apix, shape


def requested_mb(wd: Path, data: Path, cfg: dict) -> dict[str, int]:
    """``{rule: resources mem_mb}`` the workflow asks for on ``data`` with ``cfg`` (r2d.resources)."""
    from r2d.check import check_workflow_config
    from r2d.resources import JOBS, ResourceModel

    config = {"input": str(data), "path": str(wd / "run"), **cfg}
    facts = check_workflow_config(config)
    model = ResourceModel.from_config(config, facts)
    return {rule: model.mem_mb(rule) for rule in JOBS}


def run_workflow(wd: Path, data: Path, cfg: dict, cores: int, env) -> float:
    """The default workflow on ``data`` (a STAR file) in ``wd`` (config/config.yaml, run/); wall s."""
    (wd / "config").mkdir(parents=True, exist_ok=True)
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump({"input": str(data), "path": "run", **cfg}))
    for old in (wd / "run" / "benchmarks").glob("**/*.tsv"):
        old.unlink()  # chunk files of an earlier run with more chunks would be counted
    t0 = time.time()
    subprocess.run([BIN / "snakemake", "-s", str(REPO / "Snakefile"), "--workflow-profile", "none",
                    "--directory", str(wd), "--cores", str(cores), "--forceall", "--quiet"],
                   check=True, env=env)
    return time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="particles (default 4000)")
    ap.add_argument("--box", type=int, default=256, help="full-size box in px (default 256)")
    ap.add_argument("--apix", type=float, default=1.25, help="full-size pixel size in Å (default 1.25)")
    ap.add_argument("--working-box", type=int, default=80,
                    help="box of the Fourier-cropped working stack in px (default 80: 4 Å/px at the defaults)")
    ap.add_argument("--iter", type=int, default=8)
    ap.add_argument("--ncls", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1, help="workflow seed (the data are simulated with seed 1)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--out", default="/tmp/r2d-realsize", help="folder of the data and runs")
    ap.add_argument("--keep", action="store_true", help="keep the run folders (default: only the data)")
    args = ap.parse_args()
    if not MAP.exists():
        print(f"skipped: {MAP} not found (../shared absent)")
        return 0
    if args.working_box % 2 or args.box % 2 or not 8 <= args.working_box <= args.box:
        ap.error("--box and --working-box must be even, 8 <= working box <= box")
    out = Path(args.out)
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    full, work = out / "full", out / "working"
    sim = full / "data"
    shift = round(SHIFT_A / args.apix, 2)
    params = {"n": args.n, "box": args.box, "apix": args.apix, "working_box": args.working_box, "shift": shift}
    stamp = out / "data.json"
    t_sim = t_crop = 0.0
    if not (stamp.exists() and json.loads(stamp.read_text()) == params):
        shutil.rmtree(sim, ignore_errors=True)
        shutil.rmtree(work / "data", ignore_errors=True)
        t0 = time.time()
        subprocess.run([BIN / "r2d", "simulate", "--map", str(MAP), "--map-apix", str(MAP_APIX),
                        "--apix", str(args.apix), "--box", str(args.box), "--n", str(args.n),
                        "--snr", "0.01", "--snr-disc", "0.4", "--ctf", "full", "--defocus", "8000", "25000",
                        "--astigmatism", "500", "--bfactor", "100", "--junk", "0.05", "--junk-kinds", "all",
                        "--shift", str(shift), "--seed", "1", "-o", str(sim)], check=True, env=env)
        t_sim = time.time() - t0
        t0 = time.time()
        (work / "data").mkdir(parents=True, exist_ok=True)
        wapix = fourier_crop_stack(sim / "particles.mrcs", work / "data" / "particles.mrcs", args.working_box)
        working_star(sim / "particles.star", work / "data" / "particles.star", args.working_box, wapix)
        t_crop = time.time() - t0
        stamp.write_text(json.dumps(params))
    wapix = args.apix * args.box / args.working_box

    cfg = {"ncls": args.ncls, "iter": args.iter, "seed": args.seed}
    patterns = rule_patterns()
    wall, rules, errors, asked = {}, {}, {}, {}
    for name, wd, data in (("full", full, sim), ("working", work, work / "data")):
        asked[name] = requested_mb(wd, data / "particles.star", cfg)
        wall[name] = run_workflow(wd, data / "particles.star", cfg, args.cores, env)
        rules[name] = per_rule(wd / "run", patterns)
        errors[name] = view_errors(wd / "run", sim / "truth.tsv", args.iter, env)

    print(f"\nfull: {args.n} x {args.box} px at {args.apix:g} Å/px (maxres 8 Å: its own working stack); "
          f"working: {args.working_box} px at {wapix:g} Å/px; ncls {args.ncls}, iter {args.iter}, "
          f"{args.cores} cores")
    if t_sim:
        print(f"simulate {t_sim:.0f} s, Fourier crop {t_crop:.1f} s")
    names = sorted(set(rules["full"]) | set(rules["working"]))
    print(f"\n{'rule':22s} {'jobs':>5s} {'full s':>9s} {'full MB':>8s} {'asked':>6s} {'work s':>9s} "
          f"{'work MB':>8s} {'asked':>6s} {'ratio':>6s}")
    tot = {"full": 0.0, "working": 0.0}
    for r in names:
        f = rules["full"].get(r, (float("nan"), float("nan"), 0))
        w = rules["working"].get(r, (float("nan"), float("nan"), 0))
        tot["full"] += f[0] if f[2] else 0.0
        tot["working"] += w[0] if w[2] else 0.0
        ratio = f[0] / w[0] if w[0] > 0 else float("nan")
        fa, wa = (asked[k].get(r, 0) if rules[k].get(r) else 0 for k in ("full", "working"))
        print(f"{r:22s} {max(f[2], w[2]):5d} {f[0]:9.1f} {f[1]:8.0f} {fa or '':>6} {w[0]:9.1f} {w[1]:8.0f} "
              f"{wa or '':>6} {ratio:6.1f}")
    print(f"{'sum of jobs':22s} {'':5s} {tot['full']:9.1f} {'':8s} {'':6s} {tot['working']:9.1f} {'':8s} {'':6s} "
          f"{tot['full'] / max(tot['working'], 1e-9):6.1f}")
    print(f"{'workflow wall':22s} {'':5s} {wall['full']:9.1f} {'':8s} {'':6s} {wall['working']:9.1f} {'':8s} "
          f"{'':6s} {wall['full'] / max(wall['working'], 1e-9):6.1f}")
    peak = {k: max((v[1] for v in rules[k].values()), default=float("nan")) for k in rules}
    print(f"{'peak max RSS MB':22s} {'':5s} {'':9s} {peak['full']:8.0f} {'':6s} {'':9s} {peak['working']:8.0f}")

    print(f"\n{'classmx':8s} {'full':>8s} {'working':>8s} {'random':>8s}   (view error, degrees)")
    for it in range(0, args.iter + 1):
        f, w = errors["full"].get(it), errors["working"].get(it)
        if f is None and w is None:
            continue
        rnd = (f or w)[1]
        print(f"{it:02d}       {f[0] if f else float('nan'):8.1f} {w[0] if w else float('nan'):8.1f} {rnd:8.1f}")
    res, apix, shape = centre_residuals(full / "run", sim / "truth.tsv")
    print(f"\nfull-size exports: class averages {shape[0]} x {shape[1]} px at {apix:g} Å/px; true molecule "
          f"centres moved by the exported poses, distance from their class's point over {len(res)} good "
          f"particles: median {np.median(res):.1f} Å, mean {res.mean():.1f} Å, 90th percentile "
          f"{np.percentile(res, 90):.1f} Å")
    if not args.keep:
        for wd in (full, work):
            shutil.rmtree(wd / "run", ignore_errors=True)
            shutil.rmtree(wd / ".snakemake", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
