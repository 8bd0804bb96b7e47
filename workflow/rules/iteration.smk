"""One refinement iteration YY (e2refine2d §1.3, steps 1-10), wildcard {it} = 01..iter."""

SIMMX_ARGS = simmx_args(config["simalign"])
# Scheduling (Snakemake picks ready jobs by priority): the chain to classes_YY (mra, classmx,
# class chunks: most of an iteration's work) first, then the short reference steps, then the
# side branch simmx_YY -> input_YY_proj, which fills the cores the chain leaves. 10,000 x 96 px
# on 2 cores: the class chunks no longer wait behind simmx chunks (66.2 s -> 60.8 s).
PRIO_MRA, PRIO_CLASSES, PRIO_REFS = 3, 2, 1
# mra: the previous iteration's class averages, centred for the search, shifts up to mramaxshift
MRA_ARGS = (
    simmx_args(with_maxshift(config["simalign"], config["mramaxshift"])) + " --center"
)


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
        "../envs/r2d.yaml"
    threads: config["threads"]
    resources:
        mem_mb=mem_mb("allrefs", "refs"),
        runtime=runtime_min("allrefs", "refs", threads=config["threads"]),
    params:
        apix=f"--apix {config['apix']}" if config["apix"] else "",
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
        "../envs/r2d.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("basis", "light"),
        runtime=runtime_min("basis", "light"),
    params:
        nbasis=config["nbasisfp"],
        seed=lambda wc: iteration_seed(wc.it),
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
        "../envs/r2d.yaml"
    threads: config["threads"]
    resources:
        mem_mb=mem_mb("aliref", "light"),
        runtime=runtime_min("aliref", "light", threads=config["threads"]),
    params:
        naliref=config["naliref"],
        ncls=config["ncls"],
    shell:
        "r2d aliref {input} -o {output} --naliref {params.naliref} --ncls {params.ncls}"
        " --threads {threads} > {log} 2>&1"


rule simmx_chunk:
    input:
        refs=art("aliref_{it}.hdf"),
        particles=PARTICLES,
        exclude=exclude_input,
    output:
        temp(art("simmx_{it}/{scatteritem}.h5")),
    log:
        art("logs/simmx_{it}/{scatteritem}.log"),
    benchmark:
        art("benchmarks/simmx_{it}/{scatteritem}.tsv")
    conda:
        "../envs/r2d.yaml"
    threads: config["threads"]
    resources:
        mem_mb=mem_mb("simmx_chunk", "simmx_chunk", chunked=True),
        runtime=runtime_min(
            "simmx_chunk", "simmx_chunk", chunked=True, threads=config["threads"]
        ),
    params:
        opts=SIMMX_ARGS,
        candidates="",  # mra_chunk: --candidates N
    shell:
        "r2d simmx {input.refs} {input.particles} -o {output} --chunk {wildcards.scatteritem}"
        " {params.opts} {params.candidates} --threads {threads} > {log} 2>&1"


rule simmx:
    input:
        gather.chunk(art("simmx_{{it}}/{scatteritem}.h5")),
    output:
        ensure(art("simmx_{it}.h5"), non_empty=True),
    log:
        art("logs/simmx_{it}.log"),
    benchmark:
        art("benchmarks/simmx_{it}.tsv")
    conda:
        "../envs/r2d.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("simmx", "gather"),
        runtime=runtime_min("simmx", "gather"),
    shell:
        "r2d gather -o {output} {input} > {log} 2>&1"


use rule simmx_chunk as mra_chunk with:
    input:
        refs=prev_classes,
        particles=PARTICLES,
        exclude=exclude_input,
    output:
        temp(art("mra_{it}/{scatteritem}.h5")),
    log:
        art("logs/mra_{it}/{scatteritem}.log"),
    benchmark:
        art("benchmarks/mra_{it}/{scatteritem}.tsv")
    priority: PRIO_MRA
    resources:
        mem_mb=mem_mb("mra_chunk", "mra_chunk", chunked=True),
        runtime=runtime_min(
            "mra_chunk", "mra_chunk", chunked=True, threads=config["threads"]
        ),
    params:
        opts=MRA_ARGS,
        candidates=f"--candidates {config['mracandidates']}",


rule mra:
    input:
        gather.chunk(art("mra_{{it}}/{scatteritem}.h5")),
    output:
        ensure(art("mra_{it}.h5"), non_empty=True),
    log:
        art("logs/mra_{it}.log"),
    benchmark:
        art("benchmarks/mra_{it}.tsv")
    priority: PRIO_MRA
    conda:
        "../envs/r2d.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("mra", "gather"),
        runtime=runtime_min("mra", "gather"),
    shell:
        "r2d gather -o {output} {input} > {log} 2>&1"


