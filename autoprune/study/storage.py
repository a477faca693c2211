"""Where a search's trials live: one classifier for storage URLs, one way to open them, one heartbeat policy.

* ``None`` (the default), a file path or ``journal://PATH``: an Optuna ``JournalStorage`` on a
  ``JournalFileBackend`` (append-only, file-locked: the worker processes of one machine share it). A write that fails
  (a full disk: :class:`~autoprune._files.DiskFull`) leaves no partial record. A journal that cannot be written (a
  read-only share, another user's run directory) is opened read-only by the commands that only read it.
* A SQLAlchemy database URL (``sqlite:///FILE``, ``postgresql://USER:PASSWORD@HOST:PORT/DB``, ``mysql://``...):
  :class:`~autoprune.study.patient_storage.PatientRDBStorage` with heartbeats (a RUNNING trial without one for
  ``grace_period`` seconds is failed and retried by :class:`~autoprune.study.recovery.RetryFailedTrial`), a
  connection that fails fast when the server is unreachable, and patience with outages mid-run.
* Anything else (``redis://``, ``postgress://``, ``http://``) is refused at once, naming the accepted forms.
"""
from __future__ import annotations

import errno
import os
import random
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import optuna
from optuna.storages.journal import JournalStorage

from .._files import DiskFull, disk_full_in
from ..config import SearchConfig
from .journal import (JournalFile, JournalLock, ReadOnlyJournalFile, StorageReadOnly, journal_unwritable,
                      repair_journal)
from .patient_storage import PatientRDBStorage, StorageLost
from .recovery import DEFAULT_MAX_RETRY, RetryFailedTrial

__all__ = ["storage_kind", "journal_path", "open_storage", "check_storage", "storage_label", "redact_url",
           "check_reachable", "StorageURLError", "StorageUnreachable", "StorageLost", "StorageReadOnly", "DiskFull",
           "JournalLock", "JournalFile", "ReadOnlyJournalFile", "repair_journal", "journal_unwritable",
           "DEFAULT_HEARTBEAT", "DEFAULT_GRACE", "DEFAULT_MAX_RETRY", "DEFAULT_PATIENCE", "DEFAULT_CONNECT_TIMEOUT"]

#: Seconds between a running trial's heartbeats on a database storage.
DEFAULT_HEARTBEAT = 20
#: Seconds without a heartbeat after which a RUNNING trial is failed and retried.
DEFAULT_GRACE = 60
#: Seconds a process keeps retrying a database that stopped answering mid-run before it gives up.
DEFAULT_PATIENCE = 300.0
#: Seconds to wait for a database connection when opening a storage.
DEFAULT_CONNECT_TIMEOUT = 10.0

_DEFAULT_PORTS = {"postgresql": 5432, "cockroachdb": 26257, "mysql": 3306, "mariadb": 3306, "mssql": 1433,
                  "oracle": 1521}
_DRIVERS = {"postgresql": 'psycopg (pip install "psycopg[binary]")', "mysql": "PyMySQL (pip install pymysql)",
            "mariadb": "PyMySQL (pip install pymysql)"}
_FORMS = ("a journal file path (default <run_dir>/optuna.journal), journal://PATH, sqlite:///FILE, "
          "postgresql://USER:PASSWORD@HOST:5432/DB or mysql://USER:PASSWORD@HOST:3306/DB")


class StorageURLError(ValueError):
    """A storage string that is neither a journal file nor a database URL SQLAlchemy knows."""


class StorageUnreachable(ConnectionError):
    """The storage URL cannot be used: server unreachable, login or database refused, driver missing."""


# ------------------------------------------------------------------------------------------------------------
# the classifier


def _scheme(url: str) -> str:
    return url.split("://", 1)[0]


