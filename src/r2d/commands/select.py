"""Write a particle subset by class: chosen class numbers, or an automatic selection by class score.

SOURCE is an exported ``particles.star`` (``r2d export``; the workflow writes
``{path}/export/particles.star``) or a run folder. Class numbers are 1-based, as
``rlnClassNumber`` and the report's montages. The subset is a RELION 3.1 STAR file (optics block
kept, image names rewritten for its location) and, with ``--mrcs``, a stack of just those
particles. The class table (particles, resolution, contrast, score, kept) is printed.

``--auto`` keeps the classes whose score (``r2d.select``: log2 of resolution, contrast of the
average, particle count and, when the export has ``r2dStability``, stability, relative to the
typical class; a small class as stable as a typical one, with typical contrast, is not marked
down for its size) is at least ``--threshold`` (default -1, i.e. about half as good as the
typical class; ``--score`` picks a single criterion). Then it judges each particle on its own
(``r2d.junk``): a classifier that the class decisions teach gives every particle a junk
likelihood from its image and its score, and the particles at or above ``--junk-p`` (default
0.7) are dropped, whichever class they are in; a good particle in a dropped class is kept, junk
in a kept class is dropped (``--junk-p 1``: off, the class decisions alone). Last it drops
particles whose score against their class average is an outlier (more than ``--outlier-z``
robust standard deviations worse than the class median; default 3). The class table says why
each class was dropped and how many of its particles were kept.

``--min-stability S`` drops the classes whose stability (``r2dStability``, from the workflow's
stability repeats) is below S; ``--unstable-z Z`` drops the particles that agreed with no
repeat and score more than Z robust σ worse than their class median.

``--rebalance N`` then caps over-represented views (preferred orientation; cryoSPARC's Rebalance
2D): classes whose averages correlate at least ``--rebalance-ccc`` after the best rotation, shift
and mirror form a view group (``r2d.rebalance``), and a group with more than N selected particles
keeps N of them, drawn at random with ``--seed``. The group table is printed.

  $ r2d select r2d_01 --classes 1,4,7 -o good.star
  $ r2d select r2d_01/export/particles.star --auto -o good.star --mrcs good.mrcs
  $ r2d select r2d_01 --exclude-classes 3,12 -o no_junk.star
  $ r2d select r2d_01 --auto --rebalance 300 -o balanced.star
"""

from __future__ import annotations

import numpy as np

from r2d.errors import ConfigError, UserError
from r2d.export import PATH_MODES
from r2d.junk import JUNK_P
from r2d.rebalance import DEFAULT_GROUP_CCC
from r2d.select import (DEFAULT_OUTLIER_Z, DEFAULT_THRESHOLD, SCORES, class_column, format_table,
                        load_class_averages,
                        parse_classes, resolve_source, score_classes, score_outliers, select_classes,
                        unstable_misfits, write_subset)


