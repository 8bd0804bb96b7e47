"""Atomic writes: every file r2d writes appears complete or not at all.

:func:`atomic_write` yields a hidden temporary path ``.<name>.<host>.<pid>.<random>.part`` next to
the target; on normal exit the file is fsync'ed, gets mode ``0o666 & ~umask`` and is renamed
onto the target (then the folder is fsync'ed, best effort). Temporary files left by killed
writers are removed by the next write of the same path once their writer is gone.

The writers of :mod:`r2d.io` call it as ``atomic.atomic_write`` (looked up at call time), so a
test can wrap it in one place (``tests/test_resume.py`` holds jobs inside it).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pathlib
import re
import socket
import tempfile
from collections.abc import Iterator

log = logging.getLogger(__name__)
Path = pathlib.Path


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask() is process-global and racy)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _process_start() -> float | None:
    """Start time of this process (seconds since the epoch), or None where unknown."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # pragma: no cover - psutil is a dependency of snakemake, but be safe
        return None


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _writer_alive(pid: int) -> bool:
    """Whether process `pid` of this machine (a temporary file's writer) may still be running."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def _remove_stale_parts(path: Path) -> None:
    """Delete temporary files ``.<name>.<host>.<pid>.<random>.part`` of `path` left by killed writers.

    A file is stale when its writer (this machine, process `pid`) is no longer running. A file
    from another machine (shared file system) is stale when it was last modified before this
    process started; a workflow job never has two writers of one output at a time.
    """
    start = None
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.([A-Za-z0-9-]+)\.(\d+)\.[^.]+\.part$")
    for part in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
        m = pattern.match(part.name)
        try:
            if m is not None and m.group(1) == _HOST:
                stale = not _writer_alive(int(m.group(2)))
            else:  # another machine, or an older naming
                start = _process_start() if start is None else start
                stale = start is not None and part.stat().st_mtime < start - 1.0
            if stale:
                part.unlink()
                log.info("removed %s, a partial file left by an interrupted earlier write", part)
        except OSError:
            pass


@contextlib.contextmanager
def atomic_write(path) -> Iterator[pathlib.Path]:
    """Yield a temporary path ``.<name>.<host>.<pid>.<random>.part`` next to `path` to write to.

    On normal exit the file is flushed to disk (fsync), gets mode ``0o666 & ~umask`` and is
    renamed onto `path` (atomic on POSIX): a reader, or a resumed workflow, sees either the old
    file or the complete new one, never a partial one. On an exception the temporary file is
    deleted and the exception propagates; after a hard kill it stays behind under its hidden
    name and is deleted by the next write of the same `path` (once its writer is gone).
    Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every file system lets a folder be fsync'ed)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
