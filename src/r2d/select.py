"""Particle subsets by class (``r2d select``): by class number, or automatically by a class score.

Works on the exports of a run (``r2d export``, or the workflow's ``{path}/export/``):
``particles.star`` and, for the automatic selection and the class table, ``class_averages.star``
+ ``class_averages.mrcs`` in the same folder. Class numbers are 1-based (``rlnClassNumber``);
particles with class 0 (not classified) are never selected.

**Automatic selection** (``--auto``) has three steps.

1. *Classes.* Every class ``k`` (``N_k`` particles) gets three terms, base-2 logarithms
   relative to the *typical* class, the particle-weighted median over all classes (the value of
   the class the median particle sits in), so 0 is typical and −1 is "half as good":

   * contrast ``t_con = ½ · log2(s_k / s_typ)`` (capped at +1), with ``s_k = (C_k² − 1) / N_k``.
     ``C_k`` is the standard deviation of the class average inside the disc of radius
     ``0.35 · box`` over that in the corners outside radius ``0.45 · box``. ``C² − 1`` estimates
     the signal-to-noise variance ratio of the average: about 0 for an average of noise (equally
     rough everywhere), and growing in proportion to ``N_k`` for real particles, so ``s_k`` is the
     per-particle signal of the class and does not favour big classes;
   * resolution ``t_res = min(0, log2(R_typ / R_k))`` from ``rlnEstimatedResolution`` (Å,
     half-set FSC = 0.143 of the class); a class without one (999 or missing, e.g. fewer than two
     particles in the average) counts as the box size. Only worse-than-typical resolution counts:
     smooth junk (blobs) can reach a deceptively good FSC;
   * particle count ``t_count = ½ · log2(N_k / N_med)`` (capped at +1), where ``N_med`` is the
     median class size (over classes, not particles: the size k-means gives an ordinary class).
     A class of a quarter of the median size loses 1, a class of 4× the median gains 1 (big but
     blurred, heterogeneous classes are not junk when junk is a minority).

   * stability ``t_stab = min(0, ½ · log2(Q_k / (0.8 · Q_typ)))`` from ``r2dStability`` (the
     workflow's stability repeats): only a class clearly less reproducible than typical loses
     (an average of noise or a mixture of views, whose members align differently in every
     repeat); within 80 % of the typical stability counts as typical (three repeats make a
     noisy estimate).

   A *stable rare view* (``Q_k >= 0.8 · Q_typ`` and ``t_con >= 0``: about as reproducible as a
   typical class and with at least typical per-particle signal, yet under half the median size,
   ``t_count < −0.5``) loses nothing for its size (``t_count`` set to 0): small classes of real
   views stay.

   The score is ``S_k = t_con + t_res + t_count + t_stab`` (a term whose input is missing is
   left out); classes with ``S_k >= threshold`` are kept (default −1). The class table names,
   for each dropped class, the terms that brought it below the threshold. ``--score contrast``,
   ``resolution``, ``count`` or ``stability`` ranks by one term alone.
2. *Particles, one by one* (``r2d.junk``). A classifier learns, from each particle's image and
   its ``r2dScore``, to tell the members of the dropped classes from those of the kept ones;
   every particle whose junk likelihood is at least ``--junk-p`` (default 0.7) is dropped and
   every other one kept, whatever its class's decision. Junk that shares a class with good
   particles goes, and good particles of a class dropped for its size or stability stay.
   ``--exclude-classes`` and ``--min-stability`` still drop whole classes; ``--junk-p 1``
   turns this step off (whole classes only).
3. *Outliers.* Within each class, selected particles whose score against the class average
   (``r2dScore``, lower is better) lies more than ``outlier_z`` robust standard deviations
   (1.4826 × median absolute deviation) above the class median are dropped (default 3).
   ``--outlier-z 0`` turns this off.

``--unstable-z Z`` (off by default) also drops, in the kept classes, the particles that agreed
with none of the stability repeats (``r2dStability`` 0) and score more than ``Z`` robust σ worse
than their class median: junk neither fits its class nor aligns the same way twice.

These rules and constants are heuristics, measured on simulated junk (``docs/benchmarks.md``,
"Cleaning a data set with junk"). Look at the class table (its "selected" and "why" columns)
before trusting them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from r2d import io
from r2d.errors import InputError, UserError
from r2d.export import UNKNOWN_RESOLUTION, read_star_tables, write_star

log = logging.getLogger(__name__)

SCORES = ("combined", "resolution", "count", "contrast", "stability")
DEFAULT_THRESHOLD = -1.0
DEFAULT_OUTLIER_Z = 3.0
TERM_CAP = 1.0
STABILITY_FLOOR = 0.01  # stability below it counts as it (log of 0)
STABLE_SHARE = 0.8  # a class at least this share of the typical stability counts as stable
RARE_COUNT = -0.5  # a stable class this far below the median size (half of it) is a rare view


def resolve_source(source) -> Path:
    """The exported ``particles.star`` of ``source`` (that file itself, or a run folder)."""
    p = Path(source)
    if p.is_dir():
        for cand in (p / "export" / "particles.star", p / "particles.star"):
            if cand.is_file():
                return cand
        raise InputError(f"{p}: no export/particles.star; finish the workflow (its export rule) or run "
                         f"`r2d export {p} --input PARTICLES` first")
    if not p.is_file():
        raise InputError(f"{p}: not found; give an exported particles.star or a run folder")
    return p


def parse_classes(text: str | None) -> list[int]:
    """``"1,4,7"`` or ``"1-3,8"`` -> sorted 1-based class numbers."""
    if not text:
        return []
    out = set()
    for tok in str(text).replace(" ", "").split(","):
        if not tok:
            continue
        try:
            if "-" in tok[1:]:
                lo, hi = tok.split("-", 1) if not tok.startswith("-") else (tok, tok)
                out.update(range(int(lo), int(hi) + 1))
            else:
                out.add(int(tok))
        except ValueError:
            raise UserError(f"class list {text!r}: {tok!r} is not a class number or range (e.g. 1,4,7 or 2-5)") from None
    bad = sorted(k for k in out if k < 1)
    if bad:
        raise UserError(f"class list {text!r}: class numbers start at 1 (as rlnClassNumber), got {bad[0]}")
    return sorted(out)


def contrast(averages: np.ndarray, inner: float = 0.35, outer: float = 0.45) -> np.ndarray:
    """Per-image std inside radius ``inner·box`` over std outside ``outer·box`` (see module doc)."""
    a = np.asarray(averages, dtype=np.float64)
    n = a.shape[-1]
    v, u = np.mgrid[0:n, 0:n] - n // 2
    r = np.hypot(u, v)
    cin, cout = r < inner * n, r > outer * n
    s_in = a[:, cin].std(axis=1)
    s_out = a[:, cout].std(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = s_in / s_out
    return np.where(np.isfinite(c), c, np.where(s_in > 0, np.inf, 1.0))


def _typical(values: np.ndarray, weights: np.ndarray) -> float:
    """Particle-weighted median of per-class values."""
    ok = np.isfinite(values) & (weights > 0)
    if not ok.any():
        return float("nan")
    v, w = values[ok], weights[ok]
    order = np.argsort(v)
    cw = np.cumsum(w[order])
    return float(v[order][np.searchsorted(cw, cw[-1] / 2)])


@dataclass
class ClassTable:
    """Per-class numbers (arrays over classes 1..K): ``number``, ``members``, ``resolution``
    (Å, NaN unknown), ``contrast``, ``stability`` (NaN unknown), the terms, ``score`` and
    ``rare`` (a stable rare view: its count term floored at 0)."""

    number: np.ndarray
    members: np.ndarray
    resolution: np.ndarray
    contrast: np.ndarray
    terms: dict
    score: np.ndarray
    stability: np.ndarray | None = None
    rare: np.ndarray | None = None

    def rows(self):
        for i, k in enumerate(self.number):
            yield int(k), int(self.members[i]), float(self.resolution[i]), float(self.contrast[i]), \
                {t: float(v[i]) for t, v in self.terms.items()}, float(self.score[i])

    def reason(self, i: int, kept: bool, threshold: float = DEFAULT_THRESHOLD) -> str:
        """Why class index ``i`` was kept or dropped, in words (for the class table)."""
        if self.members[i] == 0:
            return "empty"
        if kept:
            return "rare view: stable, counted at its size" if self.rare is not None and self.rare[i] else ""
        low = sorted((v[i], t) for t, v in self.terms.items() if v[i] < 0)
        if self.score[i] >= threshold:
            return "excluded by class number or stability"
        words = {"contrast": "low contrast", "resolution": "low resolution", "count": "few particles",
                 "stability": "unstable"}
        return ", ".join(f"{words[t]} ({v:+.2f})" for v, t in low if v <= -0.25) or "below the threshold"


def score_classes(members, resolution, averages, apix: float | None = None, score: str = "combined",
                  stability=None) -> ClassTable:
    """Scores of classes 1..K (see the module docstring). ``resolution`` in Å (NaN, ≤ 0 or 999 =
    unknown), ``averages`` ``(K, n, n)``, ``apix`` Å/px (for the worst resolution, the box),
    ``stability`` ``(K,)`` class stability 0–1 (NaN unknown) or None."""
    if score not in SCORES:
        raise UserError(f"--score {score!r}: use one of {', '.join(SCORES)}")
    members = np.asarray(members, dtype=np.float64)
    K = len(members)
    res = np.asarray(resolution, dtype=np.float64) if resolution is not None else np.full(K, np.nan)
    res = np.where(np.isfinite(res) & (res > 0) & (res < UNKNOWN_RESOLUTION), res, np.nan)
    box = np.shape(averages)[-1]
    worst = box * (apix or 1.0)
    con = contrast(averages)
    terms = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        signal = np.where(members > 0, (np.minimum(con, 1e6) ** 2 - 1) / np.maximum(members, 1), 0.0)
        typ = _typical(signal, members)
        floor = 1e-6 * typ if typ > 0 else 1e-12
        terms["contrast"] = np.minimum(TERM_CAP, 0.5 * np.log2(np.maximum(signal, floor) / max(typ, floor)))
        if np.isfinite(res).any():
            r = np.where(np.isfinite(res), res, worst)
            terms["resolution"] = np.minimum(0.0, np.log2(_typical(r, members) / r))
        n_med = float(np.median(members[members > 0])) if (members > 0).any() else 1.0
        terms["count"] = np.minimum(TERM_CAP, 0.5 * np.log2(np.maximum(members, 0.5) / n_med))
        stab, rare = None, None
        if stability is not None and np.isfinite(stability).any():
            stab = np.asarray(stability, dtype=np.float64)
            typ_q = _typical(stab, members)
            ref_q = max(STABLE_SHARE * typ_q, STABILITY_FLOOR)
            terms["stability"] = np.where(np.isfinite(stab), np.minimum(
                0.0, 0.5 * np.log2(np.maximum(stab, STABILITY_FLOOR) / ref_q)), 0.0)
            rare = (stab >= ref_q) & (terms["contrast"] >= 0) & (terms["count"] < RARE_COUNT)
            terms["count"] = np.where(rare, 0.0, terms["count"])
    if score == "combined":
        total = sum(terms.values())
    else:
        if score not in terms:
            column = "rlnEstimatedResolution" if score == "resolution" else "r2dStability"
            raise UserError(f"--score {score}: the class averages have no {score} (no {column} "
                            "in class_averages.star); use --score combined, count or contrast")
        total = terms[score]
    total = np.where(members > 0, total, -np.inf)
    return ClassTable(np.arange(1, K + 1), members.astype(int), res, con, terms, total, stab, rare)


def load_class_averages(star_path: Path, class_averages=None):
    """``(resolution (K,) or None, averages (K, n, n), pixel size)`` of classes 1..K from
    ``class_averages.star``/``.mrcs`` next to ``star_path`` (or ``class_averages``); None if absent."""
    cstar = Path(class_averages) if class_averages else star_path.parent / "class_averages.star"
    if not cstar.is_file():
        return None
    cls = read_star_tables(cstar).get("particles")
    if cls is None or "rlnClassNumber" not in cls:
        raise InputError(f"{cstar}: no class table (data_particles with rlnClassNumber); re-run r2d export")
    numbers = cls["rlnClassNumber"].to_numpy()
    order = np.argsort(numbers, kind="stable")
    if not np.array_equal(numbers[order], np.arange(1, len(numbers) + 1)):
        raise InputError(f"{cstar}: class numbers are not 1..K; re-run r2d export")
    stack = io.open_stack(cstar)
    imgs = stack.read(order)
    res = cls["rlnEstimatedResolution"].to_numpy(dtype=float)[order] if "rlnEstimatedResolution" in cls else None
    return res, imgs, stack.pixel_size


def class_column(star_path: Path, name: str, class_averages=None) -> np.ndarray | None:
    """Column ``name`` (float, classes 1..K in order) of ``class_averages.star`` next to
    ``star_path`` (or ``class_averages``); None if the file or the column is absent."""
    cstar = Path(class_averages) if class_averages else star_path.parent / "class_averages.star"
    if not cstar.is_file():
        return None
    cls = read_star_tables(cstar).get("particles")
    if cls is None or name not in cls or "rlnClassNumber" not in cls:
        return None
    order = np.argsort(cls["rlnClassNumber"].to_numpy(), kind="stable")
    return cls[name].to_numpy(dtype=float)[order]


def select_classes(class_numbers: np.ndarray, *, classes=None, exclude=None, table: ClassTable | None = None,
                   auto: bool = False, threshold: float = DEFAULT_THRESHOLD) -> list[int]:
    """Class numbers to keep: ``classes`` (if given) or the auto-selected ones (or all), minus ``exclude``."""
    present = sorted(int(k) for k in np.unique(class_numbers) if k >= 1)
    if classes:
        missing = sorted(set(classes) - set(present))
        if missing:
            log.warning("classes %s have no particles", ", ".join(map(str, missing)))
        keep = [k for k in classes if k in present]
    elif auto:
        if table is None:
            raise UserError("--auto needs class_averages.star and class_averages.mrcs next to particles.star "
                            "(or --class-averages); re-run r2d export")
        keep = [int(k) for k, s in zip(table.number, table.score) if s >= threshold and k in present]
    else:
        keep = present
    drop = set(exclude or [])
    return [k for k in keep if k not in drop]


def robust_z(klass: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Per particle, ``(score − class median) / (1.4826 × MAD)`` within its class (class > 0);
    0 outside any class and in classes of fewer than 5 particles or no spread."""
    out = np.zeros(len(klass))
    for k in np.unique(klass[klass > 0]):
        idx = np.flatnonzero(klass == k)
        s = score[idx]
        med = np.median(s)
        mad = 1.4826 * np.median(np.abs(s - med))
        if len(idx) >= 5 and mad > 0:
            out[idx] = (s - med) / mad
    return out


