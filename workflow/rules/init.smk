"""Initial stage (e2refine2d §1.2): invariants -> MSA -> projection -> k-means -> classes_init."""


# the particle index; with maxres (r2d.working) also the working stack it points at, the only
# full pass over the input before the final class averages
rule particles:
    input:
        config["input"],
    output:
        index=PARTICLES,
        working=[WORKING_STACK] if CROPPED else [],
    log:
        art("logs/particles.log"),
    benchmark:
        art("benchmarks/particles.tsv")
    conda:
        R2D_ENV
    threads: config["threads"]
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        # the working box's own Nyquist (2 x its pixel size): the box r2d.check chose, also where
        # a default maxres was raised to the smallest working box
        working=f"--maxres {2 * WORKING.apix!r} --working {WORKING_STACK}" if CROPPED else "",
        apix=apix_arg(),
    shell:
        "r2d index {input} -o {output.index} {params.working} {params.apix} --threads {threads} > {log} 2>&1"


rule input_fp:
    input:
        particles=PARTICLES,
        exclude=exclude_input,
    output:
        art("input_fp.h5"),
    log:
        art("logs/input_fp.log"),
    benchmark:
        art("benchmarks/input_fp.tsv")
    conda:
        R2D_ENV
    threads: config["threads"]
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        ncls=config["ncls"],
        exclude=exclude_arg(),
    shell:
        "r2d invariants {input.particles} -o {output} --ncls {params.ncls} {params.exclude}"
        " --threads {threads} > {log} 2>&1"


rule input_fp_basis:
    input:
        art("input_fp.h5"),
    output:
        art("input_fp_basis.hdf"),
    log:
        art("logs/input_fp_basis.log"),
    benchmark:
        art("benchmarks/input_fp_basis.tsv")
    conda:
        R2D_ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        nbasis=config["nbasisfp"],
        seed=iteration_seed(0),
    shell:
        "r2d msa {input} -o {output} --nbasis {params.nbasis} --seed {params.seed} > {log} 2>&1"


rule input_fp_basis_proj:
    input:
        fp=art("input_fp.h5"),
        basis=art("input_fp_basis.hdf"),
    output:
        art("input_fp_basis_proj.h5"),
    log:
        art("logs/input_fp_basis_proj.log"),
    benchmark:
        art("benchmarks/input_fp_basis_proj.tsv")
    conda:
        R2D_ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        normproj="--normproj" if config["normproj"] else "",
    shell:
        "r2d project {input.fp} {input.basis} -o {output} {params.normproj} > {log} 2>&1"


# mragrow starts from one class of the particles input_fp lists: classmx_00 needs no k-means
# then, and classes_init runs beside input_fp_basis and input_fp_basis_proj
rule classmx_00:
    input:
        art("input_fp.h5") if GROW else art("input_fp_basis_proj.h5"),
    output:
        art("classmx_00.h5"),
    log:
        art("logs/classmx_00.log"),
    benchmark:
        art("benchmarks/classmx_00.tsv")
    conda:
        R2D_ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        ncls=1 if GROW else min(INIT_CLASSES, config["ncls"]),
        minchange=config["minchange"],
        fastseed="--fastseed" if config["fastseed"] else "",
        seed=iteration_seed(0),
    shell:
        "r2d classify {input} -o {output} --ncls {params.ncls} --minchange {params.minchange}"
        " {params.fastseed} --seed {params.seed} > {log} 2>&1"


rule classes_init_chunk:
    input:
        particles=PARTICLES,
        classmx=art("classmx_00.h5"),
    output:
        classes=temp(art("classes_init/{scatteritem}.hdf")),
        resultmx=temp(art("classes_init/{scatteritem}.h5")),
    log:
        art("logs/classes_init/{scatteritem}.log"),
    benchmark:
        art("benchmarks/classes_init/{scatteritem}.tsv")
    conda:
        R2D_ENV
    threads: config["threads"]
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        chunk=chunk_arg,
        opts=class_args(8),
        split=split_arg(0),
    shell:
        "r2d average {input.particles} {input.classmx} -o {output.classes} --resultmx {output.resultmx}"
        " {params.chunk} {params.opts} {params.split} --threads {threads} > {log} 2>&1"


if ONE_CHUNK:

    use rule classes_init_chunk as classes_init with:
        output:
            classes=art("classes_init.hdf"),
            resultmx=art("resultmx_init.h5"),
        log:
            art("logs/classes_init.log"),
        benchmark:
            art("benchmarks/classes_init.tsv")
        params:
            chunk="",

else:

    rule classes_init:
        input:
            classes=gather.chunk(art("classes_init/{scatteritem}.hdf")),
            resultmx=gather.chunk(art("classes_init/{scatteritem}.h5")),
        output:
            classes=art("classes_init.hdf"),
            resultmx=art("resultmx_init.h5"),
        log:
            art("logs/classes_init.log"),
        benchmark:
            art("benchmarks/classes_init.tsv")
        conda:
            R2D_ENV
        threads: 1
        resources:
            mem_mb=job_mem_mb,
            runtime=job_runtime,
        shell:
            "(r2d gather -o {output.classes} {input.classes}"
            " && r2d gather -o {output.resultmx} {input.resultmx}) > {log} 2>&1"
