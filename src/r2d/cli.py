"""Command-line entry point: ``r2d <command> [options]``.

Each subcommand lives in ``r2d.commands.<name>`` and defines ``add_args(parser)`` and
``main(args)``. The module docstring's first line is the command's help; the rest is its
description. Commands are registered from the explicit list below.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from r2d.errors import UserError

#: subcommand name -> module under r2d.commands
COMMANDS = {
    # ground truth
    "phantom": "phantom",
    "simulate": "simulate",
    "evaluate": "evaluate",
    # pipeline steps (one per Snakemake rule)
    "index": "index",
    "invariants": "invariants",
    "msa": "msa",
    "project": "project",
    "classify": "classify",
    "average": "average",
    "allrefs": "allrefs",
    "aliref": "aliref",
    "simmx": "simmx",
    "fullsize": "fullsize",
    "gather": "gather",
    "check": "check",
    # engine on its own
    "align": "align",
    "cmp": "cmp",
    "stability": "stability",
    # outputs
    "montage": "montage",
    "export": "export",
    "select": "select",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``r2d`` parser; with ``only``, just that subcommand's module is imported (every
    rule runs one command, and importing all of them costs seconds per job)."""
    parser = argparse.ArgumentParser(
        prog="r2d", description=__doc__.splitlines()[0]
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, modname in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            mod = importlib.import_module(f"r2d.commands.{modname}")
        except ModuleNotFoundError as exc:  # pragma: no cover - during development only
            if exc.name == f"r2d.commands.{modname}":
                continue
            raise
        doc = (mod.__doc__ or name).strip()
        first, _, rest = doc.partition("\n")
        p = sub.add_parser(
            name,
            help=first,
            description=first + ("\n\n" + rest.strip() if rest.strip() else ""),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_args(p)
        p.set_defaults(_main=mod.main)
    return parser


#: glibc malloc: blocks below this many bytes come from the heap, and freed heap memory is kept
#: up to this much (see :func:`keep_freed_memory`)
MALLOC_KEEP = 64 << 20


def keep_freed_memory(nbytes: int = MALLOC_KEEP) -> bool:
    """Let glibc's malloc reuse freed memory for arrays below ``nbytes`` instead of returning
    it to the kernel (``mallopt`` ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``). False where
    unavailable (not glibc) or ``R2D_MALLOC_DEFAULT=1``.

    The steps allocate and free the same temporaries (interpolation coordinates, FFT blocks)
    thousands of times. By default glibc maps every block over 128 kB freshly and unmaps it when
    freed (raising that limit only as it sees larger blocks freed), so each allocation paid
    page faults again: on the 2-core VM of the benchmarks, bilinear interpolation of 1,820
    images of 96 px took 1.3 s with 1.4 M page faults, 0.33-0.45 s with this (10 k faults),
    and peak memory did not change (256 MB both).
    """
    import os

    if os.environ.get("R2D_MALLOC_DEFAULT") == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(nbytes)) and libc.mallopt(M_TRIM_THRESHOLD, int(nbytes)))
    except (OSError, AttributeError):  # musl or another libc
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    keep_freed_memory()
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO,
        format="%(asctime)s r2d %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        rc = args._main(args)
    except UserError as exc:
        print(f"r2d {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