def score_outliers(klass: np.ndarray, score: np.ndarray, z: float = DEFAULT_OUTLIER_Z) -> np.ndarray:
    """Particles whose ``score`` (lower is better) is more than ``z`` robust σ (1.4826 × MAD)
    above the median of their class (class > 0); a boolean mask. ``z <= 0``: none."""
    if z <= 0:
        return np.zeros(len(klass), dtype=bool)
    return robust_z(klass, score) > z


def unstable_misfits(klass: np.ndarray, score: np.ndarray, agreement: np.ndarray, z: float) -> np.ndarray:
    """Particles that agreed with none of the stability repeats (``agreement`` 0) and whose
    ``score`` is more than ``z`` robust σ worse than their class median; a boolean mask."""
    return (np.nan_to_num(agreement, nan=1.0) == 0) & (robust_z(klass, score) > z)


def write_subset(src_star: Path, mask: np.ndarray, out_star, *, mrcs=None, paths: str = "relative") -> int:
    """Write the particles ``mask`` of ``src_star`` (tables as exported) to ``out_star`` (and their
    images to ``mrcs``); image names are rewritten for the new location. Returns the count."""
    from r2d.export import image_names, stack_locations

    out_star = Path(out_star)
    tables = read_star_tables(src_star)
    parts = tables["particles"].reset_index(drop=True)
    if len(parts) != len(mask):
        raise InputError(f"{src_star}: {len(parts)} particles but {len(mask)} selection flags")
    stack = io.open_stack(src_star)  # resolves the image names as r2d reads them
    idx = np.flatnonzero(mask)
    sub = parts.iloc[idx].reset_index(drop=True).copy()
    outdir = out_star.parent.resolve()
    if mrcs:
        mrcs = Path(mrcs)
        imgs = np.empty((len(idx), stack.box, stack.box), dtype=np.float32)
        for lo in range(0, len(idx), 4096):
            imgs[lo:lo + 4096] = stack.read(idx[lo:lo + 4096])
            log.info("read particles %d-%d of %d", lo + 1, min(len(idx), lo + 4096), len(idx))
        io.write_mrcs(mrcs, imgs, stack.pixel_size)
        sub["rlnImageName"] = image_names([mrcs], np.zeros(len(idx), int), np.arange(len(idx)), outdir, paths)
    else:
        files, file_of, index = stack_locations(stack)
        sub["rlnImageName"] = image_names(files, file_of[idx], index[idx], outdir, paths)
    out = dict(tables)
    out["particles"] = sub
    write_star(out_star, out)
    return len(idx)


