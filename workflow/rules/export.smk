"""Exports at the end of the run (`r2d export`, see src/r2d/export.py).

RELION particles.star, class averages as MRCS + STAR and EMAN2 HDF, and a cryoSPARC .cs
when the input is one.
"""

import os

# Files `r2d export` writes into {path}/export for this input (final targets).
_input_ext = os.path.splitext(config["input"])[1].lower()
EXPORT_FILES = [
    art("export/particles.star"),
    art("export/class_averages.mrcs"),
    art("export/class_averages.star"),
    art("export/class_averages.hdf"),
]
if _input_ext == ".cs":
    EXPORT_FILES.append(art("export/particles.cs"))
if _input_ext in (".hdf", ".h5"):
    # RELION reads no HDF: r2d export writes a copy of the particles
    EXPORT_FILES.append(art("export/particles.mrcs"))


rule export:
    input:
        particles=config["input"],
        classes=art(f"classes_{FINAL}.hdf"),
        classmx=art(f"classmx_{ITERS[-1]}.h5"),
        resultmx=art(f"resultmx_{FINAL}.h5"),
        stability=STABILITY or [],
    output:
        EXPORT_FILES,
    log:
        art("logs/export.log"),
    benchmark:
        art("benchmarks/export.tsv")
    conda:
        R2D_ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
    params:
        run=run_folder,
        outdir=output_folder,
        it=FINAL,
        apix=apix_arg(),
        stability=lambda wildcards, input: f"--stability {input.stability}" if input.stability else "",
    shell:
        "r2d export {params.run} --input {input.particles} -o {params.outdir} --iteration {params.it}"
        " {params.apix} {params.stability} > {log} 2>&1"


onsuccess:
    print(
        f"\nr2d: run folder {RUN}/ — exports in {RUN}/export/ (particles.star, class_averages.mrcs/.star/.hdf)."
        f"\nr2d: HTML report: snakemake --report {RUN}/report.html (with the same --configfile/--config)\n"
    )
