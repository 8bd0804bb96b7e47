"""Score a classification against simulation truth (view error).

Reads ``RUNDIR/classmx_YY.h5`` (default: the highest ``YY`` present; datasets ``class``, int,
-1 = excluded, and ``particle``, the row's index in the input stack), or, when present, the
membership of that iteration's class averages (``resultmx_YY.h5``; ``resultmx_init.h5`` for
iteration 0: the classes as delivered, after class averaging refilled empty classes by
division), and the simulator's ``truth.tsv``, and prints the view error (mean angle in degrees of each particle's true view to
its class medoid's, ``d`` and ``-d`` equal; see ``r2d.evaluate``), the same figure for a random
assignment with the same class sizes, and the number of classes. Junk particles (no view) and
excluded ones are not scored. ``--json FILE`` also writes these numbers.

With ``--map MAP.mrc`` it also scores the class averages of that iteration
(``classes_YY.hdf``; ``classes_init.hdf`` for iteration 0; ``--final``: the full-size
``classes_final.hdf``) at their own pixel size: the mean and median FRC-0.5
resolution in Å of each average against its best-matching noise-free projection of the map
(projected at the truth table's views, without shift or CTF; see
``r2d.evaluate.average_resolution``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from r2d.errors import InputError
from r2d.evaluate import random_view_error, view_error
from r2d.io import atomic_write, read_matrix

log = logging.getLogger(__name__)

_CLASSMX = re.compile(r"classmx_(\d+)\.h5$")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rundir", metavar="RUNDIR", help="run folder holding classmx_YY.h5 files")
    parser.add_argument("truth", metavar="TRUTH.tsv", help="truth table written by r2d simulate")
    parser.add_argument("--iteration", type=int, default=None, metavar="YY",
                        help="iteration to score (default: the highest present)")
    parser.add_argument("--final", action="store_true",
                        help="with --map: score the full-size classes_final.hdf (a run with a working stack; "
                             "the classes of the last iteration) instead of classes_YY.hdf")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the scores as JSON")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random assignment (default 0)")
    parser.add_argument("--map", metavar="MAP.mrc", default=None,
                        help="also score the class averages against noise-free projections of this map")
    parser.add_argument("--apix", type=float, default=None, help="pixel size of the map when its header has none")
    parser.add_argument("--threads", type=int, default=1)


def find_classmx(rundir: Path, iteration: int | None) -> tuple[Path, int]:
    """The ``classmx_YY.h5`` file of ``iteration`` (or the highest) in ``rundir``, and its YY."""
    if not rundir.is_dir():
        raise InputError(f"{rundir}: run folder not found; give the folder of an r2d run")
    found = {}
    for p in rundir.iterdir():
        m = _CLASSMX.fullmatch(p.name)
        if m:
            found[int(m.group(1))] = p
    if not found:
        raise InputError(f"{rundir}: no classmx_YY.h5 file; has the run classified anything yet?")
    if iteration is None:
        iteration = max(found)
    elif iteration not in found:
        raise InputError(f"{rundir}: no classmx file for iteration {iteration}; present: "
                         + ", ".join(str(k) for k in sorted(found)))
    return found[iteration], iteration


def read_truth(path: Path) -> pd.DataFrame:
    """The truth table (``r2d simulate``'s ``truth.tsv``) indexed by particle index."""
    if not path.is_file():
        raise InputError(f"{path}: truth table not found; give the truth.tsv written by r2d simulate")
    try:
        truth = pd.read_csv(path, sep="\t")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: cannot read as a tab-separated table ({exc})") from None
    missing = [c for c in ("index", "view_x", "view_y", "view_z") if c not in truth.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; is it r2d's truth.tsv?")
    if truth["index"].duplicated().any():
        raise InputError(f"{path}: duplicate particle indices in column 'index'")
    return truth.set_index("index")


def read_labels(path: Path, n_truth_index: pd.Index) -> np.ndarray:
    """Class label per truth row (``-1`` when excluded or absent from the classmx file)."""
    data = read_matrix(path)
    if "class" not in data:
        raise InputError(f"{path}: no 'class' dataset; is it a classmx file?")
    cls = np.asarray(data["class"])
    if cls.ndim == 2:  # (n, nbest): the best class is the first column
        cls = cls[:, 0]
    cls = cls.reshape(-1).astype(np.int64)
    part = np.asarray(data.get("particle", np.arange(len(cls)))).reshape(-1).astype(np.int64)
    if len(part) != len(cls):
        raise InputError(f"{path}: 'class' has {len(cls)} rows but 'particle' has {len(part)}")
    rows = n_truth_index.get_indexer(part)
    if (rows < 0).any():
        bad = part[rows < 0][:5]
        raise InputError(f"{path}: particle indices {bad.tolist()} are not in the truth table; "
                         "was this run made from that simulation?")
    labels = np.full(len(n_truth_index), -1, dtype=np.int64)
    labels[rows] = cls
    return labels


def main(args: argparse.Namespace) -> int:
    path, iteration = find_classmx(Path(args.rundir), args.iteration)
    delivered = path.parent / f"resultmx_{'init' if iteration == 0 else f'{iteration:02d}'}.h5"
    if delivered.exists():  # the classes as averaged: empty classes refilled by division
        path = delivered
    truth = read_truth(Path(args.truth))
    labels = read_labels(path, truth.index)
    dirs = truth[["view_x", "view_y", "view_z"]].to_numpy(dtype=np.float64)
    scored = (labels >= 0) & np.isfinite(dirs).all(axis=1)
    result = {
        "classmx": str(path),
        "iteration": iteration,
        "view_error_deg": view_error(labels, dirs),
        "random_view_error_deg": random_view_error(labels, dirs, seed=args.seed),
        "n_classes": int(len(np.unique(labels[labels >= 0]))),
        "n_particles": int(len(labels)),
        "n_scored": int(scored.sum()),
        "n_excluded": int((labels < 0).sum()),
    }
    if args.map:
        result.update(_average_scores(path.parent, iteration, truth, args))
    print(f"{path.name}: view error {result['view_error_deg']:.2f} deg "
          f"(random assignment {result['random_view_error_deg']:.2f} deg), "
          f"{result['n_classes']} classes, {result['n_scored']} of {result['n_particles']} "
          f"particles scored ({result['n_excluded']} excluded)")
    if args.map:
        print(f"class averages: FRC-0.5 resolution against the best-matching noise-free projection "
              f"mean {result['average_frc05_mean_A']:.1f} Å, median {result['average_frc05_median_A']:.1f} Å "
              f"({result['n_averages']} non-empty averages)")
    if args.json:
        with atomic_write(args.json) as tmp:
            clean = {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                     for k, v in result.items()}  # NaN is not JSON
            tmp.write_text(json.dumps(clean, indent=2) + "\n")
    return 0


def _average_scores(rundir: Path, iteration: int, truth: pd.DataFrame, args) -> dict:
    """Mean/median FRC-0.5 resolution of the iteration's class averages (see module docstring)."""
    from r2d.evaluate import average_resolution
    from r2d.io import read_image_headers, read_image_stack, read_map
    from r2d.simulate import render

    name = "final" if args.final else "init" if iteration == 0 else f"{iteration:02d}"
    stack = rundir / f"classes_{name}.hdf"
    if not stack.is_file():
        raise InputError(f"{stack}: class averages not found; has iteration {iteration} finished?")
    avg = np.asarray(read_image_stack(stack), dtype=np.float32)
    apix_avg = read_image_headers(stack)[0].get("apix_x") if len(avg) else None
    vol, apix = read_map(args.map, args.apix)
    views = truth[~truth["junk"].astype(bool)].copy() if "junk" in truth else truth.copy()
    views[["shift_x", "shift_y"]] = 0.0
    apix_avg = float(apix_avg or apix)  # projections at the averages' pixel size (working or full size)
    proj = render(vol, views.reset_index(), avg.shape[-1], apix_avg, map_pixel_size=apix, ctf=None)
    res, _ = average_resolution(avg, proj, apix_avg, workers=args.threads)
    ok = np.isfinite(res)
    return {"average_frc05_mean_A": float(np.mean(res[ok])) if ok.any() else float("nan"),
            "average_frc05_median_A": float(np.median(res[ok])) if ok.any() else float("nan"),
            "n_averages": int(ok.sum())}