def storage_kind(storage: str | None) -> Literal["journal", "database"]:
    """``"journal"`` for ``None``, file paths and ``journal://PATH``; ``"database"`` for URLs of a SQLAlchemy dialect
    (checked by loading the dialect, not the driver). Raises :class:`StorageURLError` for anything else."""
    if storage is None or "://" not in storage:
        return "journal"
    scheme = _scheme(storage)
    if scheme == "journal":
        return "journal"
    # lazy: sqlalchemy costs 0.1-0.24 s at import and only a database storage needs it
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        make_url(storage).get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        hint = " (SQLAlchemy spells it postgresql://)" if scheme.split("+")[0] == "postgres" else ""
        raise StorageURLError(f"storage {redact_url(storage)}: unknown scheme {scheme!r}{hint}; give {_FORMS}") \
            from None
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        raise StorageURLError(f"storage {redact_url(storage)}: not a valid database URL ({e}); give {_FORMS}") \
            from None
    return "database"


def journal_path(cfg: SearchConfig | None, storage: str | None = None) -> Path | None:
    """The journal file of a search (``storage``, else ``cfg.storage``, else ``<run_dir>/optuna.journal``), or None
    for a database URL."""
    storage = storage if storage is not None else (cfg.storage if cfg is not None else None)
    if storage_kind(storage) != "journal":
        return None
    if storage is None:
        return None if cfg is None else cfg.run_path / "optuna.journal"
    if storage.startswith("journal://"):
        storage = storage[len("journal://"):]
    return Path(os.path.expanduser(storage))


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        # lazy: sqlalchemy costs 0.1-0.24 s at import and only a database storage needs it
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: hide anything between ':' and '@' of the netloc
        if "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]:
            scheme, rest = url.split("://", 1)
            cred, host = rest.split("@", 1)
            user = cred.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}" if ":" in cred else url
        return url


def storage_label(cfg: SearchConfig | None, storage: str | None = None) -> str:
    """What the storage is, for messages and for optuna-dashboard's command line (password hidden)."""
    storage = storage if storage is not None else (cfg.storage if cfg is not None else None)
    p = journal_path(cfg, storage)
    return str(p) if p is not None else redact_url(str(storage))


# ------------------------------------------------------------------------------------------------------------
# databases


def _backend(url: str) -> str:
    # lazy: sqlalchemy costs 0.1-0.24 s at import and only a database storage needs it
    from sqlalchemy.engine import make_url

    return make_url(url).get_backend_name()


def _host_port(url: str) -> tuple[str, int] | None:
    """(host, port) of a network database URL, or None (sqlite, unix socket, unparsable)."""
    try:
        # lazy: sqlalchemy costs 0.1-0.24 s at import and only a database storage needs it
        from sqlalchemy.engine import make_url

        u = make_url(url)
    except Exception:
        return None
    backend = u.get_backend_name()
    if backend == "sqlite" or not u.host or u.host.startswith("/"):
        return None
    if "host" in u.query:  # libpq's ?host=/path/to/socket
        return None
    return u.host, int(u.port or _DEFAULT_PORTS.get(backend, 0) or 0)


