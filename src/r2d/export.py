"""Exports of a finished run for RELION, cryoSPARC and EMAN2 (``r2d export``).

**What is exported** (into ``OUTDIR``, by default ``{path}/export/``), from the last iteration's
``classes_YY.hdf``, ``classmx_YY.h5`` and ``resultmx_YY.h5``:

* ``particles.star`` — RELION 3.1 particle STAR (``data_optics`` + ``data_particles``), one row
  per input particle in input order. The optics table is carried over from a 3.1+ STAR input,
  built from the per-particle columns of a 3.0 STAR input, and otherwise built from the pixel
  size, box and (cryoSPARC) CTF; RELION 3.1 insists on ``rlnVoltage`` and
  ``rlnSphericalAberration``, so an input without CTF gets the placeholders 300 kV / 2.7 mm /
  0.1 (there is no ``rlnDefocusU`` then: switch CTF correction off in RELION). Every input
  particle column is kept; r2d sets ``rlnClassNumber``, ``rlnAnglePsi``, ``rlnOriginXAngst``,
  ``rlnOriginYAngst`` (see *Pose* below) and adds ``r2dExcluded``, ``r2dMirror``, ``r2dScore``
  and, with a stability table (``stability.h5``, :mod:`r2d.stability`), ``r2dStability`` (the
  share of the stability repeats in which the particle's alignment came back; NaN outside any
  class).
  Image names point at the particle stacks r2d read, relative to ``OUTDIR`` (``paths="relative"``,
  as r2d's STAR reader resolves them and as RELION does when run in ``OUTDIR``), absolute
  (``"absolute"``) or unchanged from the input STAR (``"keep"``, for a STAR file that lives in a
  RELION project and names its stacks relative to the project folder). An EMAN2 ``.hdf`` input
  is copied to ``OUTDIR/particles.mrcs`` (RELION reads no HDF).
* ``class_averages.mrcs`` + ``class_averages.star`` — the class averages, image ``k`` (1-based)
  is class ``k``; empty classes are zero images. The STAR file (``data_optics`` +
  ``data_particles``, readable by ``relion_image_handler``/``relion_stack_create``) has
  ``rlnImageName``/``rlnReferenceImage``, ``rlnClassNumber``, ``rlnClassDistribution``
  (fraction of the classified particles), ``rlnEstimatedResolution`` (Å, when the averages carry
  a ``resolution`` header; 999 where unknown, as RELION writes) and ``r2dParticleCount``
  (members), ``r2dParticlesInAverage`` (kept by classkeep) and, with a stability table,
  ``r2dStability`` (the class's stability, 0–1). The MRC voxel size is the input's pixel size.
* ``class_averages.hdf`` — the same images as an EMAN2 stack; headers ``ptcl_repr`` (particles in
  the average, EMAN2's meaning), ``class_number`` (1-based), ``class_id`` (0-based, as in
  classmx), ``n_members``, ``class_ptcl_idxs``, ``exc_class_ptcl_idxs`` and the run's other
  headers (``resolution`` ...), ``apix_x/y/z``.
* ``particles.cs`` (only for a cryoSPARC ``.cs`` input) — the input table with every field kept
  and ``alignments2D/class`` (0-based), ``alignments2D/pose`` (rad), ``alignments2D/shift`` (px),
  ``alignments2D/psize_A``, ``alignments2D/class_posterior`` (1) set; pose and shift use the same
  values as ``rlnAnglePsi``/``rlnOriginX/Y`` (in rad and px: the mapping of pyem's
  ``csparc2star``). Unclassified particles (class −1) are left out (cryoSPARC class numbers are
  unsigned).

**Class numbers** outside r2d's own artifacts are 1-based (RELION's ``rlnClassNumber``): class
``k`` is r2d's ``class_id`` ``k − 1``. ``rlnClassNumber`` 0 means *not classified* (class −1).

**Excluded particles**: ``r2dExcluded`` is 0 for particles in their class average, 1 for members
that classkeep left out of the average (worse score), 2 for particles not classified at all
(the ``exclude`` list).

**Pose** (``rlnAnglePsi``, ``rlnOriginX/YAngst``; derivation in :func:`relion_pose`): r2d stores
``T(particle) ≈ average`` with ``T: p' = M^m (R_α p + t)`` (:mod:`r2d.transforms`). RELION's
model of a particle is its reference rotated by ``psi`` and moved by ``−origin``:
``particle(R_psi q − o) = reference(q)`` with RELION's ``R_psi = [[cos, sin], [−sin, cos]]``
(``Euler_angles2matrix``), i.e. the particle's centre sits at ``−origin`` and shifting the image by
``+origin`` centres it. So ``psi = −α`` and ``o = R_−α t`` (pixels, times the pixel size for Å).
RELION has no mirror: for particles with ``r2dMirror`` = 1, ``psi`` and ``origin`` are relative
to the class average mirrored about x (``x → −x``); the origin still centres the particle.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from r2d import io
from r2d.errors import InputError
from r2d.stability import read_table

log = logging.getLogger(__name__)

#: RELION labels that describe an optics group (moved out of a 3.0 particle table)
OPTICS_LABELS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                 "rlnCtfDataArePhaseFlipped", "rlnCtfDataAreCtfPremultiplied")
#: placeholder optics for an input without CTF (RELION 3.1 refuses optics without them)
PLACEHOLDER_OPTICS = {"rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}
PATH_MODES = ("relative", "absolute", "keep")
UNKNOWN_RESOLUTION = 999.0  # what RELION writes for an unknown rlnEstimatedResolution


# ----------------------------------------------------------------------------- pose conversion
def relion_pose(alpha, tx, ty, mirror=0.0):
    """RELION in-plane pose of r2d transforms ``T(particle) ≈ average`` (MTR, degrees/pixels).

    Returns ``(psi, origin_x, origin_y)``: ``psi`` in degrees in (−180, 180], origins in
    **pixels** (multiply by the pixel size for ``rlnOriginX/YAngst``).

    Derivation: applying ``T`` samples ``average(p') = particle(T⁻¹ p')``, so
    ``particle(p) = average(M^m (R_α p + t))``. RELION (``Euler_angles2matrix`` with
    rot = tilt = 0, shifts as in ``relion_reconstruct``) models ``particle(p) =
    reference(R_ψᵀ (p + o))`` with ``R_ψ = [[cos ψ, sin ψ], [−sin ψ, cos ψ]]``. With the mirror
    absorbed into the reference, ``R_ψᵀ = R_−ψ = R_α`` and ``R_ψᵀ o = t``: ``ψ = −α``,
    ``o = R_−α t = (cos α·tx − sin α·ty, sin α·tx + cos α·ty)``. ``mirror`` does not enter.
    """
    a = np.deg2rad(np.asarray(alpha, dtype=np.float64))
    tx = np.asarray(tx, dtype=np.float64)
    ty = np.asarray(ty, dtype=np.float64)
    c, s = np.cos(a), np.sin(a)
    psi = np.mod(-np.rad2deg(a) + 180.0, 360.0) - 180.0
    psi = np.where(psi == -180.0, 180.0, psi)
    return psi, c * tx - s * ty, s * tx + c * ty


def pose_from_relion(psi, origin_x, origin_y, mirror=0.0):
    """Inverse of :func:`relion_pose`: MTR ``(alpha, tx, ty, mirror)`` (origins in pixels)."""
    a = -np.deg2rad(np.asarray(psi, dtype=np.float64))
    ox = np.asarray(origin_x, dtype=np.float64)
    oy = np.asarray(origin_y, dtype=np.float64)
    c, s = np.cos(a), np.sin(a)
    # t = R_α o with R_α = [[c, s], [−s, c]]
    alpha = np.rad2deg(a)
    return alpha, c * ox + s * oy, -s * ox + c * oy, np.broadcast_to(np.asarray(mirror, float), alpha.shape).copy()


# ----------------------------------------------------------------------------- a finished run
@dataclass
class RunResult:
    """The final classification of a run, per input particle (length ``n``) and per class (``K``).

    ``klass`` is r2d's 0-based class (−1 = not classified); ``used`` whether the particle is in
    its class average; ``alpha, tx, ty, mirror`` the particle → average transform; ``score`` the
    classcmp score (lower is better). ``averages[k]`` is class ``k``'s average (zeros when empty),
    ``headers[k]`` its header (``{}`` when empty); ``members``/``kept`` count particles per class.
    """

    run_dir: Path
    iteration: str
    n: int
    klass: np.ndarray
    used: np.ndarray
    alpha: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    mirror: np.ndarray
    score: np.ndarray
    averages: np.ndarray
    headers: list = field(default_factory=list)
    pixel_size: float | None = None

    @property
    def n_classes(self) -> int:
        return len(self.averages)

    @property
    def members(self) -> np.ndarray:
        return np.bincount(self.klass[self.klass >= 0], minlength=self.n_classes)

    @property
    def kept(self) -> np.ndarray:
        ok = (self.klass >= 0) & self.used
        return np.bincount(self.klass[ok], minlength=self.n_classes)

    def header_values(self, key: str, default=np.nan) -> np.ndarray:
        """Per-class float array of a header field (``default`` where absent or not a number)."""
        out = np.full(self.n_classes, default, dtype=np.float64)
        for k, h in enumerate(self.headers):
            v = h.get(key)
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
                out[k] = float(v)
        return out

    @property
    def resolution(self) -> np.ndarray | None:
        """Per-class resolution (Å) from the ``resolution`` header, NaN where unknown; None when no
        average has one."""
        if not any("resolution" in h for h in self.headers):
            return None
        return self.header_values("resolution")


def iterations(run_dir) -> list[str]:
    """The finished iterations of a run folder (``"01"``, ``"02"``, ...), in order."""
    found = []
    for f in glob.glob(os.path.join(run_dir, "classes_[0-9][0-9].hdf")):
        it = re.search(r"classes_(\d\d)\.hdf$", f).group(1)
        if os.path.exists(os.path.join(run_dir, f"resultmx_{it}.h5")):
            found.append(it)
    return sorted(found, key=int)


def load_result(run_dir, iteration: str | int | None = None, n: int | None = None) -> RunResult:
    """Read iteration ``iteration`` (default: the last finished one) of a run folder.

    ``n`` is the number of input particles (default: 1 + the largest particle index seen).
    ``iteration="init"`` reads ``classes_init`` / ``resultmx_init``; ``"final"`` the full-size
    ``classes_final`` / ``resultmx_final`` of a run with a working stack (shifts in input
    pixels). The classes are resultmx's: the membership of the averages (after class averaging
    divided classes to refill empty ones).
    """
    run_dir = Path(run_dir)
    its = iterations(run_dir)
    if iteration is None:
        if not its:
            raise InputError(f"{run_dir}: no finished iteration (classes_YY.hdf with resultmx_YY.h5); "
                             "run the workflow first, or check the run folder")
        it = its[-1]
    else:
        it = str(iteration) if str(iteration) in ("init", "final") else f"{int(iteration):02d}"
    classes = run_dir / f"classes_{it}.hdf"
    resultmx = run_dir / f"resultmx_{it}.h5"
    for p in (classes, resultmx):
        if not p.exists():
            raise InputError(f"{p}: not found; is {run_dir} a finished r2d run folder?")
    res = io.read_matrix(resultmx)
    particle = np.asarray(res["particle"], dtype=np.int64)
    if n is None:
        n = int(particle.max()) + 1 if len(particle) else 0
    if len(particle) and (particle.min() < 0 or particle.max() >= n):
        raise InputError(f"{resultmx}: particle indices up to {particle.max()} but the input has {n} particles; "
                         "is this run folder from another input?")
    klass = np.full(n, -1, dtype=np.int64)
    klass[particle] = res["class"]
    used = np.zeros(n, dtype=bool)
    used[particle] = np.asarray(res["used"]) != 0
    used &= klass >= 0
    pose = {}
    for key in ("dalpha", "dx", "dy", "mirror", "score"):
        a = np.zeros(n, dtype=np.float64)
        a[particle] = res[key]
        pose[key] = a
    imgs = io.read_image_stack(classes)
    heads = io.read_image_headers(classes)
    ids = [int(h.get("class_id", i)) for i, h in enumerate(heads)]
    K = max([*ids, int(klass.max()) if n else -1]) + 1
    averages = np.zeros((K, *imgs.shape[1:]), dtype=np.float32)
    headers: list[dict] = [{} for _ in range(K)]
    for i, k in enumerate(ids):
        averages[k] = imgs[i]
        headers[k] = heads[i]
    apix = next((float(h["apix_x"]) for h in heads if float(h.get("apix_x", 0) or 0) > 0), None)
    return RunResult(run_dir, it, n, klass, used, pose["dalpha"], pose["dx"], pose["dy"],
                     (pose["mirror"] > 0.5).astype(np.int8), pose["score"], averages, headers, apix)


# ----------------------------------------------------------------------------- STAR helpers
def write_star(path, tables: dict) -> None:
    """Write STAR data blocks (name -> DataFrame) with the ``starfile`` package, atomically."""
    import starfile

    with io.atomic_write(path) as tmp:
        starfile.write(tables, tmp, float_format="%.6f")


def read_star_tables(path) -> dict:
    """The data blocks of a STAR file as written (name -> DataFrame or dict), not merged."""
    import starfile

    try:
        return starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises many kinds
        raise InputError(f"{path}: cannot parse STAR file ({exc})") from None


def _particle_block_name(tables: dict) -> str | None:
    import pandas as pd

    if isinstance(tables.get("particles"), pd.DataFrame):
        return "particles"
    return next((k for k, v in tables.items()
                 if k != "optics" and isinstance(v, pd.DataFrame) and "rlnImageName" in v), None)


def stack_locations(stack: io.Stack) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Where each particle's image lives: ``(files, file_of (n,), index_in_file (n,) 0-based)``."""
    files = [Path(f) for f in stack.files]
    file_of = getattr(stack, "_file_of", None)
    index = getattr(stack, "_index", None)
    if file_of is None or index is None:
        return files, np.zeros(len(stack), dtype=np.intp), np.arange(len(stack))
    return files, np.asarray(file_of), np.asarray(index)


