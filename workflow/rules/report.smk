"""Pictures for `snakemake --report`: class-average montages (final, initial, every iteration),
the final classes as a sortable HTML table (with their stability, step 12, when it ran), the
convergence and class-size plots and the per-iteration summary (`r2d montage`)."""


rule montage_final:
    input:
        classes=art(f"classes_{FINAL}.hdf"),
        stability=STABILITY or [],
    output:
        montage=report(
            art("report/final_classes.png"),
            caption="../report/final.rst",
            category="1. Final class averages",
            labels={"figure": "montage", "iteration": ITERS[-1]},
        ),
        table=report(
            art("report/final_classes.html"),
            caption="../report/final_table.rst",
            category="1. Final class averages",
            labels={"figure": "class table", "iteration": ITERS[-1]},
        ),
    log:
        art("logs/montage_final.log"),
    conda:
        R2D_ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        title=f"final class averages (iteration {ITERS[-1]}"
        + (f", {WORKING.input_box} px" if CROPPED else "")
        + ")",
        stability=lambda wildcards, input: (
            f"--stability {input.stability}" if input.stability else ""
        ),
    shell:
        "r2d montage {input.classes} -o {output.montage} --table {output.table} {params.stability}"
        " --title '{params.title}' > {log} 2>&1"


rule montage_init:
    input:
        art("classes_init.hdf"),
    output:
        report(
            art("report/classes_init.png"),
            caption="../report/montage.rst",
            category="3. Class averages per iteration",
            subcategory="init",
            labels={"figure": "montage", "iteration": "init"},
        ),
    log:
        art("logs/montage_init.log"),
    conda:
        R2D_ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    shell:
        "r2d montage {input} -o {output} --title 'classes_init' > {log} 2>&1"


rule montage:
    input:
        art("classes_{it}.hdf"),
    output:
        report(
            art("report/classes_{it}.png"),
            caption="../report/montage.rst",
            category="3. Class averages per iteration",
            subcategory="iteration {it}",
            labels={"figure": "montage", "iteration": "{it}"},
        ),
    log:
        art("logs/montage_{it}.log"),
    conda:
        R2D_ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    shell:
        "r2d montage {input} -o {output} --title 'iteration {wildcards.it}' > {log} 2>&1"


rule summary:
    input:
        classmx=[art(f"classmx_{it}.h5") for it in ITERS],
        resultmx=[art(f"resultmx_{it}.h5") for it in ITERS],
        classes=[art(f"classes_{it}.hdf") for it in ITERS],
        final=[art("classes_final.hdf")] if CROPPED else [],
        stability=STABILITY or [],
    output:
        summary=report(
            art("report/summary.json"),
            caption="../report/summary.rst",
            category="2. Convergence",
            labels={"figure": "summary (JSON)"},
        ),
        convergence=report(
            art("report/convergence.png"),
            caption="../report/convergence.rst",
            category="2. Convergence",
            labels={"figure": "convergence"},
        ),
        sizes=report(
            art("report/class_sizes.png"),
            caption="../report/class_sizes.rst",
            category="2. Convergence",
            labels={"figure": "class sizes"},
        ),
    log:
        art("logs/summary.log"),
    conda:
        R2D_ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        run=run_folder,
    shell:
        "r2d montage --summary {params.run} -o {output.summary} --convergence {output.convergence}"
        " --class-sizes {output.sizes} > {log} 2>&1"


# The report's pictures and summary (final targets).
REPORT_FILES = [
    art("report/final_classes.png"),
    art("report/final_classes.html"),
    art("report/summary.json"),
    art("report/convergence.png"),
    art("report/class_sizes.png"),
    *[art(f"report/classes_{it}.png") for it in ITERS],
    *([] if config["initial"] else [art("report/classes_init.png")]),
]