def check_reachable(host: str, port: int, *, timeout: float = 5.0, what: str = "server") -> None:
    """Open and close a TCP connection to ``host:port`` within ``timeout`` seconds, or raise
    :class:`StorageUnreachable` saying why (refused, timed out, unknown host)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.gaierror as e:
        why = f"unknown host {host!r} ({e.strerror or e})"
    except socket.timeout:
        why = f"no answer within {timeout:g} s (host down, wrong address, or a firewall dropping packets)"
    except ConnectionRefusedError:
        why = "connection refused (nothing listens on that port)"
    except OSError as e:
        why = e.strerror or str(e)
    raise StorageUnreachable(f"cannot reach the {what} at {host}:{port}: {why}")


def _hint(backend: str, msg: str) -> str:
    m = msg.lower()
    if "unknown host" in m or "could not translate host name" in m:
        return "check the host name in the URL"
    if backend == "postgresql":
        if "does not exist" in m and "database" in m:
            return "create the database first (createdb NAME, or CREATE DATABASE NAME; as the server's superuser)"
        if "password" in m or "authentication" in m or "no pg_hba.conf entry" in m or "role" in m:
            return "check the user name and password, and that pg_hba.conf lets this host log in"
        if "timeout" in m or "timed out" in m:
            return ("the server accepted the TCP connection but did not answer: is it a PostgreSQL server, "
                    "and is it overloaded?")
        return ("check that the server runs (pg_isready -h HOST -p PORT), that postgresql.conf has "
                "listen_addresses covering this network, and that pg_hba.conf admits this host")
    if backend == "sqlite":
        return "check that the file's directory exists and is writable"
    return "check that the database server runs and that the URL's host, port, user and database are right"


def _engine_kwargs(url: str, connect_timeout: float) -> dict[str, Any]:
    kw: dict[str, Any] = {"pool_pre_ping": True}
    if _backend(url) in ("postgresql", "cockroachdb", "mysql", "mariadb"):
        kw["connect_args"] = {"connect_timeout": max(1, int(round(connect_timeout)))}
    return kw


def _connect_error(url: str, e: BaseException) -> StorageUnreachable:
    shown, backend = redact_url(url), _backend(url)
    if isinstance(e, ImportError):
        scheme = _scheme(url)
        drv = (f"the driver {scheme.split('+', 1)[1]!r} named in the URL, or use {backend}:// with "
               f"{_DRIVERS.get(backend, 'its default driver')}") if "+" in scheme else \
            _DRIVERS.get(backend, "the database driver named in the URL")
        return StorageUnreachable(f"storage {shown}: the database driver is not installed ({e.__cause__ or e}); "
                                  f"install {drv}")
    orig = getattr(e, "orig", None) or e
    msg = (str(orig).strip().splitlines() or [repr(orig)])[0]
    return StorageUnreachable(f"storage {shown}: cannot connect: {msg}; {_hint(backend, msg)}")


def _probe(url: str, connect_timeout: float) -> None:
    """Reach the database (TCP first, then a real login) within about ``connect_timeout`` seconds, or raise
    :class:`StorageUnreachable` naming the URL and what to check. Creates nothing."""
    shown, backend = redact_url(url), _backend(url)
    hp = _host_port(url)
    if hp is not None and hp[1]:
        try:
            check_reachable(hp[0], hp[1], timeout=min(connect_timeout, 10.0), what="database server")
        except StorageUnreachable as e:
            raise StorageUnreachable(f"storage {shown}: {e}; {_hint(backend, str(e))}") from None
    if backend == "sqlite":
        # lazy: sqlalchemy costs 0.1-0.24 s at import and only a database storage needs it
        from sqlalchemy.engine import make_url

        db = make_url(url).database
        if db and db != ":memory:" and not Path(db).expanduser().resolve().parent.is_dir():
            raise StorageUnreachable(f"storage {shown}: the directory of {db} does not exist; create it first")
        return
    # lazy: sqlalchemy costs 0.1-0.24 s at import and only a database storage needs it
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, **_engine_kwargs(url, connect_timeout))
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
        finally:
            engine.dispose()
    except (ImportError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
        raise _connect_error(url, e) from None


def _open_database(url: str, *, heartbeat_interval: int | None, grace_period: int | None, max_retry: int | None,
                   connect_timeout: float, patience: float, log: Callable[[str], None] | None,
                   engine_kwargs: Mapping[str, Any] | None) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc  # lazy: sqlalchemy costs 0.1-0.24 s at import and only a database storage needs it

    _probe(url, connect_timeout)  # a wrong URL fails in seconds, before the data and the model are built
    kw = _engine_kwargs(url, connect_timeout)
    kw.update(engine_kwargs or {})
    hb: dict[str, Any] = {}
    if heartbeat_interval is not None:
        hb = {"heartbeat_interval": int(heartbeat_interval),
              "grace_period": int(grace_period) if grace_period is not None else None,
              "heartbeat_stale_trial_callback": RetryFailedTrial(max_retry)}
    last: Exception | None = None
    for _ in range(4):  # several workers creating the tables of an empty database at once may collide
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return PatientRDBStorage(url, patience=patience, label=f"storage {redact_url(url)}", log=log,
                                         engine_kwargs=kw, **hb)
        except ImportError as e:
            raise _connect_error(url, e) from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            last = e  # "relation already exists" / duplicate type: another worker is creating the tables
            time.sleep(0.2 + random.random() * 0.5)
        except sqlalchemy.exc.OperationalError as e:
            raise _connect_error(url, e) from None
    raise StorageUnreachable(f"storage {redact_url(url)}: could not create Optuna's tables: {last}")


def open_storage(cfg: SearchConfig | None = None, storage: str | None = None, *,
                 heartbeat_interval: int | None = DEFAULT_HEARTBEAT, grace_period: int | None = DEFAULT_GRACE,
                 max_retry: int | None = DEFAULT_MAX_RETRY, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 patience: float | None = None, log: Callable[[str], None] | None = None,
                 engine_kwargs: Mapping[str, Any] | None = None,
                 read_only: bool | None = None) -> optuna.storages.BaseStorage:
    """The storage of a search: ``storage`` (journal file path or URL), else ``cfg.storage``, else the journal file
    ``<run_dir>/optuna.journal``; see the module docstring.

    Databases: heartbeats every ``heartbeat_interval`` seconds (``None``: none, and no stale-trial retries); a
    RUNNING trial without one for ``grace_period`` seconds is failed and retried up to ``max_retry`` times. Opening
    fails within about ``connect_timeout`` seconds with :class:`StorageUnreachable`; a database lost later is waited
    for ``patience`` seconds (default: ``cfg.storage_patience`` when set, else :data:`DEFAULT_PATIENCE`) before
    :class:`StorageLost`. An unknown scheme raises :class:`StorageURLError` at once.

    Journal files: ``read_only=None`` (the default, for commands that only read) opens a journal this process cannot
    write (see :func:`journal_unwritable`) read-only, and a write to it raises :class:`StorageReadOnly`;
    ``read_only=False`` (a search) raises :class:`StorageReadOnly` at once for such a journal, naming the fix;
    ``read_only=True`` always opens it read-only. A read-only journal must exist (``FileNotFoundError`` otherwise).
    """
    storage = storage if storage is not None else (cfg.storage if cfg is not None else None)
    if storage_kind(storage) == "database":
        if patience is None:
            patience = getattr(cfg, "storage_patience", None)
        return _open_database(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                              max_retry=max_retry, connect_timeout=connect_timeout,
                              patience=DEFAULT_PATIENCE if patience is None else float(patience), log=log,
                              engine_kwargs=engine_kwargs)
    path = journal_path(cfg, storage)
    if path is None:
        raise ValueError("no storage: pass a config or --storage (URL or journal file)")
    why = journal_unwritable(path)
    if why is not None and read_only is False:
        raise StorageReadOnly(f"storage {path}: cannot write it, {why}. Running or resuming a search "
                              "writes its journal: run it where the run directory is writable (copy the run "
                              "directory there and point run_dir or --storage at the copy); the reading commands "
                              "(pareto, report, export) work on a read-only run directory as it is")
    if why is None and not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            repair_journal(path)
            return JournalStorage(JournalFile(str(path), JournalLock(str(path))))
        except OSError as e:
            full = disk_full_in(e, path)
            if full is not None:
                raise full from e
            if read_only is False or e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            why = f"{e.filename or path}: {e.strerror or e}"  # os.access said yes, the file system said no
    why = why or "opened read-only"
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, f"no search journal there (and none can be created: {why}); has "
                                "the search been started, and is the run directory or --storage right?", str(path))
    return JournalStorage(ReadOnlyJournalFile(str(path), why))


def check_storage(cfg: SearchConfig | None = None, storage: str | None = None, *,
                  connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> str:
    """Check a search's storage without writing to it (``--dry-run``): the URL's form, then a database's
    reachability (TCP and login) or a journal's directory. Returns a one-line description; raises
    :class:`StorageURLError` or :class:`StorageUnreachable`."""
    storage = storage if storage is not None else (cfg.storage if cfg is not None else None)
    if storage_kind(storage) == "database":
        _probe(storage, connect_timeout)
        return f"database {redact_url(storage)} (reachable)"
    path = journal_path(cfg, storage)
    if path is None:
        raise ValueError("no storage: pass a config or --storage (URL or journal file)")
    existing = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        raise StorageUnreachable(f"storage {path}: cannot create it ({existing} is not a writable directory)")
    return f"journal file {path}" + (" (exists)" if path.exists() else " (created on the first run)")
