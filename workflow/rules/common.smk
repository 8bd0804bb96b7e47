"""Config check, iteration helpers, input/params functions and job resources (no rules here)."""

import os
import sys

from r2d.check import INIT_CLASSES, check_workflow_config, format_error
from r2d.errors import UserError
from r2d import options
from r2d.split import schedule
from r2d.resources import ResourceModel

# Up-front check, before any job runs, with r2d.check (the checks `r2d check` runs): the
# package's schema (unknown keys, types, ranges; defaults filled into `config`), relations
# between values, and the input/exclude/initial files from their headers. One message per
# problem, then exit 1.
try:
    INPUT_FACTS = check_workflow_config(config)
except UserError as exc:
    sys.stderr.write(f"\n{format_error(exc)}\n\n")
    sys.exit(1)
for _warning in INPUT_FACTS["warnings"]:
    sys.stderr.write(f"r2d: warning: {_warning}\n")

RUN = config["path"]
ITERS = [f"{i:02d}" for i in range(1, config["iter"] + 1)]

# The environment every job runs `r2d` in (with --sdm conda), named by each rule, as --lint
# asks; a global `conda:` directive would instead deploy it into the Snakemake process.
R2D_ENV = "../envs/r2d.yaml"

# Scheduling (Snakemake starts ready jobs by priority): the chain to classes_YY first (mra,
# classmx, class chunks: most of an iteration's work; after the last iteration the stability
# repeats), then the short reference steps, then the side branch simmx_YY -> input_YY_proj,
# which fills the cores the chain leaves free.
PRIO_MRA, PRIO_CLASSES, PRIO_REFS = 3, 2, 1


wildcard_constraints:
    it=r"0[1-9]|[1-9]\d",


scattergather:
    chunk=config["chunks"],


# One chunk (`chunks: 1`, or `auto` on a small set, r2d.resources.auto_chunks): each scattered
# step is one job of its chunk rule's command, named as the step, writing the artifact itself
# (no chunk files, no gather job); the bytes are those the gathered chunks would give
ONE_CHUNK = config["chunks"] == 1


def chunk_arg(wildcards):
    """`--chunk i-of-k` of a chunk job (its {scatteritem})."""
    return f"--chunk {wildcards.scatteritem}"


# mragrow (classify mra, no `initial`): the classes of classes_init, classes_01, ... grow by
# division (r2d.split.schedule; 8 iterations, 32 classes: 4, 8, 16, 32, 32, ...) from one
# class in classmx_00; None: ncls classes from the initial k-means on
GROW = (
    schedule(config["ncls"], config["iter"])
    if config["classify"] == "mra" and config["mragrow"] and not config["initial"]
    else None
)


def split_arg(it):
    """`r2d average --split K` of classes_init (`it` 0) or classes_{it}: K = GROW[it]; with
    classify mra and no growth K = ncls (empty classes refilled by division); '' for k-means."""
    if GROW is not None:
        return f"--split {GROW[int(it)]}"
    return f"--split {config['ncls']}" if config["classify"] == "mra" else ""


def nbasis_of(wildcards):
    """basis_{it}'s nbasisfp: at most the classes its allrefs come from (fewer while they grow)."""
    if GROW is None:
        return config["nbasisfp"]
    return min(config["nbasisfp"], GROW[int(wildcards.it) - 1])


def art(name):
    """Path of an artifact in the run folder."""
    return f"{RUN}/{name}"


# the particles as every step reads them: the index of the working stack (rule particles),
# the input's particles Fourier-cropped to Nyquist = maxres (r2d.working); where that changes
# nothing (maxres null, or the input no finer), the index of the input itself
PARTICLES = art("particles.h5")
WORKING = INPUT_FACTS["working"]
CROPPED = WORKING.cropped
WORKING_STACK = art("working.mrcs")


# the classes users get (exports, final montage): the last iteration's; with a working stack
# their full-size averages (classes_final / resultmx_final, step 11, shifts in input px)
FINAL = "final" if CROPPED else ITERS[-1]


def working_px(px):
    """A length in input pixels (config `maxshift`, `mramaxshift`) in working pixels; -1 stays."""
    return px if px is None or px < 0 else round(px / WORKING.scale, 3)


def iteration_seed(it):
    """Seed of every random step of iteration `it` (0 = initial stage)."""
    return config["seed"] * 1000 + int(it)


def seed_of_iteration(wildcards):
    """`params: seed` of an iteration's job: iteration_seed of its {it}."""
    return iteration_seed(wildcards.it)


def prev_classes(wildcards):
    """References of iteration `it`: --initial or classes_init for 01, classes_{it-1} after."""
    it = int(wildcards.it)
    if it > 1:
        return art(f"classes_{it - 1:02d}.hdf")
    return config["initial"] or art("classes_init.hdf")


def exclude_input(wildcards):
    """The `exclude` file as an input (none without one)."""
    return [config["exclude"]] if config["exclude"] else []


