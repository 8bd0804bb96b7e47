"""Montages of the class averages and a run summary for `snakemake --report`."""


rule montage_init:
    input:
        art("classes_init.hdf"),
    output:
        report(
            art("report/classes_init.png"),
            caption="../report/montage.rst",
            category="Class averages",
            labels={"iteration": "init"},
        ),
    log:
        art("logs/montage_init.log"),
    conda:
        "../envs/r2d.yaml"
    shell:
        "r2d montage {input} -o {output} --title 'classes_init' > {log} 2>&1"


rule montage:
    input:
        art("classes_{it}.hdf"),
    output:
        report(
            art("report/classes_{it}.png"),
            caption="../report/montage.rst",
            category="Class averages",
            labels={"iteration": "{it}"},
        ),
    log:
        art("logs/montage_{it}.log"),
    conda:
        "../envs/r2d.yaml"
    shell:
        "r2d montage {input} -o {output} --title 'classes_{wildcards.it}' > {log} 2>&1"


rule summary:
    input:
        montages=[art(f"report/classes_{it}.png") for it in ITERS]
        + ([] if config["initial"] else [art("report/classes_init.png")]),
        classmx=[art(f"classmx_{it}.h5") for it in ITERS],
        classes=[art(f"classes_{it}.hdf") for it in ITERS],
    output:
        report(
            art("report/summary.json"),
            caption="../report/summary.rst",
            category="Run summary",
        ),
    log:
        art("logs/summary.log"),
    conda:
        "../envs/r2d.yaml"
    shell:
        "r2d montage --summary \"$(dirname {input.classmx[0]})\" -o {output} > {log} 2>&1"
