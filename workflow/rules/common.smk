"""Config validation, iteration helpers and wildcard constraints (no rules here)."""

import os
import sys

from snakemake.utils import validate

from r2d.check import check_workflow_config, format_error
from r2d.errors import UserError
from r2d.io import image_block

# Up-front validation, before any job runs (r2d.check; `r2d check` runs the same checks):
# schema (unknown keys, types, ranges; fills defaults), relations between values, and the
# input/exclude/initial files from their headers. One message per problem, then exit 1.
SCHEMA = os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
try:
    INPUT_FACTS = check_workflow_config(config, SCHEMA)
except UserError as exc:
    sys.stderr.write(f"\n{format_error(exc)}\n\n")
    sys.exit(1)
for _warning in INPUT_FACTS["warnings"]:
    sys.stderr.write(f"r2d: warning: {_warning}\n")
validate(config, schema="../schemas/config.schema.yaml")

RUN = config["path"]
ITERS = [f"{i:02d}" for i in range(1, config["iter"] + 1)]


wildcard_constraints:
    it=r"0[1-9]|[1-9]\d",


scattergather:
    chunk=config["chunks"],


def art(name):
    """Path of an artifact in the run folder."""
    return f"{RUN}/{name}"


# the particles as every step reads them: the index of the input (rule particles)
PARTICLES = art("particles.h5")


def iteration_seed(it):
    """Seed of every random step of iteration `it` (0 = initial stage)."""
    return config["seed"] * 1000 + int(it)


def prev_classes(wildcards):
    """References of iteration `it`: --initial or classes_init for 01, classes_{it-1} after."""
    it = int(wildcards.it)
    if it > 1:
        return art(f"classes_{it - 1:02d}.hdf")
    return config["initial"] or art("classes_init.hdf")


def exclude_input(wildcards):
    return [config["exclude"]] if config["exclude"] else []


def exclude_arg():
    return f"--exclude {config['exclude']}" if config["exclude"] else ""


def with_maxshift(aligner, maxshift):
    """The aligner option string with its maxshift set (-1 -> box/8, the class averages being centred)."""
    from r2d.options import Option, parse

    a = parse(aligner, "aligner")
    if maxshift is None or maxshift < 0:
        if "box" not in INPUT_FACTS:
            return aligner
        maxshift = INPUT_FACTS["box"] / 8
    return str(Option(a.name, {**a.params, "maxshift": float(maxshift)}))


def simmx_args(align):
    """e2simmx options of simmx (particles vs aliref) and mra (particles vs the class averages)."""
    return " ".join(
        [
            f"--align {opt(align)} --aligncmp {opt(config['simaligncmp'])}",
            f"--ralign {opt(config['simralign'])} --raligncmp {opt(config['simraligncmp'])}",
            f"--cmp {opt(config['simcmp'])} --shrink {config['shrink']} {exclude_arg()}",
        ]
    )


def opt(value):
    """An EMAN2 option string for the shell, quoted; None/null -> 'None'."""
    return "'None'" if value in (None, "", "None") else f"'{value}'"


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
            f"--maxshift {c['maxshift']}",
            "--prior" if prior and c["classprior"] and c["classify"] == "mra" else "",
        ]
    )


def final_outputs():
    """Final targets (the default `all` target).

    The last class averages, the report's pictures (REPORT_FILES in report.smk) and the
    exports (EXPORT_FILES in export.smk); with `classify: mra` also every iteration's
    input_YY_proj (and so simmx_YY), which classmx_YY then does not need.
    """
    side = [art(f"input_{it}_proj.h5") for it in ITERS] if config["classify"] == "mra" else []
    return [art(f"classes_{ITERS[-1]}.hdf"), *side, *REPORT_FILES, *EXPORT_FILES]