def exclude_arg():
    return f"--exclude {config['exclude']}" if config["exclude"] else ""


def mra_arg(wildcards, input):
    """`r2d classify --mra` with classify mra (classmx_YY from mra_YY), else nothing."""
    return f"--mra {input.mra}" if input.mra else ""


def reliability_arg(wildcards, input):
    """`r2d classify --reliability` with the references of mra_YY (MRA_RELIABILITY), else nothing."""
    return f"--reliability {input.refs}" if input.refs else ""


def run_folder(wildcards, input):
    """The run folder of `r2d montage --summary` and `r2d export`: that of the job's class averages."""
    classes = input.classes
    return os.path.dirname(classes if isinstance(classes, str) else classes[0])


def output_folder(wildcards, output):
    """Folder of the job's first output."""
    return os.path.dirname(output[0])


def mask_arg():
    """`--mask-diameter` of the aligning and averaging jobs (config `maskdiameter`, Å), else nothing."""
    return f"--mask-diameter {config['maskdiameter']}" if config["maskdiameter"] else ""


def apix_arg():
    return f"--apix {config['apix']}" if config["apix"] else ""


def with_maxshift(aligner, maxshift):
    """The aligner option string with its maxshift (input px) set in working px (-1 -> the
    working box/8, the class averages being centred)."""
    a = options.parse(aligner, "aligner")
    maxshift = working_px(maxshift)
    if maxshift is None or maxshift < 0:
        maxshift = WORKING.box / 8
    return str(options.Option(a.name, {**a.params, "maxshift": float(maxshift)}))


def opt(value):
    """An EMAN2 option string for the shell, quoted; None/null -> 'None'."""
    return "'None'" if value in (None, "", "None") else f"'{value}'"


def simmx_args(align):
    """e2simmx options of simmx (particles vs aliref) and mra (particles vs the class averages)."""
    return " ".join(
        [
            f"--align {opt(align)} --aligncmp {opt(config['simaligncmp'])}",
            f"--ralign {opt(config['simralign'])} --raligncmp {opt(config['simraligncmp'])}",
            f"--cmp {opt(config['simcmp'])} --shrink {config['shrink']} {exclude_arg()} {mask_arg()}",
        ]
    )


def class_args(iterations, prior=False):
    """e2classaverage options for `r2d average`; `prior`: start from classmx's alignments
    (`classprior`, with `classify: mra` only: k-means classmx has none)."""
    c = config
    return " ".join(
        [
            f"--iter {iterations} --keep {c['classkeep']}",
            "--keepsig" if c["classkeepsig"] else "",
            f"--align {opt(c['classalign'])} --aligncmp {opt(c['classaligncmp'])}",
            f"--ralign {opt(c['classralign'])} --raligncmp {opt(c['classraligncmp'])}",
            f"--averager {opt(c['classaverager'])} --cmp {opt(c['classcmp'])}",
            f"--normproc {opt(c['classnormproc'])} --center {opt(c['center'])}",
            "--automask" if c["automask"] else "",
            f"--maxshift {working_px(c['maxshift'])}",
            "--prior" if prior and c["classprior"] and c["classify"] == "mra" else "",
            mask_arg(),
        ]
    )


def final_outputs():
    """Final targets (the default `all` target).

    The last class averages, the report's pictures (REPORT_FILES in report.smk) and the
    exports (EXPORT_FILES in export.smk); with `classify: mra` also every iteration's
    input_YY_proj (and so simmx_YY), which classmx_YY then does not need, and with mragrow
    input_fp_basis_proj (and so input_fp_basis), which classmx_00 then does not need.
    """
    side = (
        [art(f"input_{it}_proj.h5") for it in ITERS]
        if config["classify"] == "mra"
        else []
    )
    if GROW is not None:
        side.insert(0, art("input_fp_basis_proj.h5"))
    return [art(f"classes_{ITERS[-1]}.hdf"), *side, *REPORT_FILES, *EXPORT_FILES]


# ---- threads, memory and runtime of every job ----------------------------------------------
# r2d.resources estimates them from the input (particles used, box) and the config; the
# config's `resources: {RULE: {mem_mb: .., runtime: ..}}` replaces an estimate, Snakemake's
# `--set-resources RULE:mem_mb=..` wins over both. Every rule gives `mem_mb=job_mem_mb,
# runtime=job_runtime`; Snakemake passes the rule's name (`rulename`) to both.
RESOURCES = ResourceModel.from_config(config, INPUT_FACTS)


def job_mem_mb(wildcards, attempt, rulename):
    """`resources: mem_mb` (MiB) of a job of rule `rulename`, times the attempt (--retries)."""
    return RESOURCES.mem_mb(rulename, attempt)


def job_runtime(wildcards, attempt, rulename):
    """`resources: runtime` (minutes) of a job of rule `rulename`, times the attempt."""
    return RESOURCES.runtime(rulename, attempt)
