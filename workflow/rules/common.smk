"""Config validation, iteration helpers and wildcard constraints (no rules here)."""

import os
import sys

from snakemake.utils import validate

from r2d.check import check_workflow_config, format_error
from r2d.errors import UserError

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


def opt(value):
    """An EMAN2 option string for the shell, quoted; None/null -> 'None'."""
    return "'None'" if value in (None, "", "None") else f"'{value}'"


def class_args(iterations):
    """e2classaverage options for `r2d average`."""
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
        ]
    )


def final_outputs():
    """Final targets (the default `all` target).

    The last class averages, the report's pictures (REPORT_FILES in report.smk) and the
    exports (EXPORT_FILES in export.smk).
    """
    return [art(f"classes_{ITERS[-1]}.hdf"), *REPORT_FILES, *EXPORT_FILES]
