"""Checks on input paths shared by every reader of :mod:`r2d.io`.

:func:`_check_file` raises :class:`~r2d.errors.InputError` (naming the file, what is wrong and
what to do) when a path does not exist, is not a regular file or is not readable.
"""

from __future__ import annotations

import os
from pathlib import Path

from r2d.errors import InputError


def _check_file(path: Path, what: str = "file") -> None:
    if not path.exists():
        raise InputError(f"{path}: {what} not found (working directory {Path.cwd()}); check the path")
    if not path.is_file():
        raise InputError(f"{path}: is not a regular file; give the path of a {what}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: {what} is not readable (permission denied); fix its permissions "
                         "(chmod a+r) or copy it somewhere you can read")