def image_names(files, file_of, index, outdir, paths: str = "relative") -> np.ndarray:
    """RELION image names ``NNNNNN@stack`` (1-based) for particles in ``files``."""
    outdir = Path(outdir).resolve()
    if paths == "absolute":
        names = [str(Path(f).resolve()) for f in files]
    else:
        names = [os.path.relpath(Path(f).resolve(), outdir) for f in files]
    names = np.asarray(names, dtype=object)[np.asarray(file_of)]
    return np.array([f"{i + 1:06d}@{s}" for i, s in zip(np.asarray(index), names)], dtype=object)


def _optics_from_columns(parts, group_cols, pixel_size, box):
    """Optics groups from unique combinations of ``group_cols`` in a particle table."""
    import pandas as pd

    if group_cols:
        keys = parts[list(group_cols)].astype(float).round(6)
        uniq = keys.drop_duplicates().reset_index(drop=True)
        codes = keys.merge(uniq.reset_index(), on=list(group_cols), how="left")["index"].to_numpy()
    else:
        uniq = pd.DataFrame(index=[0])
        codes = np.zeros(len(parts), dtype=int)
    optics = pd.DataFrame({
        "rlnOpticsGroupName": [f"opticsGroup{i + 1}" for i in range(len(uniq))],
        "rlnOpticsGroup": np.arange(1, len(uniq) + 1),
    })
    for col in group_cols:
        optics[col] = uniq[col].to_numpy()
    for col, val in PLACEHOLDER_OPTICS.items():
        if col not in optics:
            optics[col] = val
    for col in ("rlnCtfDataArePhaseFlipped", "rlnCtfDataAreCtfPremultiplied"):
        if col in optics:
            optics[col] = optics[col].astype(int)
    optics["rlnImagePixelSize"] = float(pixel_size)
    optics["rlnImageSize"] = int(box)
    optics["rlnImageDimensionality"] = 2
    return optics, codes + 1


