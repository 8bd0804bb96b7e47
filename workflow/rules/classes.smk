"""Iteration YY, steps 9-10 (e2refine2d §1.3), wildcard {it}: classmx_YY and classes_YY."""

# mrareliability (classify mra, simcmp ccc): classmx_YY also reads the references of mra_YY,
# whose half-set FSC sets how much each average's own noise lowers its correlations
MRA_RELIABILITY = (
    config["classify"] == "mra"
    and config["mrareliability"]
    and options.parse(config["simcmp"], "comparator").name == "ccc"
)

# classify mra: classmx_YY needs mra_YY only; simmx_YY and input_YY_proj (steps 7-8, which
# k-means classifies) are still made, beside class averaging (final_outputs asks for them)
rule classmx:
    input:
        proj=art("input_{it}_proj.h5") if config["classify"] == "kmeans" else [],
        mra=art("mra_{it}.h5") if config["classify"] == "mra" else [],
        refs=prev_classes if MRA_RELIABILITY else [],
        exclude=exclude_input,
    output:
        ensure(art("classmx_{it}.h5"), non_empty=True),
    log:
        art("logs/classmx_{it}.log"),
    benchmark:
        art("benchmarks/classmx_{it}.tsv")
    priority: PRIO_MRA
    conda:
        R2D_ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        ncls=config["ncls"],
        minchange=config["minchange"],
        fastseed="--fastseed" if config["fastseed"] else "",
        seed=seed_of_iteration,
        exclude=exclude_arg(),
        mra=mra_arg,
        reliability=reliability_arg,
        margin=f"--margin {config['mramargin']}" if config["classify"] == "mra" else "",
    shell:
        "r2d classify {input.proj} -o {output} --ncls {params.ncls} --minchange {params.minchange}"
        " {params.fastseed} --seed {params.seed} {params.exclude} {params.mra} {params.reliability}"
        " {params.margin} > {log} 2>&1"


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
        R2D_ENV
    threads: config["threads"]
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        chunk=chunk_arg,
        opts=class_args(config["classiter"], prior=True),
        split=lambda wildcards: split_arg(wildcards.it),
    shell:
        "r2d average {input.particles} {input.classmx} -o {output.classes} --resultmx {output.resultmx}"
        " {params.chunk} {params.opts} {params.split} --threads {threads} > {log} 2>&1"


if ONE_CHUNK:

    use rule classes_chunk as classes with:
        output:
            classes=art("classes_{it}.hdf"),
            resultmx=art("resultmx_{it}.h5"),
        log:
            art("logs/classes_{it}.log"),
        benchmark:
            art("benchmarks/classes_{it}.tsv")
        params:
            chunk="",

else:

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
            R2D_ENV
        threads: 1
        resources:
            mem_mb=job_mem_mb,
            runtime=job_runtime,
        shell:
            "(r2d gather -o {output.classes} {input.classes}"
            " && r2d gather -o {output.resultmx} {input.resultmx}) > {log} 2>&1"


# Step 11 (with a working stack only): the last iteration's classes re-averaged from the input
# particles at their own box and pixel size, with its transforms (shifts scaled to input px);
# the exports and the final montage use classes_final / resultmx_final
rule classes_final_chunk:
    input:
        particles=config["input"],
        resultmx=art(f"resultmx_{ITERS[-1]}.h5"),
    output:
        classes=temp(art("classes_final/{scatteritem}.hdf")),
        resultmx=temp(art("classes_final/{scatteritem}.h5")),
    log:
        art("logs/classes_final/{scatteritem}.log"),
    benchmark:
        art("benchmarks/classes_final/{scatteritem}.tsv")
    conda:
        R2D_ENV
    threads: config["threads"]
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        chunk=chunk_arg,
        averager=opt(config["classaverager"]),
        normproc=opt(config["classnormproc"]),
        apix=apix_arg(),
        mask=mask_arg(),
    shell:
        "r2d fullsize {input.particles} {input.resultmx} -o {output.classes} --resultmx {output.resultmx}"
        " {params.chunk} --averager {params.averager} --normproc {params.normproc}"
        " {params.apix} {params.mask} --threads {threads} > {log} 2>&1"


if ONE_CHUNK:

    use rule classes_final_chunk as classes_final with:
        output:
            classes=art("classes_final.hdf"),
            resultmx=art("resultmx_final.h5"),
        log:
            art("logs/classes_final.log"),
        benchmark:
            art("benchmarks/classes_final.tsv")
        params:
            chunk="",

else:

    rule classes_final:
        input:
            classes=gather.chunk(art("classes_final/{scatteritem}.hdf")),
            resultmx=gather.chunk(art("classes_final/{scatteritem}.h5")),
        output:
            classes=art("classes_final.hdf"),
            resultmx=art("resultmx_final.h5"),
        log:
            art("logs/classes_final.log"),
        benchmark:
            art("benchmarks/classes_final.tsv")
        conda:
            R2D_ENV
        threads: 1
        resources:
            mem_mb=job_mem_mb,
            runtime=job_runtime,
        shell:
            "(r2d gather -o {output.classes} {input.classes}"
            " && r2d gather -o {output.resultmx} {input.resultmx}) > {log} 2>&1"
