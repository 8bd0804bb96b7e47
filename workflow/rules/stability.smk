"""Step 12 (r2d): class stability (`stability` repeats, default 3; 0 = off; src/r2d/stability.py).

Each repeat averages the last iteration's classes again, every class bootstrapped from its
members in a random order (`r2d average RESULTMX --random-start SEED`), one job per repeat;
`r2d stability` then compares each member's repeat alignments with its final one and writes
per-particle agreement and per-class stability, which the exports carry (r2dStability).
"""

REPEATS = [f"{r:02d}" for r in range(1, config["stability"] + 1)]
STABILITY = art("stability.h5") if REPEATS else None


wildcard_constraints:
    rep=r"\d\d",


rule stability_repeat:
    input:
        particles=PARTICLES,
        resultmx=art(f"resultmx_{ITERS[-1]}.h5"),
    output:
        classes=art("stability/classes_{rep}.hdf"),
        resultmx=art("stability/resultmx_{rep}.h5"),
    log:
        art("logs/stability_{rep}.log"),
    benchmark:
        art("benchmarks/stability_{rep}.tsv")
    priority: PRIO_CLASSES
    conda:
        R2D_ENV
    threads: config["threads"]
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        opts=class_args(config["classiter"]),
        seed=lambda wildcards: config["seed"] * 1000 + 500 + int(wildcards.rep),
    shell:
        "r2d average {input.particles} {input.resultmx} -o {output.classes} --resultmx {output.resultmx}"
        " {params.opts} --random-start {params.seed} --threads {threads} > {log} 2>&1"


rule stability:
    input:
        final=art(f"resultmx_{ITERS[-1]}.h5"),
        repeats=expand(art("stability/resultmx_{rep}.h5"), rep=REPEATS),
    output:
        art("stability.h5"),
    log:
        art("logs/stability.log"),
    benchmark:
        art("benchmarks/stability.tsv")
    priority: PRIO_CLASSES
    conda:
        R2D_ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    shell:
        "r2d stability {input.final} {input.repeats} -o {output} > {log} 2>&1"