def add_args(p):
    p.add_argument("source", help="exported particles.star, or a run folder (uses RUN/export/particles.star)")
    p.add_argument("-o", "--output", required=True, help="subset STAR file to write")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--classes", help="class numbers to keep, e.g. 1,4,7 or 2-5,9")
    how.add_argument("--auto", action="store_true", help="keep the classes scoring at least --threshold")
    p.add_argument("--exclude-classes", help="class numbers to drop (after --classes/--auto; alone: keep all others)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="--auto: lowest score kept (default %(default)s; 0 = typical class)")
    p.add_argument("--score", choices=SCORES, default="combined", help="--auto: what to rank classes by")
    p.add_argument("--outlier-z", type=float, default=None,
                   help=f"drop particles scoring more than Z robust σ worse than their class median "
                        f"(default {DEFAULT_OUTLIER_Z:g} with --auto, off otherwise; 0 = off)")
    p.add_argument("--junk-p", type=float, default=JUNK_P, metavar="P",
                   help="--auto: drop particles whose junk likelihood (r2d.junk: from the image and the "
                        "score, taught by the class decisions) is at least P (default %(default)s; 1 = off, "
                        "keep whole classes)")
    p.add_argument("--unstable-z", type=float, default=None, metavar="Z",
                   help="also drop particles of the kept classes that agreed with no stability repeat "
                        "(r2dStability 0) and score more than Z robust σ worse than their class median, e.g. 1")
    p.add_argument("--drop-excluded", action="store_true",
                   help="also drop particles that classkeep left out of their class average (r2dExcluded = 1)")
    p.add_argument("--min-stability", type=float, default=None, metavar="S",
                   help="also drop classes whose r2dStability (class_averages.star, the workflow's "
                        "stability repeats) is below S, e.g. 0.5")
    p.add_argument("--rebalance", type=int, metavar="N",
                   help="keep at most N particles of each view group (classes with similar averages)")
    p.add_argument("--rebalance-ccc", type=float, default=DEFAULT_GROUP_CCC, metavar="C",
                   help="--rebalance: classes whose aligned averages correlate at least C on average "
                        "form one view group (default %(default)s)")
    p.add_argument("--rebalance-groups", type=int, metavar="G",
                   help="--rebalance: make G view groups instead of cutting at --rebalance-ccc")
    p.add_argument("--seed", type=int, default=0, help="--rebalance: random seed of the draw (default 0)")
    p.add_argument("--mrcs", help="also write the selected particle images to this MRC stack")
    p.add_argument("--class-averages", help="class_averages.star (default: next to particles.star)")
    p.add_argument("--paths", choices=[m for m in PATH_MODES if m != "keep"], default="relative",
                   help="image names relative to the output STAR file (default) or absolute")
    p.add_argument("-n", "--dry-run", action="store_true", help="print the selection, write nothing")


def _check(args):
    if args.rebalance is not None and args.rebalance < 1:
        raise ConfigError(f"--rebalance {args.rebalance}: the cap must be at least 1 particle per view group")
    if not -1 <= args.rebalance_ccc <= 1:
        raise ConfigError(f"--rebalance-ccc {args.rebalance_ccc}: a correlation coefficient, in [-1, 1]")
    if not 0 < args.junk_p <= 1:
        raise ConfigError(f"--junk-p {args.junk_p}: a probability in (0, 1]; 1 turns the particle step off")
    if args.rebalance_groups is not None and args.rebalance_groups < 1:
        raise ConfigError(f"--rebalance-groups {args.rebalance_groups}: need at least 1 group")


def _rebalance(args, ca, cls, mask):
    """The mask after the view-group cap, and the printed group table."""
    from r2d.rebalance import cap_groups, similarity, view_groups

    if ca is None:
        raise UserError("--rebalance needs class_averages.star and class_averages.mrcs next to particles.star "
                        "(or --class-averages); re-run r2d export")
    imgs = ca[1]
    groups = view_groups(similarity(imgs), min_ccc=args.rebalance_ccc, ngroups=args.rebalance_groups)
    ok = mask & (cls >= 1) & (cls <= len(imgs))
    pgroup = np.where(ok, groups[np.clip(cls, 1, len(imgs)) - 1], -1)
    kept = cap_groups(pgroup, args.rebalance, args.seed)
    lines = [f"{'group':>5} {'selected':>8} {'kept':>6}  classes"]
    for g in range(int(groups.max(initial=-1)) + 1):
        n_sel = int(np.sum(pgroup == g))
        if n_sel:
            members = ", ".join(str(k + 1) for k in np.flatnonzero(groups == g))
            lines.append(f"{g + 1:5d} {n_sel:8d} {int(np.sum(kept & (pgroup == g))):6d}  {members}")
    return mask & kept, "\n".join(lines)


def _particle_step(args, src, parts, cls, table, barred_classes, mask):
    """``--auto``'s particle step (``r2d.junk``): the mask after the junk likelihood, and a note.
    No particle of ``barred_classes`` (``--exclude-classes``, ``--min-stability``) is selected."""
    from r2d import io
    from r2d.errors import InputError
    from r2d.junk import junk_probability, stack_features

    if "r2dScore" not in parts:
        raise UserError(f"{src}: no r2dScore column for --auto's particle step; re-run r2d export (or --junk-p 1)")
    try:
        stack = io.open_stack(src)
    except InputError as e:
        raise InputError(f"{e}\n--auto's particle step reads the particle images; make them readable from "
                         f"{src}, or use --junk-p 1 to select by class alone") from None
    auto_keep = select_classes(cls, table=table, auto=True, threshold=args.threshold)
    classified = cls >= 1
    X = np.column_stack([parts["r2dScore"].to_numpy(dtype=float), stack_features(stack)])
    dropped = ~np.isin(cls, auto_keep)
    p = junk_probability(X[classified], dropped[classified], args.junk_p)
    if p is None:
        return mask, ("particle step skipped: the class step kept or dropped too few particles to learn "
                      "from; whole classes selected")
    junk = np.zeros(len(cls), dtype=bool)
    junk[classified] = p >= args.junk_p
    new = classified & ~junk & ~np.isin(cls, list(barred_classes))
    n_out = int((mask & ~new).sum())
    n_in = int((new & ~mask).sum())
    return new, (f"particle step (junk likelihood): dropped {n_out} particles of the kept classes (at least "
                 f"{args.junk_p:g}) and kept {n_in} of the dropped classes (below it)")


def main(args):
    from r2d.export import read_star_tables

    _check(args)
    src = resolve_source(args.source)
    parts = read_star_tables(src).get("particles")
    if parts is None or "rlnClassNumber" not in parts:
        raise UserError(f"{src}: no rlnClassNumber column; give the particles.star that r2d export wrote")
    cls = parts["rlnClassNumber"].to_numpy(dtype=int)
    ca = load_class_averages(src, args.class_averages)
    table = None
    counts = {int(k): int(v) for k, v in zip(*np.unique(cls[cls >= 1], return_counts=True))}
    if ca is not None:
        res, imgs, apix = ca
        members = np.bincount(cls[cls >= 1], minlength=len(imgs) + 1)[1:len(imgs) + 1]
        table = score_classes(members, res, imgs, apix, args.score,
                              stability=class_column(src, "r2dStability", args.class_averages))
    keep = select_classes(cls, classes=parse_classes(args.classes), exclude=parse_classes(args.exclude_classes),
                          table=table, auto=args.auto, threshold=args.threshold)
    barred = set(parse_classes(args.exclude_classes))
    if args.min_stability is not None:
        stab = class_column(src, "r2dStability", args.class_averages)
        if stab is None:
            raise UserError(f"{src}: no r2dStability in class_averages.star for --min-stability; run the workflow "
                            "with stability on (the default) or r2d export --stability")
        barred |= {k for k in counts if k <= len(stab) and not stab[k - 1] >= args.min_stability}
        low = [k for k in keep if k in barred]
        keep = [k for k in keep if k not in low]
        print(f"stability below {args.min_stability:g}: classes " + (", ".join(
            f"{k} ({stab[k - 1]:.2f})" for k in low) or "none"))
    mask = np.isin(cls, keep) & (cls >= 1)
    junk_note = None
    if args.auto and args.junk_p < 1:
        mask, junk_note = _particle_step(args, src, parts, cls, table, barred, mask)
    if args.drop_excluded:
        if "r2dExcluded" not in parts:
            raise UserError(f"{src}: no r2dExcluded column for --drop-excluded; re-run r2d export")
        mask &= parts["r2dExcluded"].to_numpy() == 0
    z = args.outlier_z if args.outlier_z is not None else (DEFAULT_OUTLIER_Z if args.auto else 0.0)
    n_out = 0
    if z > 0:
        if "r2dScore" not in parts:
            raise UserError(f"{src}: no r2dScore column for the outlier step; re-run r2d export (or --outlier-z 0)")
        out = score_outliers(np.where(mask, cls, 0), parts["r2dScore"].to_numpy(dtype=float), z)
        n_out = int(out.sum())
        mask &= ~out
    n_unstable = 0
    if args.unstable_z is not None:
        if "r2dStability" not in parts or "r2dScore" not in parts:
            raise UserError(f"{src}: no r2dStability or r2dScore column for --unstable-z; run the workflow with "
                            "stability on (the default) or r2d export --stability")
        out = unstable_misfits(np.where(mask, cls, 0), parts["r2dScore"].to_numpy(dtype=float),
                               parts["r2dStability"].to_numpy(dtype=float), args.unstable_z) & mask
        n_unstable = int(out.sum())
        mask &= ~out
    kept_counts = {int(k): int(v) for k, v in zip(*np.unique(cls[mask], return_counts=True))}
    print(format_table(table, counts, keep, args.threshold, kept_counts=kept_counts))
    print(f"kept {len(keep)} of {len(counts)} classes: {', '.join(map(str, keep)) or '-'}")
    if junk_note:
        print(junk_note)
    if z > 0:
        print(f"dropped {n_out} particles scoring more than {z:g} robust σ worse than their class median")
    if args.unstable_z is not None:
        print(f"dropped {n_unstable} particles that agreed with no stability repeat and score more than "
              f"{args.unstable_z:g} robust σ worse than their class median")
    if args.rebalance is not None:
        before = int(mask.sum())
        mask, groups = _rebalance(args, ca, cls, mask)
        print(groups)
        print(f"rebalanced: at most {args.rebalance} particles per view group, {before - int(mask.sum())} dropped")
    print(f"kept {int(mask.sum())} of {len(cls)} particles")
    if not mask.any():
        raise UserError("the selection is empty; nothing written (check the class numbers or --threshold)")
    if args.dry_run:
        return 0
    n = write_subset(src, mask, args.output, mrcs=args.mrcs, paths=args.paths)
    print(f"wrote {args.output} ({n} particles)" + (f" and {args.mrcs}" if args.mrcs else ""))
    return 0
