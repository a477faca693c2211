"""Atomic file writes: what a user computed (caches, tables, models) is never left half-written; and the one error
for a full disk (:class:`DiskFull`), raised where our writes fail, whatever wrapped the ``ENOSPC`` on the way."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable

__all__ = ["atomic_write", "DiskFull", "disk_full_in"]

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _mount_point(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class DiskFull(OSError):
    """No space left (``ENOSPC``; ``EDQUOT``: the disk quota) while writing ``path``. Its message names the file, the
    disk (mount point) and its free space, and the fix: free space, then run the same command again (a search
    resumes where it stopped, keeping its completed trials)."""

    def __init__(self, path: str | os.PathLike, code: int = errno.ENOSPC) -> None:
        super().__init__(code, os.strerror(code), os.fspath(path))
        disk = _mount_point(Path(path))
        try:
            free = f", {_size(shutil.disk_usage(disk).free)} free"
        except OSError:
            free = ""
        what = "the disk quota is used up" if code == getattr(errno, "EDQUOT", None) else "no space left on the device"
        self.message = (f"{what} writing {os.fspath(path)} (disk {disk}{free}): free space there (or give the run "
                        "directory, cache_dir or --storage on a larger disk), then run the same command again; an "
                        "interrupted search resumes where it stopped, keeping its completed trials")

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # (an OSError subclass with its own constructor: pickle through it)
        return type(self), (self.filename, self.errno)


def disk_full_in(exc: BaseException | None, path: str | os.PathLike | None = None) -> DiskFull | None:
    """The :class:`DiskFull` that ``exc`` is, or that an ``ENOSPC``/``EDQUOT`` ``OSError`` among its causes and
    contexts means (``torch.save`` wraps it in a ``RuntimeError``; Optuna's clean-up after a failed write raises
    ``AssertionError``); None when the disk is not what failed. ``path``: the file being written, when the error
    does not name it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 16:
        seen.add(id(exc))
        if isinstance(exc, DiskFull):
            return exc
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return DiskFull(path if path is not None else (exc.filename or "a file"), exc.errno)
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = True) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it over ``path`` (atomic on POSIX). A full
    disk raises :class:`DiskFull` naming ``path``."""
    path = Path(path)
    try:
        _atomic_write(path, write, binary)
    except Exception as e:
        full = disk_full_in(e, path)
        if full is None or full is e:
            raise
        raise full from e


def _atomic_write(path: Path, write: Callable[[IO], None], binary: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
