#!/usr/bin/env python
"""r2d against EMAN2's own numbers on the 80 image pairs of ../shared/data/eman2 (its README.md).

Prints three tables (skipped cleanly when ../shared is absent):

* comparators: per comparator the largest relative difference of r2d's value to EMAN2's
  ``particle.cmp(NAME, ref, OPTS)`` and the Spearman rank correlation over the 80 pairs;
* aligners: per aligner and SNR group (cases 0-39 SNR 1, 40-79 SNR 0.1) the shares of pairs
  whose composed transform ``align2d · applied`` is within 2° / 0.5 px and within 10° / 1.5 px
  of the identity with the right mirror, for r2d and for EMAN2 (EMAN2's from the fixture), and
  the time of each (r2d: wall seconds of one call for all 80 pairs on ``--threads`` threads,
  after an untimed call that builds the cached grids; EMAN2: the sum of its per-pair CPU
  seconds, from the fixture);
* the pairs where EMAN2's ``rotate_translate_tree`` fails (outside 10° / 1.5 px or the wrong
  mirror) and r2d's tree and flip aligners do not.

  $ .venv/bin/python benchmarks/eman2_agreement.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from r2d import transforms as tf
from r2d.align import align
from r2d.cmp import compare

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "eman2"
COMPARATORS = ["ccc", "dot:normalize=1", "sqeuclidean:normto=1", "phase", "frc", "frc:nweight=1", "optvariance"]
#: fixture name -> (r2d aligner, ralign)
ALIGNERS = {
    "rotate_translate_flip": ("rotate_translate_flip:maxshift=8", None),
    "rotate_translate_flip+refine": ("rotate_translate_flip:maxshift=8", "refine"),
    "rotate_translate_tree": ("rotate_translate_tree:maxshift=8:flip=1", None),
}
GROUPS = {"SNR 1": slice(0, 40), "SNR 0.1": slice(40, 80)}


def fixture_key(option: str) -> str:
    name, *items = option.split(":")
    return name + json.dumps({k: int(v) for k, v in (it.split("=") for it in items)}, sort_keys=True)


def params_of(entries):
    return tuple(np.array([e[k] for e in entries], dtype=np.float64) for k in ("alpha", "tx", "ty", "mirror"))


def within(applied, found, deg, px):
    """Per pair: ``found ∘ applied`` within ``deg`` and ``px`` of the identity, not mirrored."""
    a, x, y, m = tf.compose(applied, found)
    return (m < 0.5) & (np.abs((a + 180.0) % 360.0 - 180.0) <= deg) & (np.hypot(x, y) <= px)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if not (DATA / "eman2_fixture.npz").exists():
        print(f"skipped: {DATA / 'eman2_fixture.npz'} not found (../shared absent)")
        return 0
    d = np.load(DATA / "eman2_fixture.npz")
    cases = json.loads((DATA / "eman2_fixture.json").read_text())["cases"]
    parts, refs = d["particles"].astype(np.float32), d["refs"].astype(np.float32)
    applied = params_of([c["applied"] for c in cases])

    print(f"comparators: r2d vs EMAN2 2.99.72 on {len(cases)} pairs (this = particle, to = reference)")
    print(f"  {'comparator':<22} {'max rel. diff':>13} {'Spearman':>9}")
    for opt in COMPARATORS:
        want = np.array([c["cmp"][fixture_key(opt)] for c in cases], dtype=np.float64)
        got = compare(parts, refs, opt)
        rel = np.abs(got - want) / np.abs(want)
        print(f"  {opt:<22} {rel.max():>13.1e} {spearmanr(got, want)[0]:>9.4f}")

    print("\naligners: share within 2° / 0.5 px and within 10° / 1.5 px, right mirror (maxshift 8)")
    print(f"  {'aligner':<30} {'':<6} {'SNR 1':>11} {'SNR 0.1':>11} {'seconds':>8}")
    pairs = np.arange(len(parts))
    ok10 = {}
    for name, (opt, ralign) in ALIGNERS.items():
        kw = dict(ralign=ralign, raligncmp="ccc" if ralign else None, workers=args.threads)
        align(parts[:2], refs, opt, "ccc", pairs=pairs[:2], **kw)  # untimed: builds the cached polar grids
        t0 = time.perf_counter()
        a = align(parts, refs, opt, "ccc", pairs=pairs, **kw)
        dt = time.perf_counter() - t0
        eman = params_of([c["align"][name] for c in cases])
        for who, found, secs in (("r2d", a.params(), dt), ("EMAN2", eman, sum(c["align"][name]["cpu_s"] for c in cases))):
            w2, w10 = within(applied, found, 2, 0.5), within(applied, found, 10, 1.5)
            ok10[who, name] = w10
            cells = " ".join(f"{w2[s].mean():>5.2f}/{w10[s].mean():.2f}" for s in GROUPS.values())
            print(f"  {name:<30} {who:<6} {cells} {secs:>8.2f}")

    tree_fail = ~ok10["EMAN2", "rotate_translate_tree"]
    print(f"\nEMAN2 rotate_translate_tree outside 10° / 1.5 px on {tree_fail.sum()} of {len(cases)} pairs "
          f"({tree_fail[GROUPS['SNR 1']].sum()} at SNR 1, {tree_fail[GROUPS['SNR 0.1']].sum()} at SNR 0.1); of these,")
    for name in ("rotate_translate_tree", "rotate_translate_flip", "rotate_translate_flip+refine"):
        fixed = tree_fail & ok10["r2d", name]
        print(f"  r2d {name:<28} within on {fixed.sum():>2} "
              f"({fixed[GROUPS['SNR 1']].sum()} at SNR 1, {fixed[GROUPS['SNR 0.1']].sum()} at SNR 0.1)")
    both = tree_fail & ok10["r2d", "rotate_translate_tree"] & ok10["r2d", "rotate_translate_flip"]
    print(f"  r2d tree and flip both within on {both.sum()}; pairs: {np.flatnonzero(both).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
