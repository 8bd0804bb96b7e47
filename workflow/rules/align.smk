"""Iteration YY, steps 7-8 and the mra search (e2refine2d §1.3), wildcard {it}, in chunks.

simmx_YY: every particle against the alignment references; input_YY_proj: the particles,
aligned to their best reference, projected onto basis_YY (what k-means classifies);
mra_YY (r2d extension, classify mra): every particle against the previous class averages.
"""

SIMMX_ARGS = simmx_args(config["simalign"])
# mra: the previous iteration's class averages, centred for the search, shifts up to mramaxshift
MRA_ARGS = (
    simmx_args(with_maxshift(config["simalign"], config["mramaxshift"])) + " --center"
)


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
        R2D_ENV
    threads: config["threads"]
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        opts=SIMMX_ARGS,
        candidates="",  # mra_chunk: --candidates N
        chunk=chunk_arg,
    shell:
        "r2d simmx {input.refs} {input.particles} -o {output} {params.chunk}"
        " {params.opts} {params.candidates} --threads {threads} > {log} 2>&1"


if ONE_CHUNK:

    use rule simmx_chunk as simmx with:
        output:
            ensure(art("simmx_{it}.h5"), non_empty=True),
        log:
            art("logs/simmx_{it}.log"),
        benchmark:
            art("benchmarks/simmx_{it}.tsv")
        params:
            chunk="",

else:

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
            R2D_ENV
        threads: 1
        resources:
            mem_mb=job_mem_mb,
            runtime=job_runtime,
        shell:
            "r2d gather -o {output} {input} > {log} 2>&1"


# the same command as simmx_chunk, against the previous class averages (resources: its own)
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
    params:
        opts=MRA_ARGS,
        candidates=f"--candidates {config['mracandidates']}",


if ONE_CHUNK:

    use rule mra_chunk as mra with:
        output:
            ensure(art("mra_{it}.h5"), non_empty=True),
        log:
            art("logs/mra_{it}.log"),
        benchmark:
            art("benchmarks/mra_{it}.tsv")
        params:
            chunk="",

else:

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
            R2D_ENV
        threads: 1
        resources:
            mem_mb=job_mem_mb,
            runtime=job_runtime,
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
        R2D_ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        chunk=chunk_arg,
    shell:
        "r2d project {input.particles} {input.basis} --simmx {input.simmx} -o {output}"
        " {params.chunk} > {log} 2>&1"


if ONE_CHUNK:

    use rule input_proj_chunk as input_proj with:
        output:
            ensure(art("input_{it}_proj.h5"), non_empty=True),
        log:
            art("logs/input_{it}_proj.log"),
        benchmark:
            art("benchmarks/input_{it}_proj.tsv")
        params:
            chunk="",

else:

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
            R2D_ENV
        threads: 1
        resources:
            mem_mb=job_mem_mb,
            runtime=job_runtime,
        shell:
            "r2d gather -o {output} {input} > {log} 2>&1"
