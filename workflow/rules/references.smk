"""Iteration YY, steps 1-6 (e2refine2d §1.3): the references of the iteration, wildcard {it}.

allrefs_YY: the previous class averages, preprocessed and mutually aligned; basis_YY: their
MSA; aliref_YY: the naliref most dissimilar of them, the alignment references of simmx_YY.
"""


rule allrefs:
    input:
        prev_classes,
    output:
        art("allrefs_{it}.hdf"),
    log:
        art("logs/allrefs_{it}.log"),
    benchmark:
        art("benchmarks/allrefs_{it}.tsv")
    priority: PRIO_REFS
    conda:
        R2D_ENV
    threads: config["threads"]
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        apix=apix_arg(),
    shell:
        "r2d allrefs {input} -o {output} {params.apix} --threads {threads} > {log} 2>&1"


rule basis:
    input:
        art("allrefs_{it}.hdf"),
    output:
        art("basis_{it}.hdf"),
    log:
        art("logs/basis_{it}.log"),
    benchmark:
        art("benchmarks/basis_{it}.tsv")
    priority: PRIO_REFS
    conda:
        R2D_ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        nbasis=nbasis_of,
        seed=seed_of_iteration,
    shell:
        "r2d msa {input} -o {output} --nbasis {params.nbasis} --seed {params.seed} > {log} 2>&1"


rule aliref:
    input:
        art("allrefs_{it}.hdf"),
    output:
        art("aliref_{it}.hdf"),
    log:
        art("logs/aliref_{it}.log"),
    benchmark:
        art("benchmarks/aliref_{it}.tsv")
    priority: PRIO_REFS
    conda:
        R2D_ENV
    threads: config["threads"]
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        naliref=config["naliref"],
        ncls=config["ncls"],
    shell:
        "r2d aliref {input} -o {output} --naliref {params.naliref} --ncls {params.ncls}"
        " --threads {threads} > {log} 2>&1"
