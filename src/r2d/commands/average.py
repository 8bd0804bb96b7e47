"""Iterative class averaging (steps 0f and 10: ``classes_init``, ``classes_YY``), as e2classaverage.

Reads the particle stack and a ``classmx`` file (its ``class`` column; with ``--prior`` also
the transforms of the rows marked ``aligned``, as a start for those classes instead of the
bootstrap) and writes one average per non-empty class to an image
stack. Headers: ``class_id``, ``ptcl_repr``, ``class_ptcl_idxs`` (input indices averaged),
``exc_class_ptcl_idxs`` (members excluded by classkeep), ``class_ptcl_qual(_sigma)``,
``n_kept``, ``n_excluded``, ``mean_score``, ``resolution`` (Å, even/odd half-set FSC = 0.143),
``fsc_half``, ``ctf_corrected``, ``class_ptcl_src``.
``--resultmx`` also writes the per-particle table (class, used, final transform, score).
``--chunk i-of-k`` averages only chunk i's classes (:func:`r2d.average.class_chunks`: balanced by
member count); its result table has class −1 on the other chunks' rows, and ``r2d gather``
merges the chunks into the same stack and table as one job would write (bit-identical).

The ``ctf.*`` averagers use the per-particle CTF of STAR / cryoSPARC inputs (defocus U/V and
angle, voltage, Cs, amplitude contrast, phase shift; phase-flipped and CTF-premultiplied
data are recognised) and the stack's pixel size (``--apix`` when the input has none); other
inputs are averaged without CTF correction, with a message saying why.

  $ r2d average particles.mrcs r2d_01/classmx_01.h5 -o r2d_01/classes_01.hdf --iter 5
"""

from __future__ import annotations

import numpy as np

import logging

from r2d import io
from r2d.average import chunk_label
from r2d.ctf import ParticleCTF
from r2d.masks import particle_mask
from r2d.commands._classopts import add_class_args
from r2d.commands._common import add_mask, add_threads
from r2d.io import ParticleRows, stack_weight
from r2d.split import divided_averages, split_counts


def add_args(p):
    p.add_argument("input", help="particle stack")
    p.add_argument("classmx", help="classmx file (.h5)")
    p.add_argument("-o", "--output", required=True, help="class averages (.hdf)")
    p.add_argument("--resultmx", help="also write the per-particle result table (.h5)")
    p.add_argument("--apix", type=float, default=None, help="pixel size (Å) if the stack has none")
    add_class_args(p)
    p.add_argument("--prior", action="store_true",
                   help="start from classmx's transforms where its 'aligned' column is 1 (classmx of the "
                        "multi-reference assignment: each particle aligned to its class's previous average) "
                        "instead of bootstrapping those classes (the workflow's classes_YY with classprior: "
                        "faster, and as good or better classes on the 70S benchmark)")
    p.add_argument("--random-start", type=int, default=None, metavar="SEED",
                   help="bootstrap every class from its members in a random order drawn with SEED (no "
                        "prior): a stability repeat for r2d stability, e.g. on a resultmx file")
    p.add_argument("--chunk", default=None,
                   help="only the classes of chunk i-of-k (balanced by member count, r2d.average.class_chunks); "
                        "'r2d gather' merges the chunks' stacks and result tables")
    p.add_argument("--split", type=int, default=None, metavar="K",
                   help="then divide the classes (largest first) until there are K in all, each at the median "
                        "of its members' first principal component, and average them again "
                        "(r2d.split; the workflow's mragrow)")
    add_mask(p)
    add_threads(p)


log = logging.getLogger(__name__)


def particle_ctf(stack: io.Stack, particle: np.ndarray, apix: float | None, averager: str) -> ParticleCTF | None:
    """The CTF of particles ``particle`` (input indices) for a ``ctf.*`` averager, else None
    (logging why a CTF averager gets no CTF)."""
    if not averager.split(":")[0].startswith("ctf."):
        return None
    ctf, why = ParticleCTF.from_params(stack.ctf_params(), apix)
    if ctf is None:
        log.warning("%s: no CTF correction in class averaging: %s", stack.source, why)
        return None
    return ctf.take(particle)


