"""Optuna journal files as a search uses them: a write lock that survives ``kill -9``, appends that leave no partial
record, a read-only mode with a clear error, and the repair of a journal a killed worker left half-written.

:func:`autoprune.study.storage.open_storage` opens journals through these; :class:`StorageReadOnly` is defined here
(and re-exported by :mod:`autoprune.study.storage`) so that this module needs nothing of the storage classifier.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend

from .._files import disk_full_in
from .recovery import worker_info

__all__ = ["StorageReadOnly", "JournalLock", "JournalFile", "ReadOnlyJournalFile", "journal_unwritable",
           "repair_journal"]


class StorageReadOnly(PermissionError):
    """A journal file that this process cannot write (read-only file system, no write permission), where a write was
    asked for. The message says why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EROFS, message)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self):  # (an OSError subclass with its own constructor: pickle through it)
        return type(self), (self.strerror,)



class JournalLock:
    """The journal's write lock for worker processes on one machine: a ``flock`` (released by the kernel when its
    holder dies, even by ``kill -9``) guarding Optuna's usual ``<journal>.lock`` file.

    Under the flock, a ``.lock`` file written by this class can only be left over from a dead holder, so it is
    removed at once instead of after Optuna's 30-second grace period. Lock files of other Optuna writers (plain
    ``JournalFileSymlinkLock``/``JournalFileOpenLock`` users, e.g. a stand-alone optuna-dashboard) are still
    respected, with their grace period.

    Re-entrant within a thread (the journal backend holds it around Optuna's own ``append_logs``, which takes it
    again); other threads of the process wait. A full disk raises :class:`~autoprune._files.DiskFull`.
    """

    def __init__(self, journal: str, grace_period: float = 30.0) -> None:
        self._journal = journal
        self._lock_file = journal + ".lock"
        self._flock_file = journal + ".flock"
        self._fd: int | None = None
        self.grace_period = grace_period
        self._threads = threading.Lock()
        self._owner: int | None = None
        self._depth = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"journal": self._journal, "grace_period": self.grace_period}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["journal"], state["grace_period"])  # type: ignore[misc]

    def _ours(self) -> bool:
        try:
            if os.path.islink(self._lock_file):
                return False
            with open(self._lock_file) as f:
                return '"autoprune"' in f.read(200)
        except OSError:
            return False

    def acquire(self) -> bool:
        me = threading.get_ident()
        if self._owner == me:
            self._depth += 1
            return True
        self._threads.acquire()
        try:
            self._acquire_file()
        except BaseException:
            self._threads.release()
            raise
        self._owner, self._depth = me, 1
        return True

    def release(self) -> None:
        if self._owner != threading.get_ident():
            raise RuntimeError(f"{self._lock_file}: released by a thread that does not hold it")
        self._depth -= 1
        if self._depth:
            return
        self._owner = None
        try:
            self._release_file()
        finally:
            self._threads.release()

    def _acquire_file(self) -> None:
        try:
            self._acquire_flock_and_file()
        except OSError as e:
            full = disk_full_in(e, self._journal)
            if full is None:
                raise
            raise full from e

    def _acquire_flock_and_file(self) -> None:
        import fcntl  # lazy: fcntl is POSIX-only

        fd = os.open(self._flock_file, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            tmp = f"{self._lock_file}.{uuid.uuid4().hex}.tmp"
            try:
                with open(tmp, "w") as f:
                    f.write(json.dumps({"autoprune": worker_info()}))
                mtime, since, sleep = None, time.monotonic(), 0.001
                while True:
                    try:
                        os.link(tmp, self._lock_file)  # atomic; the lock file is never seen empty
                        break
                    except FileExistsError:
                        pass
                    if self._ours():
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self._lock_file)  # left by a dead holder: we hold the flock
                        continue
                    try:
                        m = os.stat(self._lock_file).st_mtime
                    except OSError:
                        continue
                    if m != mtime:
                        mtime, since = m, time.monotonic()
                    elif time.monotonic() - since > self.grace_period:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self._lock_file)  # a foreign writer's lock, stale for the grace period
                        continue
                    time.sleep(sleep)
                    sleep = min(2 * sleep, 0.1)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # (also when writing it failed: a full disk leaves no stray file)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _release_file(self) -> None:
        import fcntl  # lazy: fcntl is POSIX-only

        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._lock_file)
        finally:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