# ---- threads, memory and runtime of every job -------------------------------------------------
# Estimated from the input (INPUT_FACTS: particles used, box) and the chunk size: a chunked job's
# memory depends on its chunk (at most BLOCK particles held at once), not on the dataset.
# Overrides: config `resources: {RULE: {mem_mb: .., runtime: ..}}`, or Snakemake's own
# `--set-resources RULE:mem_mb=..` (wins over both). A retried job (--retries) asks for
# attempt x the estimate.
#   mem_mb  = 1.25 * (170 + A * (box/64)^2 + I * img * particles_held), rounded up to 100, >= 500
#             (170 MiB = Python + numpy + r2d; A = box-dependent tables (aligner); img = box^2*4 B)
#   runtime = ceil(3 * s * particles * (box/64)^3 * passes / threads / 60) minutes, >= 10
# A, I and s (CPU seconds per particle at 64 px) fitted to peak RSS / CPU time measured with
# /usr/bin/time on simulated 2000-particle stacks of 64 px and 128 px (2 threads):
#   simmx_chunk (5 refs): 603/642 MiB at 500/2000 ptcls, 64 px; 2015/2384 MiB at 128 px
#   mra_chunk (32 refs):  699/739 MiB at 500/2000, 64 px; 2716 MiB at 500, 128 px
#   classes (average):    709 MiB at 2000, 64 px; 2653 MiB at 2000, 128 px (whole stack)
#   input_fp:             252 / 522 MiB at 2000, 64 / 128 px;  msa of input_fp: 277 / 565 MiB
#   input_proj chunk:     325/477 MiB at 500/2000, 64 px
#   at 64 px: allrefs 401, aliref 168, classify 64, gather 43, montage 101, export 140 MiB
N_USED = max(1, INPUT_FACTS.get("n_used", INPUT_FACTS.get("n", 1)))
BOX = INPUT_FACTS.get("box", 64)
IMG_MB = BOX * BOX * 4 / 2**20  # one float32 image
# particles a per-particle step holds at once (64 MiB of images)
BLOCK = image_block(BOX)
# kind: (A MiB, I images per particle, particles held, s CPU s per particle at 64 px, passes)
_RES = {
    "input_fp": (0, 3, "subset", 0.001, 1),
    "msa_fp": (0, 4.4, "subset", 0.002, 1),  # footprints: ~0.55 img per particle
    "project_fp": (0, 1.8, "subset", 0.001, 1),
    "classify": (0, 0.1, "all", 0.0005, 1),
    "average": (450, 7, "block", 0.0045, config["classiter"] + 1),
    "average_init": (450, 7, "block", 0.0045, 9),  # of the subset only
    "refs": (250, 0, "all", 0, 1),  # allrefs: class averages and aligner tables
    # aliref, basis, montages, summary: class averages only
    "light": (0, 0, "all", 0, 1),
    "simmx_chunk": (420, 4, "block", 0.0012 * config["naliref"], 1),
    # CPU time measured with ncls 32
    "mra_chunk": (650, 4, "block", 0.015 * config["ncls"] / 32, 1),
    "gather": (0, 0.2, "all", 0.0002, 1),  # score/shift rows: ~0.2 img per particle
    "input_proj": (150, 7, "block", 0.002, 1),
    "export": (0, 1, "block", 0.001, 1),
}


def _override(rule, key):
    return ((config.get("resources") or {}).get(rule) or {}).get(key)


def _count(kind, chunked):
    """Particles a job of `kind` works on: the initial stage uses a subset of max(2000, 10 ncls)
    (r2d invariants); a chunked job its share."""
    n = N_USED
    if _RES[kind][2] == "subset" or kind == "average_init":
        n = min(n, max(2000, 10 * config["ncls"]))
    return -(-n // config["chunks"]) if chunked else n


def _particles(kind, chunked):
    """Particles a job of `kind` holds at once."""
    n = _count(kind, chunked)
    return min(n, BLOCK) if _RES[kind][2] == "block" else n


def mem_mb(rule, kind, chunked=False):
    """`resources: mem_mb` of `rule` (a function of the attempt; formula above)."""
    tables, per_img, _, _, _ = _RES[kind]
    est = 170 + tables * (BOX / 64) ** 2 + per_img * IMG_MB * _particles(kind, chunked)
    value = _override(rule, "mem_mb") or max(500, 100 * int(-(-1.25 * est // 100)))
    return lambda wildcards, attempt: value * attempt


def runtime_min(rule, kind, chunked=False, threads=1):
    """`resources: runtime` (minutes) of `rule` (a function of the attempt; formula above)."""
    _, _, _, rate, passes = _RES[kind]
    est = 3 * rate * _count(kind, chunked) * (BOX / 64) ** 3 * passes / threads / 60
    value = _override(rule, "runtime") or max(10, int(-(-est // 1)))
    return lambda wildcards, attempt: value * attempt
