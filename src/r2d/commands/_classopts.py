"""The e2classaverage options shared by ``r2d average`` (config keys of the same names)."""

from __future__ import annotations


def add_class_args(p):
    p.add_argument("--iter", type=int, default=5, help="class-averaging iterations (classiter; 8 for classes_init)")
    p.add_argument("--keep", type=float, default=0.85, help="classkeep: fraction kept (or σ multiplier with --keepsig)")
    p.add_argument("--keepsig", action="store_true", help="classkeepsig: keep scores ≤ mean + keep·σ")
    p.add_argument("--align", default="rotate_translate_tree", help="classalign")
    p.add_argument("--aligncmp", default="ccc", help="classaligncmp")
    p.add_argument("--ralign", default=None, help="classralign (refine or None)")
    p.add_argument("--raligncmp", default="ccc", help="classraligncmp")
    p.add_argument("--averager", default="ctf.weight.autofilt", help="classaverager")
    p.add_argument("--cmp", default="ccc", help="classcmp")
    p.add_argument("--normproc", default="normalize.edgemean", help="classnormproc")
    p.add_argument("--center", default="xform.center", help="centering processor or nocenter")
    p.add_argument("--automask", action="store_true", help="automask the working reference")
    p.add_argument("--maxshift", type=float, default=-1, help="maxshift appended to the aligner (−1: n//3)")