def format_table(table: ClassTable | None, counts: dict, keep: list[int],
                 threshold: float = DEFAULT_THRESHOLD, kept_counts: dict | None = None) -> str:
    """The per-class report printed by ``r2d select``: numbers, terms, score and the decision
    (``kept_counts``: particles selected per class, a column after the class decision)."""
    head = "  kept  selected" if kept_counts is not None else "  kept"

    def decision(k: int) -> str:
        sel = f"  {kept_counts.get(k, 0):8d}" if kept_counts is not None else ""
        return f"  {'yes ' if k in keep else 'no  '}{sel}"

    lines = []
    if table is not None:
        names = [t for t in ("contrast", "resolution", "count", "stability") if t in table.terms]
        stab = table.stability is not None
        lines.append(f"{'class':>5} {'particles':>9} {'res(Å)':>7} {'contrast':>8} "
                     + (f"{'stability':>9} " if stab else "")
                     + " ".join(f"{'t_' + t[:5]:>8}" for t in names) + f" {'score':>6}{head}  why")
        for k, m, r, c, terms, s in sorted(table.rows(), key=lambda row: -row[5]):
            i = k - 1
            lines.append(f"{k:5d} {counts.get(k, 0):9d} {r if np.isfinite(r) else float('nan'):7.1f} {c:8.2f} "
                         + (f"{table.stability[i]:9.2f} " if stab else "")
                         + " ".join(f"{terms[t]:8.2f}" for t in names)
                         + f" {s:6.2f}{decision(k)}  {table.reason(i, k in keep, threshold)}")
    else:
        lines.append(f"{'class':>5} {'particles':>9}{head}")
        for k in sorted(counts):
            lines.append(f"{k:5d} {counts[k]:9d}{decision(k)}")
    return "\n".join(lines)
