# r2d: reference-free 2D classification (EMAN2 e2refine2d.py) as a Snakemake workflow.
#
#   snakemake --cores 2 --workflow-profile workflow/profiles/local      # run
#   snakemake -n                                                        # show the plan
#   snakemake --report report.html                                      # HTML report
#
# Every numbered step of e2refine2d is one rule writing its named artifact under `path`.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/init.smk"
include: "workflow/rules/references.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/classes.smk"
include: "workflow/rules/stability.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/export.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