def relion_tables(stack: io.Stack, result: RunResult, outdir, *, pixel_size: float,
                  paths: str = "relative", names=None) -> dict:
    """RELION 3.1 ``optics`` + ``particles`` tables of the particles of ``stack`` with the run's
    classes and poses (see the module docstring). ``names`` overrides the image names."""
    import pandas as pd

    if paths not in PATH_MODES:
        raise ValueError(f"paths must be one of {PATH_MODES}, not {paths!r}")
    n = len(stack)
    is_star = stack.path.suffix.lower() == ".star"
    if names is None and paths != "keep":
        names = image_names(*stack_locations(stack), outdir, paths)
    if is_star:
        tables = read_star_tables(stack.path)
        block = _particle_block_name(tables)
        parts = tables[block].reset_index(drop=True).copy()
        optics = tables.get("optics")
        if isinstance(optics, pd.DataFrame) and "rlnOpticsGroup" in parts:
            optics = optics.copy()
        else:  # RELION 3.0: build the optics groups from the per-particle columns
            group_cols = [c for c in OPTICS_LABELS if c in parts]
            optics, groups = _optics_from_columns(parts, group_cols, pixel_size, stack.box)
            parts = parts.drop(columns=[*group_cols, "rlnDetectorPixelSize", "rlnMagnification",
                                        "rlnOpticsGroup"], errors="ignore")
            parts["rlnOpticsGroup"] = groups
        if paths != "keep":
            parts["rlnImageName"] = names
    else:
        if paths == "keep":
            raise ValueError("paths='keep' needs a STAR input")
        ctf = stack.ctf_params()
        parts = pd.DataFrame({"rlnImageName": names})
        group_cols = []
        if ctf is not None:
            parts["rlnDefocusU"] = ctf["defocus_u"]
            parts["rlnDefocusV"] = ctf["defocus_v"]
            parts["rlnDefocusAngle"] = ctf["defocus_angle"]
            if np.any(ctf["phase_shift"] != 0):
                parts["rlnPhaseShift"] = ctf["phase_shift"]
            parts["rlnVoltage"] = ctf["voltage"]
            parts["rlnSphericalAberration"] = ctf["cs"]
            parts["rlnAmplitudeContrast"] = ctf["amp_contrast"]
            group_cols = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]
        optics, groups = _optics_from_columns(parts, group_cols, pixel_size, stack.box)
        parts = parts.drop(columns=group_cols)
        parts["rlnOpticsGroup"] = groups
    if len(parts) != n:
        raise InputError(f"{stack.path}: the particle table has {len(parts)} rows but the stack {n} particles")
    psi, ox, oy = relion_pose(result.alpha, result.tx, result.ty, result.mirror)
    parts = parts.drop(columns=["rlnOriginX", "rlnOriginY"], errors="ignore")  # RELION 3.0 pixels
    parts["rlnClassNumber"] = result.klass + 1
    parts["rlnAnglePsi"] = psi
    parts["rlnOriginXAngst"] = ox * pixel_size
    parts["rlnOriginYAngst"] = oy * pixel_size
    parts["r2dExcluded"] = np.where(result.klass < 0, 2, np.where(result.used, 0, 1)).astype(int)
    parts["r2dMirror"] = result.mirror.astype(int)
    parts["r2dScore"] = result.score
    return {"optics": optics, "particles": parts}


