"""The sweep's Optuna study, in the trial store's database (no Ray here).

sweeper.search drives the study; this module gives it a storage that survives what the store survives:
pickled without the database password, retried with the store's backoff, in WAL mode on SQLite.
"""

from __future__ import annotations

import functools
import threading

import optuna
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from sweeper import store as store_module
from sweeper.store import StoreUnavailable, full_url, remember_url, safe_url


class StudyStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, pickled without the database password, in WAL mode on SQLite (`use_wal`).

    Tune pickles the searcher, and with it this storage, into the experiment folder; the password is put
    back from the driver's memory (`remember_url`) when a resumed sweep unpickles it.
    """

    def __init__(self, url: str, **kwargs):
        super().__init__(url, **kwargs)
        store_module.use_wal(self.engine)  # Optuna's commits were most of the controller's overhead on SQLite

    def __getstate__(self):
        return {**super().__getstate__(), "url": remember_url(self.url)}

    def __setstate__(self, state):
        super().__setstate__({**state, "url": full_url(state["url"])})
        store_module.use_wal(self.engine)


# Optuna retries nothing but trial creation; a dropped or refused connection would end the sweep from
# inside Tune's searcher. These calls (all the searcher and Optuna's cache make) get the trial store's
# retries and backoff instead; past them, a StoreError that names the database (password hidden).
_STUDY_CALLS = ("create_new_study", "delete_study", "get_all_studies", "get_study_directions",
                "get_study_id_from_name", "get_study_name_from_id", "get_study_system_attrs", "get_study_user_attrs",
                "set_study_system_attr", "set_study_user_attr", "create_new_trial", "_create_new_trial",
                "set_trial_param", "_set_trial_param", "get_trial_param", "set_trial_intermediate_value",
                "set_trial_state_values", "set_trial_system_attr", "set_trial_user_attr", "get_trial_user_attrs",
                "get_trial_system_attrs", "get_trial", "get_trial_id_from_study_id_trial_number", "get_all_trials",
                "_get_trials", "get_best_trial", "_get_best_trial_id")
_in_study_call = threading.local()


def _retried(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if getattr(_in_study_call, "active", False):  # an inner call: the outermost one retries
            return method(self, *args, **kwargs)
        _in_study_call.active = True
        try:
            for attempt in range(store_module.RETRIES + 1):
                try:
                    return method(self, *args, **kwargs)
                except (optuna.exceptions.StorageInternalError, OperationalError) as exc:
                    cause = exc if isinstance(exc, OperationalError) else exc.__cause__
                    if not isinstance(cause, OperationalError):
                        raise
                    if attempt == store_module.RETRIES:
                        raise StoreUnavailable(f"database {safe_url(self.url)} unavailable after {store_module.RETRIES} "
                                         f"retries (Optuna study): {store_module._reason(cause)}") from None
                    store_module.wait_before_retry(self.url, cause, attempt, " (Optuna study)")
        finally:
            _in_study_call.active = False

    return call


for _name in _STUDY_CALLS:
    setattr(StudyStorage, _name, _retried(getattr(optuna.storages.RDBStorage, _name)))


def study_storage(database_url: str) -> StudyStorage:
    """The study's storage; Optuna creates its tables on first use, one process at a time (schema_lock)."""
    engine = create_engine(database_url)
    try:
        with store_module.schema_lock(engine):
            return StudyStorage(database_url, engine_kwargs={"pool_pre_ping": True})
    finally:
        engine.dispose()