def _drop_partial_tail(path: str, since: int) -> int:
    """Truncate ``path`` after its last complete line at or after byte ``since`` (a write that failed half-way);
    returns the bytes dropped."""
    with open(path, "rb+") as f:
        f.seek(since)
        tail = f.read()
        keep = since + tail.rfind(b"\n") + 1
        if keep < since + len(tail):
            f.truncate(keep)
        return since + len(tail) - keep


class JournalFile(JournalFileBackend):
    """Optuna's journal file, whose failed append (a full disk, a signal mid-write) leaves no partial record: under
    the lock, whatever the failed write left after the last complete record is truncated (Optuna would append its next
    record to the broken line and fail to read the file from there on). A full disk raises
    :class:`~autoprune._files.DiskFull` naming the journal. Overrides only the public ``append_logs``."""

    def __init__(self, path: str, lock: JournalLock) -> None:
        super().__init__(path, lock_obj=lock)
        self._autoprune_path, self._autoprune_lock = path, lock

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        path, lock = self._autoprune_path, self._autoprune_lock
        lock.acquire()  # (re-entrant: Optuna's append_logs takes it again)
        try:
            size = os.path.getsize(path)
            try:
                super().append_logs(logs)
            except BaseException as e:
                with contextlib.suppress(OSError):
                    _drop_partial_tail(path, size)
                full = disk_full_in(e, path) if isinstance(e, Exception) else None
                if full is None or full is e:
                    raise
                raise full from e
        finally:
            lock.release()


class ReadOnlyJournalFile(JournalFileBackend):
    """Optuna's journal file, read only: no lock file is opened (reading takes no lock; a record being appended
    meanwhile is read once complete); a write raises :class:`StorageReadOnly` saying why (``why``). The file must
    exist."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(path, lock_obj=_NoLock())  # (the file exists: nothing is created)
        self._autoprune_path, self._autoprune_why = path, why

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise StorageReadOnly(f"cannot write the journal {self._autoprune_path}: {self._autoprune_why}; it was "
                              "opened read-only, for reading")


class _NoLock:
    """The lock of a read-only journal: never taken (every write is refused before)."""

    def acquire(self) -> bool:
        raise StorageReadOnly("a read-only journal cannot be locked for writing")

    def release(self) -> None:
        pass


def journal_unwritable(path: Path) -> str | None:
    """Why this process cannot write the journal ``path`` (and its lock files beside it), or None when it can:
    a read-only file system or missing write permission (``os.access``, which knows read-only mounts, also for
    root)."""
    d = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
    if d is None or not d.is_dir():
        return f"{d or path.parent} is not a directory"
    if not os.access(d, os.W_OK | os.X_OK):
        return f"the directory {d} is " + ("on a read-only file system" if _read_only_fs(d) else
                                           "not writable by this user")
    for p in (path, Path(str(path) + ".flock")):
        if p.exists() and not os.access(p, os.W_OK):
            return f"{p} is " + ("on a read-only file system" if _read_only_fs(p) else "not writable by this user")
    return None


def _read_only_fs(p: Path) -> bool:
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def repair_journal(path: Path) -> None:
    """Drop a partial last record (a worker killed in the middle of a write), under the journal's own lock.

    Optuna would otherwise append the next record to the broken line and fail to read the file from then on."""
    if not path.exists() or path.stat().st_size == 0:
        return
    lock = JournalLock(str(path))
    if not lock.acquire():
        return
    try:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            data = path.read_bytes()
            keep = data.rfind(b"\n") + 1
            f.truncate(keep)
            warnings.warn(f"{path}: dropped a partial last record ({len(data) - keep} bytes) left by a killed worker")
    finally:
        lock.release()
