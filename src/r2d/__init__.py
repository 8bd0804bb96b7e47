"""r2d: reference-free 2D classification of cryo-EM particle images.

A re-implementation of EMAN2's ``e2refine2d.py`` as a small numpy/scipy library with a
command-line interface (``r2d <command>``) that a Snakemake workflow calls step by step.
Importing the package has no side effects.
"""

__version__ = "0.1.0"
