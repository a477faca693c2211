"""The adapter over Optuna's RDBStorage internals (autoprune.study.patient_storage): it wraps every method Optuna's
cache calls, retries lost connections with back-off, gives up cleanly after its patience, and never lets a
heartbeat raise."""
from __future__ import annotations

import inspect
import re

import optuna
import pytest
import sqlalchemy.exc

from autoprune.study.patient_storage import (WRAPPED, PatientRDBStorage, StorageLost, is_disconnect, storage_of,
                                              trial_id_of)


def _lost_connection() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


def test_wraps_every_database_call_of_optunas_cache():
    from optuna.storages import _cached_storage

    called = set(re.findall(r"self\._backend\.(\w+)", inspect.getsource(_cached_storage)))
    not_db = {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback", "get_failed_trial_callback",
              "record_heartbeat"}
    assert called - not_db <= set(WRAPPED), called - not_db - set(WRAPPED)
    for name in WRAPPED:
        assert callable(getattr(optuna.storages.RDBStorage, name)), name
        assert getattr(PatientRDBStorage, name) is not getattr(optuna.storages.RDBStorage, name), name


def test_disconnects_are_recognised_through_optunas_wrapping():
    try:
        try:
            raise _lost_connection()
        except sqlalchemy.exc.SQLAlchemyError as e:
            raise optuna.exceptions.StorageInternalError("commit failed") from e
    except optuna.exceptions.StorageInternalError as wrapped:
        assert is_disconnect(wrapped)
    assert not is_disconnect(ValueError("x")) and not is_disconnect(sqlalchemy.exc.IntegrityError("s", {}, None))
    assert not is_disconnect(StorageLost("gone"))


def test_waits_out_an_outage_then_gives_up_once(tmp_path):
    lines: list[str] = []
    st = PatientRDBStorage(f"sqlite:///{tmp_path / 's.db'}", patience=60, label="storage X", log=lines.append)
    calls = {"n": 0}

    def flaky() -> int:
        calls["n"] += 1
        if calls["n"] < 3:
            raise _lost_connection()
        return 7

    assert st._patiently("get_trial", flaky) == 7 and calls["n"] == 3
    assert "storage X stopped answering (server closed the connection unexpectedly)" in lines[0]
    assert "answers again" in lines[-1]

    with pytest.raises(ValueError):  # not a connection problem: raised at once
        st._patiently("get_trial", lambda: (_ for _ in ()).throw(ValueError("bad")))

    st.patience = 0.3
    dead = {"n": 0}

    def down() -> None:
        dead["n"] += 1
        raise _lost_connection()

    with pytest.raises(StorageLost, match=r"storage X did not answer for 0.3 s .*retried by another worker"):
        st._patiently("get_trial", down)
    tried = dead["n"]
    assert tried >= 2
    with pytest.raises(StorageLost):  # from now on at once, without touching the database again
        st._patiently("get_trial", down)
    assert dead["n"] == tried
    st.record_heartbeat(1)  # a lost storage's heartbeat does nothing (and never raises)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_missed_heartbeat_does_not_raise(tmp_path, monkeypatch):
    st = PatientRDBStorage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=2)

    def fail(self, trial_id):
        raise _lost_connection()

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", fail)
    st.record_heartbeat(1)


def test_is_a_working_optuna_storage(tmp_path):
    st = PatientRDBStorage(f"sqlite:///{tmp_path / 's.db'}", patience=5)
    study = optuna.create_study(storage=st, study_name="s", directions=["maximize", "minimize"])
    study.optimize(lambda t: [t.suggest_float("x", 0, 1), 0.5], n_trials=2)
    again = optuna.load_study(study_name="s", storage=PatientRDBStorage(f"sqlite:///{tmp_path / 's.db'}"))
    assert [t.state for t in again.trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_storage_and_trial_id_readers_match_the_public_api():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="ids")
    for _ in range(3):
        study.ask()
    assert storage_of(study) is storage
    study_id = storage.get_study_id_from_name("ids")
    for t in study.get_trials(deepcopy=False):
        assert trial_id_of(t) == storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
