"""An Optuna ``RDBStorage`` that rides out a database outage: retries with back-off, then gives up cleanly.

Optuna's ``RDBStorage`` turns a lost connection into ``StorageInternalError`` (from SQLAlchemy's
``OperationalError``) at the first failed statement. :class:`PatientRDBStorage` retries such a call with exponential
back-off (0.5 s doubling to 15 s, jittered) for up to ``patience`` seconds; after that it raises
:class:`StorageLost`, and every later call raises it at once (so Optuna's own clean-up after a failed trial does not
wait again). Heartbeats are tried once per beat and never raise: a missed beat is harmless, and a beat thread that
raised would print a traceback.

This is the one adapter over Optuna internals in the search: it wraps the storage methods ``_CachedStorage`` calls,
private ones included (``_create_new_trial``, ``_get_trials``...); tests/test_patient_storage.py checks the list
against the installed Optuna. :func:`storage_of` and :func:`trial_id_of` are the two other private reads (a study's
storage, a frozen trial's storage id), used by the stale-trial recovery and tested there too. The back-off loop is
written here (a dozen lines) rather than taken from ``tenacity``, which is not a dependency.
"""
from __future__ import annotations

import functools
import random
import time
from typing import Any, Callable

import optuna

__all__ = ["PatientRDBStorage", "StorageLost", "is_disconnect", "WRAPPED", "storage_of", "trial_id_of"]

#: RDBStorage methods that talk to the database (the public storage API and what Optuna's cache calls).
WRAPPED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_all_studies", "create_new_trial", "_create_new_trial", "set_trial_param", "_set_trial_param",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "_get_trials",
    "get_best_trial", "_get_best_trial_id", "_get_stale_trial_ids",
)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes (Optuna keeps it in a private attribute)."""
    return study._storage


def trial_id_of(trial: optuna.trial.FrozenTrial) -> int:
    """A frozen trial's id in its storage (private in Optuna; the public way costs two storage queries)."""
    return trial._trial_id


class StorageLost(ConnectionError):
    """The database stopped answering and did not come back within the patience."""


def is_disconnect(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) means the database cannot be reached: SQLAlchemy's ``OperationalError``
    or ``InterfaceError``, or a DBAPI error that invalidated the connection."""
    import sqlalchemy.exc as sa  # lazy: sqlalchemy costs 0.1-0.24 s at import and only a database storage needs it

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, StorageLost):
            return False
        if isinstance(exc, (sa.OperationalError, sa.InterfaceError)):
            return True
        if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _first_line(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


class PatientRDBStorage(optuna.storages.RDBStorage):
    """``RDBStorage`` whose calls wait out an outage of up to ``patience`` seconds (see the module docstring).
    ``label`` names the database in messages (password hidden); ``log`` gets a line when the connection is lost and
    when it is back."""

    def __init__(self, url: str, *, patience: float = 300.0, label: str | None = None,
                 log: Callable[[str], None] | None = None, **kwargs: Any) -> None:
        self.patience = float(patience)
        self.label = label or "the database"
        self.log = log or (lambda s: None)
        self.lost: StorageLost | None = None
        super().__init__(url, **kwargs)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("log", None)  # (closures do not pickle)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self.log = lambda s: None

    def _patiently(self, name: str, call: Callable[[], Any]) -> Any:
        if self.lost is not None:
            raise self.lost
        deadline, delay, since = None, 0.5, None
        while True:
            try:
                out = call()
            except Exception as e:
                if not is_disconnect(e):
                    raise
                now = time.monotonic()
                if deadline is None:
                    since, deadline = now, now + self.patience
                    self.log(f"{self.label} stopped answering ({_first_line(e)}); retrying for up to "
                             f"{self.patience:g} s")
                if now >= deadline:
                    self.lost = StorageLost(
                        f"{self.label} did not answer for {self.patience:g} s (last error: {_first_line(e)}); "
                        "giving up. This worker's running trial stays RUNNING until its heartbeat is seen to have "
                        "stopped, then it is failed and retried by another worker or at the next start. Check the "
                        "database server, then start the worker again; raise the patience with --storage-patience "
                        "(config key storage_patience) to ride out longer outages.")
                    raise self.lost from None
                time.sleep(min(delay * random.uniform(0.5, 1.0), max(0.0, deadline - now)))
                delay = min(2 * delay, 15.0)
                continue
            if since is not None:
                self.log(f"{self.label} answers again after {time.monotonic() - since:.0f} s")
            return out

    def record_heartbeat(self, trial_id: int) -> None:
        if self.lost is not None:
            return
        try:
            super().record_heartbeat(trial_id)
        except Exception as e:  # a missed beat: the next one tries again
            if not is_disconnect(e):
                raise


def _wrap(name: str) -> Callable[..., Any]:
    base = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(base)
    def method(self: PatientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._patiently(name, lambda: base(self, *args, **kwargs))

    return method


for _name in WRAPPED:
    if hasattr(optuna.storages.RDBStorage, _name):
        setattr(PatientRDBStorage, _name, _wrap(_name))