rule input_proj_chunk:
    input:
        particles=PARTICLES,
        basis=art("basis_{it}.hdf"),
        simmx=art("simmx_{it}.h5"),
    output:
        temp(art("input_{it}_proj/{scatteritem}.h5")),
    log:
        art("logs/input_{it}_proj/{scatteritem}.log"),
    benchmark:
        art("benchmarks/input_{it}_proj/{scatteritem}.tsv")
    conda:
        "../envs/r2d.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("input_proj_chunk", "input_proj", chunked=True),
        runtime=runtime_min("input_proj_chunk", "input_proj", chunked=True),
    shell:
        "r2d project {input.particles} {input.basis} --simmx {input.simmx} -o {output}"
        " --chunk {wildcards.scatteritem} > {log} 2>&1"


rule input_proj:
    input:
        gather.chunk(art("input_{{it}}_proj/{scatteritem}.h5")),
    output:
        ensure(art("input_{it}_proj.h5"), non_empty=True),
    log:
        art("logs/input_{it}_proj.log"),
    benchmark:
        art("benchmarks/input_{it}_proj.tsv")
    conda:
        "../envs/r2d.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("input_proj", "gather"),
        runtime=runtime_min("input_proj", "gather"),
    shell:
        "r2d gather -o {output} {input} > {log} 2>&1"


# classify mra: classmx_YY needs mra_YY only; simmx_YY and input_YY_proj (steps 7-8, which
# k-means classifies) are still made, beside class averaging (final_outputs asks for them)
rule classmx:
    input:
        proj=art("input_{it}_proj.h5") if config["classify"] == "kmeans" else [],
        mra=art("mra_{it}.h5") if config["classify"] == "mra" else [],
        exclude=exclude_input,
    output:
        ensure(art("classmx_{it}.h5"), non_empty=True),
    log:
        art("logs/classmx_{it}.log"),
    benchmark:
        art("benchmarks/classmx_{it}.tsv")
    priority: PRIO_MRA
    conda:
        "../envs/r2d.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("classmx", "classify"),
        runtime=runtime_min("classmx", "classify"),
    params:
        ncls=config["ncls"],
        minchange=config["minchange"],
        fastseed="--fastseed" if config["fastseed"] else "",
        seed=lambda wc: iteration_seed(wc.it),
        exclude=exclude_arg(),
        mra=lambda wc, input: f"--mra {input.mra}" if input.mra else "",
    shell:
        "r2d classify {input.proj} -o {output} --ncls {params.ncls} --minchange {params.minchange}"
        " {params.fastseed} --seed {params.seed} {params.exclude} {params.mra} > {log} 2>&1"


rule classes_chunk:
    input:
        particles=PARTICLES,
        classmx=art("classmx_{it}.h5"),
    output:
        classes=temp(art("classes_{it}/{scatteritem}.hdf")),
        resultmx=temp(art("classes_{it}/{scatteritem}.h5")),
    log:
        art("logs/classes_{it}/{scatteritem}.log"),
    benchmark:
        art("benchmarks/classes_{it}/{scatteritem}.tsv")
    priority: PRIO_CLASSES
    conda:
        "../envs/r2d.yaml"
    threads: config["threads"]
    resources:
        mem_mb=mem_mb("classes_chunk", "average", chunked=True),
        runtime=runtime_min(
            "classes_chunk", "average", chunked=True, threads=config["threads"]
        ),
    params:
        opts=class_args(config["classiter"], prior=True),
    shell:
        "r2d average {input.particles} {input.classmx} -o {output.classes} --resultmx {output.resultmx}"
        " --chunk {wildcards.scatteritem} {params.opts} --threads {threads} > {log} 2>&1"


rule classes:
    input:
        classes=gather.chunk(art("classes_{{it}}/{scatteritem}.hdf")),
        resultmx=gather.chunk(art("classes_{{it}}/{scatteritem}.h5")),
    output:
        classes=art("classes_{it}.hdf"),
        resultmx=art("resultmx_{it}.h5"),
    log:
        art("logs/classes_{it}.log"),
    benchmark:
        art("benchmarks/classes_{it}.tsv")
    priority: PRIO_CLASSES
    conda:
        "../envs/r2d.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("classes", "gather"),
        runtime=runtime_min("classes", "gather"),
    shell:
        "(r2d gather -o {output.classes} {input.classes}"
        " && r2d gather -o {output.resultmx} {input.resultmx}) > {log} 2>&1"