def class_table(result: RunResult, image_file: str, optics_row) -> dict:
    """``optics`` + ``particles`` tables of ``class_averages.star`` (one row per class)."""
    import pandas as pd

    K = result.n_classes
    members, kept = result.members, result.kept
    names = [f"{k + 1:06d}@{image_file}" for k in range(K)]
    classes = pd.DataFrame({
        "rlnImageName": names,
        "rlnReferenceImage": names,
        "rlnOpticsGroup": np.ones(K, dtype=int),
        "rlnClassNumber": np.arange(1, K + 1),
        "rlnClassDistribution": members / max(1, members.sum()),
    })
    res = result.resolution
    if res is not None:
        classes["rlnEstimatedResolution"] = np.where(np.isfinite(res) & (res > 0), res, UNKNOWN_RESOLUTION)
    classes["r2dParticleCount"] = members
    classes["r2dParticlesInAverage"] = kept
    optics = optics_row.copy()
    optics["rlnOpticsGroup"] = 1
    return {"optics": optics.reset_index(drop=True), "particles": classes}


# ----------------------------------------------------------------------------- cryoSPARC
def cryosparc_table(cs_path, result: RunResult, pixel_size: float) -> np.ndarray:
    """The input ``.cs`` table with ``alignments2D/*`` set from the run (classified rows only)."""
    arr = np.load(cs_path, allow_pickle=False)
    if len(arr) != result.n:
        raise InputError(f"{cs_path}: {len(arr)} rows but the run has {result.n} particles")
    psi, ox, oy = relion_pose(result.alpha, result.tx, result.ty, result.mirror)
    new = {
        "alignments2D/class": (np.uint32, (), np.maximum(result.klass, 0)),
        "alignments2D/pose": (np.float32, (), np.deg2rad(psi)),
        "alignments2D/shift": (np.float32, (2,), np.column_stack([ox, oy])),
        "alignments2D/psize_A": (np.float32, (), np.full(result.n, pixel_size)),
        "alignments2D/class_posterior": (np.float32, (), np.ones(result.n)),
    }
    descr = list(arr.dtype.descr)
    names = set(arr.dtype.names)
    for name, (dt, shape, _) in new.items():
        if name not in names:
            descr.append((name, np.dtype(dt).str, shape) if shape else (name, np.dtype(dt).str))
    out = np.zeros(len(arr), dtype=np.dtype(descr))
    for name in arr.dtype.names:
        out[name] = arr[name]
    for name, (_, _, value) in new.items():
        out[name] = value
    return out[result.klass >= 0]


