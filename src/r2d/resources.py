"""Memory and time estimates of the workflow's jobs (``resources: mem_mb``, ``runtime``).

Every rule's job asks its executor (the local scheduler, or SLURM's ``--mem`` and ``-t``) for
an estimate computed from the input (particles used, box size in px) and the config (chunks,
ncls, ...). A chunked job's memory follows its chunk, and a per-particle step holds at most
``image_block(box)`` particles at once (64 MiB of images), so its memory does not grow with
the dataset beyond one block.

Per rule (``JOBS``: the job's :class:`Cost` kind, whether it works on one chunk, whether it
runs ``threads`` threads), with ``box`` in px and ``n`` the particles it works on::

    mem_mb  = 1.25 * (170 + A * (box/64)^2 + A4 * (box/64)^4 + I * img * held)  rounded up to 100 MiB, >= 500
    runtime = ceil(3 * s * n * (box/64)^3 * passes / threads / 60) minutes, >= 10

170 MiB is Python, numpy and r2d; ``A`` (MiB) the box-dependent tables (aligner), ``A4`` those
that grow with box⁴ (``tables4_mb``); ``img``
one float32 image, ``box^2 * 4`` bytes, in MiB; ``I`` the images held per particle;
``held`` the particles held at once; ``s`` the CPU seconds per particle at 64 px; ``3`` a
safety factor. The ``particles`` job adds its parsed table (``row_kb`` per particle) and, when it
writes a working stack, a block of input images; ``classes_final`` chunks the Fourier half-set
sums of their classes (``class_images``). ``box`` is the working box for every job but those
two, which read the input at its own. ``A`` and ``I`` are fitted to the peak RSS of the jobs
(Snakemake ``benchmark:`` files) in ``benchmarks/scaling.py`` and ``benchmarks/realsize.py``,
so that every job above half the 500 MiB floor asks for 1-2 x its peak
(``tests/test_resources.py`` holds the measurements):

=====================  ==========================================================
simmx chunk (5 refs)   297 MB at 2,000 particles, 80 px; 388 at 96 px; 356 at 128 px
mra chunk (32-64 refs) 316 MB at 80 px; 414 at 96 px; 432 at 128 px
class averaging        374 MB at 2,000 particles, 80 px; 641 at 96 px; 668 at 128 px
classes_init chunk     452 MB at 80 and 96 px, 580 at 128 px (the 2,000-particle subset)
input_proj chunk       236 / 350 / 433 MB at 80 / 96 / 128 px
allrefs                205 / 294 / 464 MB at 80 / 96 / 128 px
simmx / mra / classes  400 / 418 / 574 MB at 10,000 particles of 104 px (ncls 64)
particles (256, 320)   384 / 432 MB writing the working stacks of 4,000 x 80 / 20,000 x 104 px
classes_final (256 px) 477 MB per chunk of 16 classes, 2,000 particles; 661 MB at 320 px
class averaging, 256 px about 2.0 GB per chunk with every step at 256 px (maxres null)
=====================  ==========================================================

A value in the config's ``resources: {RULE: {mem_mb: MiB, runtime: minutes}}`` replaces the
estimate; Snakemake's ``--set-resources RULE:mem_mb=...`` wins over both. A job retried
(``--retries``) asks for ``attempt`` times the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from r2d.io import image_block

#: memory of Python, numpy and r2d in every job (MiB)
BASE_MB = 170
#: smallest memory (MiB) and time limit (minutes) a job asks for
MIN_MEM_MB = 500
MIN_RUNTIME = 10
#: asked for beyond the memory estimate, and beyond the CPU-time estimate
MEM_MARGIN = 1.25
TIME_MARGIN = 3


@dataclass(frozen=True)
class Cost:
    """How a kind of job uses memory and CPU (the coefficients of the formulas above).

    ``tables_mb``: ``A``, MiB at 64 px (scales with box²); ``images``: ``I``, float32 images
    held per particle; ``held``: which particles are held at once: ``"all"`` it works on,
    ``"subset"`` (the initial stage's subset, all held), ``"block"`` (at most
    ``image_block(box)``); ``cpu_s``: ``s``, CPU seconds per particle at 64 px (scales with
    box³); ``passes``: passes over the particles; ``subset``: works on the initial stage's
    subset only; ``class_images``: float32 images' worth held per class of the job (Fourier
    half-set sums; the job's classes are ``ceil(ncls / chunks)`` when chunked);
    ``block_images``: images' worth held per particle of one block (``image_block(box)``),
    whatever it works on (with ``crops``: only when the run has a working stack to write); ``row_kb``: KiB per particle of tables that do not depend on the box
    (a parsed STAR/CS table, the index); ``tables4_mb``: MiB at 64 px of the search tables that
    grow with box⁴ (every reference's polar spectra at every shift of a grid ∝ box²: negligible up
    to 128 px, 1.4 GB in a 256 px class-averaging chunk).
    """

    tables_mb: float
    images: float
    held: str
    cpu_s: float
    passes: int = 1
    subset: bool = False
    class_images: float = 0
    block_images: float = 0
    row_kb: float = 0
    tables4_mb: float = 0
    crops: bool = False


def costs(ncls: int, naliref: int, classiter: int) -> dict[str, Cost]:
    """The :class:`Cost` of every kind of job for these config values."""
    return {
        "input_fp": Cost(0, 3, "subset", 0.001, subset=True),
        "msa_fp": Cost(0, 4.4, "subset", 0.002, subset=True),  # footprints: ~0.55 img per particle
        "project_fp": Cost(0, 1.8, "subset", 0.001, subset=True),
        "classify": Cost(0, 0.1, "all", 0.0005),
        "average": Cost(0, 7, "block", 0.0045, classiter + 1, tables4_mb=5),
        "average_init": Cost(0, 7, "block", 0.0045, 9, subset=True, tables4_mb=5),  # 8 passes + the first average
        "refs": Cost(75, 0, "all", 0),  # allrefs: class averages and aligner tables
        "light": Cost(0, 0, "all", 0),  # aliref, basis, montages, summary: class averages only
        "simmx_chunk": Cost(0, 4, "block", 0.0012 * naliref),
        "mra_chunk": Cost(0, 4, "block", 0.015 * ncls / 32, tables4_mb=5),  # CPU time measured with ncls 32
        "gather": Cost(0, 0.2, "all", 0.0002),  # score/shift rows: ~0.2 img per particle
        "input_proj": Cost(0, 4, "block", 0.002),
        "export": Cost(0, 1, "block", 0.001),
        # the parsed table; with a working stack a block of the input, its FFTs and the cropped block
        "index": Cost(0, 0, "all", 0.0001, block_images=3, row_kb=0.5, crops=True),
        "fullsize": Cost(0, 6, "block", 0.0015, class_images=12),
    }


@dataclass(frozen=True)
class Job:
    """A rule's job: its :class:`Cost` kind; ``chunked``: one of ``chunks`` jobs of a step (its
    share of the particles); ``threaded``: runs the config's ``threads`` threads; ``full``: reads
    the input at its own box (the others work on the working stack, :mod:`r2d.working`)."""

    kind: str
    chunked: bool = False
    threaded: bool = False
    full: bool = False


#: every rule of the workflow (the schema's ``resources`` keys are these names)
JOBS: dict[str, Job] = {
    "particles": Job("index", threaded=True, full=True),
    "input_fp": Job("input_fp", threaded=True),
    "input_fp_basis": Job("msa_fp"),
    "input_fp_basis_proj": Job("project_fp"),
    "classmx_00": Job("classify"),
    "classes_init_chunk": Job("average_init", chunked=True, threaded=True),
    "classes_init": Job("gather"),
    "allrefs": Job("refs", threaded=True),
    "basis": Job("light"),
    "aliref": Job("light", threaded=True),
    "simmx_chunk": Job("simmx_chunk", chunked=True, threaded=True),
    "simmx": Job("gather"),
    "mra_chunk": Job("mra_chunk", chunked=True, threaded=True),
    "mra": Job("gather"),
    "input_proj_chunk": Job("input_proj", chunked=True),
    "input_proj": Job("gather"),
    "classmx": Job("classify"),
    "classes_chunk": Job("average", chunked=True, threaded=True),
    "classes": Job("gather"),
    "classes_final_chunk": Job("fullsize", chunked=True, threaded=True, full=True),
    "classes_final": Job("gather"),  # the result tables and K averages: not a stack of full-size images
    "stability_repeat": Job("average", threaded=True),  # every class of the last iteration, one job
    "stability": Job("classify"),
    "montage_final": Job("light"),
    "montage_init": Job("light"),
    "montage": Job("light"),
    "summary": Job("light"),
    "export": Job("export"),
}


#: a scattered step's gather rule -> its chunk rule: with one chunk the step is one job, named as
#: its artifact's rule and costing what its chunk rule's job does
SINGLE: dict[str, str] = {
    "classes_init": "classes_init_chunk",
    "simmx": "simmx_chunk",
    "mra": "mra_chunk",
    "input_proj": "input_proj_chunk",
    "classes": "classes_chunk",
    "classes_final": "classes_final_chunk",
}

#: particles per chunk with ``chunks: auto``
CHUNK_PARTICLES = 5000


def auto_chunks(n_used: int) -> int:
    """Chunks of ``chunks: auto``: one per :data:`CHUNK_PARTICLES` particles used (at least one).
    Below that, a chunk's work is a few seconds, less than what one more job costs (an
    interpreter, numpy and scipy, the scheduler); the results are the same bytes for any count."""
    return max(1, -(-int(n_used) // CHUNK_PARTICLES))


def subset_size(n: int, ncls: int) -> int:
    """Particles of the initial stage: at most ``max(2000, 10 ncls)`` of ``n`` (``r2d invariants``)."""
    return min(n, max(2000, 10 * ncls))


@dataclass(frozen=True)
class ResourceModel:
    """The estimates for one run: ``n_used`` particles (after ``exclude``) of ``box`` px (the
    working box every step but the ``full`` ones works at) and ``input_box`` px (the input's).

    ``overrides``: the config's ``resources`` (rule -> ``{"mem_mb": MiB, "runtime": minutes}``).
    """

    n_used: int
    box: int
    ncls: int
    naliref: int
    classiter: int
    chunks: int
    threads: int
    overrides: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    input_box: int | None = None

    @classmethod
    def from_config(cls, config: Mapping, facts: Mapping) -> ResourceModel:
        """The model of a checked config (defaults filled) and the input's facts
        (:func:`r2d.check.check_workflow_config`: ``n_used`` or ``n``, ``box``, ``working``;
        without them, one particle of 64 px)."""
        working = facts.get("working")
        box = facts.get("box", 64)
        return cls(
            n_used=max(1, facts.get("n_used", facts.get("n", 1))),
            box=working.box if working is not None else box,
            ncls=config["ncls"],
            naliref=config["naliref"],
            classiter=config["classiter"],
            chunks=config["chunks"],
            threads=config["threads"],
            overrides=config.get("resources") or {},
            input_box=box,
        )

    def cost(self, kind: str) -> Cost:
        return costs(self.ncls, self.naliref, self.classiter)[kind]

    def particles(self, kind: str, chunked: bool = False) -> int:
        """Particles a job of ``kind`` works on: the initial stage's subset or all used ones;
        a chunked job its share, ``ceil(n / chunks)``."""
        n = self.n_used
        if self.cost(kind).subset:
            n = subset_size(n, self.ncls)
        return -(-n // self.chunks) if chunked else n

    def held(self, kind: str, chunked: bool = False, box: int | None = None) -> int:
        """Particles a job of ``kind`` holds in memory at once (images of ``box`` px)."""
        n = self.particles(kind, chunked)
        return min(n, image_block(box or self.box)) if self.cost(kind).held == "block" else n

    def estimate_mem_mb(self, kind: str, chunked: bool = False, full: bool = False) -> int:
        """Memory estimate (MiB) of a job of ``kind`` (on the input's box when ``full``): the
        formula of the module docstring."""
        c = self.cost(kind)
        box = (self.input_box or self.box) if full else self.box
        img_mb = box * box * 4 / 2**20
        classes = -(-self.ncls // self.chunks) if chunked else self.ncls
        cropping = (self.input_box or self.box) > self.box
        block = image_block(box) if cropping or not c.crops else 0
        est = (BASE_MB + c.tables_mb * (box / 64) ** 2 + c.tables4_mb * (box / 64) ** 4
               + c.row_kb * self.particles(kind, chunked) / 1024
               + img_mb * (c.images * self.held(kind, chunked, box) + c.class_images * classes
                           + c.block_images * block))
        return max(MIN_MEM_MB, 100 * int(-(-MEM_MARGIN * est // 100)))

    def estimate_runtime(self, kind: str, chunked: bool = False, threads: int = 1, full: bool = False) -> int:
        """Time-limit estimate (minutes) of a job of ``kind`` running ``threads`` threads."""
        c = self.cost(kind)
        box = (self.input_box or self.box) if full else self.box
        est = (TIME_MARGIN * c.cpu_s * self.particles(kind, chunked) * (box / 64) ** 3 * c.passes
               / threads / 60)
        return max(MIN_RUNTIME, int(-(-est // 1)))

    def _override(self, rule: str, key: str) -> int | None:
        """The config's value for ``rule``; a one-chunk step also takes its chunk rule's."""
        value = (self.overrides.get(rule) or {}).get(key)
        if value is None and self.chunks == 1 and rule in SINGLE:
            value = (self.overrides.get(SINGLE[rule]) or {}).get(key)
        return value

    def job(self, rule: str) -> Job:
        """The :class:`Job` of ``rule``; with one chunk a scattered step's rule runs its chunk
        rule's command over every particle (:data:`SINGLE`)."""
        return JOBS[SINGLE[rule]] if self.chunks == 1 and rule in SINGLE else JOBS[rule]

    def mem_mb(self, rule: str, attempt: int = 1) -> int:
        """``resources: mem_mb`` of a job of ``rule`` (MiB): the config's value or the estimate,
        times ``attempt``."""
        job = self.job(rule)
        return (self._override(rule, "mem_mb") or self.estimate_mem_mb(job.kind, job.chunked, job.full)) * attempt

    def runtime(self, rule: str, attempt: int = 1) -> int:
        """``resources: runtime`` of a job of ``rule`` (minutes): the config's value or the
        estimate, times ``attempt``."""
        job = self.job(rule)
        threads = self.threads if job.threaded else 1
        value = self._override(rule, "runtime") or self.estimate_runtime(job.kind, job.chunked, threads, job.full)
        return value * attempt