def main(args):
    stack = io.open_stack(args.input)
    cmx = io.read_matrix(args.classmx)
    particle = cmx["particle"]
    parts = ParticleRows(stack, particle)  # read block by block: memory does not grow with the stack
    label = np.where(parts.bad(), -1, cmx["class"])  # NaN/Inf or blank particles are never averaged in
    eligible = cmx["weight"] > 0 if "weight" in cmx else None  # weight 0: aligned, not averaged in
    n_classes = int(label.max(initial=-1)) + 1
    extra = None if args.split is None else split_counts(label, args.split)  # from every class, not the chunk's
    if extra is not None and (extra != 0).any():
        log.info("%d classes (%d empty) divided into %d", n_classes, int((extra < 0).sum()),
                 int((extra >= 0).sum() + extra[extra > 0].sum()))
    if args.chunk:  # only this chunk's classes; the others' members are left out (class -1)
        label = chunk_label(label, args.chunk)
        log.info("chunk %s: %d classes, %d particles", args.chunk, len(np.unique(label[label >= 0])),
                 int((label >= 0).sum()))
    apix = stack.pixel_size or args.apix
    prior = None
    if args.prior and "aligned" in cmx:
        ok = cmx["aligned"] > 0
        prior = tuple(np.where(ok, cmx[k], np.nan) for k in ("dalpha", "dx", "dy", "mirror"))
        log.info("%d of %d classified particles start from classmx's alignment", int((ok & (label >= 0)).sum()),
                 int((label >= 0).sum()))
    elif args.prior:
        log.info("%s has no 'aligned' column (k-means classmx): every class is bootstrapped", args.classmx)
    start = None
    if args.random_start is not None:  # bootstrap every class, its members in a random order
        prior = None
        start = np.random.default_rng([args.random_start, 12]).random(len(label))
        log.info("every class bootstraps from its members in a random order (seed %d)", args.random_start)
    res = divided_averages(
        parts, label, extra, iterations=args.iter, keep=args.keep, keepsig=args.keepsig, aligner=args.align,
        aligncmp=args.aligncmp, ralign=args.ralign, raligncmp=args.raligncmp, cmp=args.cmp,
        averager=args.averager, normproc=args.normproc, center=args.center, automask=args.automask,
        maxshift=args.maxshift, apix=apix, workers=args.threads,
        search_weight=stack_weight(stack, workers=args.threads),
        ctf=particle_ctf(stack, particle, apix, args.averager), prior=prior, n_classes=n_classes,
        mask_radius=particle_mask(stack.box, args.mask_diameter, apix)[1], eligible=eligible,
        **({} if start is None else {"start_order": start}),
    )
    write_result(res, particle, stack, apix, args.output, args.resultmx, args.chunk)


def write_result(res, particle: np.ndarray, stack: io.Stack, apix: float | None, output, resultmx=None,
                 chunk=None) -> None:
    """Write the averages of ``res`` (:class:`r2d.average.ClassAverages` of the rows ``particle``
    (input indices) of ``stack``) to ``output`` and, with ``resultmx``, the per-particle table;
    the table's attributes ``box`` and ``pixel_size`` give the images its shifts are pixels of."""
    headers = res.headers()
    for h in headers:  # indices into the input stack, not into the rows of classmx
        h["class_ptcl_idxs"] = particle[h["class_ptcl_idxs"]]
        h["exc_class_ptcl_idxs"] = particle[h["exc_class_ptcl_idxs"]]
        h["class_ptcl_src"] = str(stack.source)
    io.write_image_stack(output, res.averages, headers, pixel_size=apix)
    if resultmx:
        io.write_matrix(resultmx, {
            "class": res.label.astype(np.int32), "used": res.used.astype(np.int8), "particle": particle,
            "dx": res.tx.astype(np.float32), "dy": res.ty.astype(np.float32),
            "dalpha": res.alpha.astype(np.float32), "mirror": res.mirror.astype(np.float32),
            "score": res.score.astype(np.float32)},
            {"artifact": "resultmx", "box": stack.box, "pixel_size": np.nan if apix is None else apix,
             **({"chunk": chunk} if chunk else {})})