def write_cs(path, table: np.ndarray) -> None:
    """Write a cryoSPARC ``.cs`` table (numpy ``.npy`` format, as cryoSPARC does), atomically."""
    with io.atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, table, allow_pickle=False)


# ----------------------------------------------------------------------------- all exports
def _copy_to_mrcs(stack: io.Stack, path: Path, pixel_size: float, chunk: int = 4096) -> None:
    import mrcfile

    with io.atomic_write(path) as tmp:
        with mrcfile.new_mmap(tmp, shape=stack.shape, mrc_mode=2, overwrite=True) as mrc:
            for lo in range(0, len(stack), chunk):
                hi = min(len(stack), lo + chunk)
                mrc.data[lo:hi] = stack.read(slice(lo, hi))
                log.info("copied particles %d-%d of %d to %s", lo + 1, hi, len(stack), path)
            mrc.set_image_stack()
            mrc.voxel_size = pixel_size


def export_run(run_dir, input_path, outdir, *, iteration=None, apix: float | None = None,
               paths: str = "relative", stability=None) -> dict[str, Path]:
    """Write all exports of a run (see the module docstring); returns ``{kind: path}``.
    ``stability``: a ``r2d stability`` table of the run's classes, or None."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stack = io.open_stack(input_path)
    result = load_result(run_dir, iteration, n=len(stack))
    pixel_size = stack.pixel_size or apix or result.pixel_size
    if not pixel_size:
        log.warning("%s: no pixel size in the input or config; writing 1.0 Å/px (give --apix)", input_path)
        pixel_size = 1.0
    written: dict[str, Path] = {}
    names = None
    if stack.path.suffix.lower() in io.HDF_EXTENSIONS:
        copy = outdir / "particles.mrcs"
        _copy_to_mrcs(stack, copy, pixel_size)
        names = image_names([copy], np.zeros(len(stack), int), np.arange(len(stack)), outdir,
                            "absolute" if paths == "absolute" else "relative")
        written["particles_mrcs"] = copy
    tables = relion_tables(stack, result, outdir, pixel_size=pixel_size, paths=paths, names=names)
    stab = None if stability is None else read_table(stability, len(stack), result.n_classes)
    if stab is not None:
        tables["particles"]["r2dStability"] = np.where(result.klass >= 0, stab[0], np.nan)
    write_star(outdir / "particles.star", tables)
    written["particles_star"] = outdir / "particles.star"

    io.write_mrcs(outdir / "class_averages.mrcs", result.averages, pixel_size)
    written["class_averages_mrcs"] = outdir / "class_averages.mrcs"
    ctab = class_table(result, "class_averages.mrcs", tables["optics"].iloc[[0]])
    if stab is not None:
        ctab["particles"]["r2dStability"] = stab[1]
    write_star(outdir / "class_averages.star", ctab)
    written["class_averages_star"] = outdir / "class_averages.star"

    headers = []
    members, kept = result.members, result.kept
    for k, h in enumerate(result.headers):
        h = io.user_header(h)
        h.update(class_id=k, class_number=k + 1, ptcl_repr=int(kept[k]), n_members=int(members[k]))
        if stab is not None and np.isfinite(stab[1][k]):
            h["stability"] = float(stab[1][k])
        h.setdefault("class_ptcl_idxs", [])
        h.setdefault("exc_class_ptcl_idxs", [])
        headers.append(h)
    io.write_image_stack(outdir / "class_averages.hdf", result.averages, headers, pixel_size=pixel_size)
    written["class_averages_hdf"] = outdir / "class_averages.hdf"

    if stack.path.suffix.lower() == ".cs":
        write_cs(outdir / "particles.cs", cryosparc_table(stack.path, result, pixel_size))
        written["particles_cs"] = outdir / "particles.cs"
    log.info("exported iteration %s of %s (%d particles, %d classes) to %s", result.iteration, run_dir,
             result.n, result.n_classes, outdir)
    return written
