"""One contract, every backend: the trial store's tests run against SQLite and PostgreSQL alike.

Modelled on optuna's `optuna/testing/pytest_storages.py`. Every test gets a private database: a file in
`tmp_path` for SQLite, a fresh `CREATE DATABASE sweeper_t_<hex>` for PostgreSQL (dropped WITH (FORCE) after
the test, engines disposed first). PostgreSQL being unreachable is a failure, never a skip: CI guarantees it.
Point the tests at another server with `SWEEPER_TEST_POSTGRES_URL` (a URL of an existing database the user
may `CREATE DATABASE` from).
"""

from __future__ import annotations

import os
import uuid
from typing import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from sweeper.store import TrialStore, safe_url

POSTGRES_URL = os.environ.get("SWEEPER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]

_postgres_down: str | None = None  # the first connection failure, so later tests fail at once with the same text


def _admin_engine() -> Engine:
    return create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


def _postgres_url_for(database: str) -> str:
    return make_url(POSTGRES_URL).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def db_url(backend: str, tmp_path) -> Iterator[str]:
    """The URL of an empty, private database of this backend."""
    global _postgres_down
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return

    if _postgres_down is not None:
        pytest.fail(_postgres_down, pytrace=False)
    name = f"sweeper_t_{uuid.uuid4().hex[:16]}"
    admin = _admin_engine()
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server is the same message
        admin.dispose()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
        _postgres_down = (f"PostgreSQL at {safe_url(POSTGRES_URL)} is unreachable or refused CREATE DATABASE: "
                          f"{reason[0]}. The store contract tests need it (CI guarantees one): start it, or point "
                          f"SWEEPER_TEST_POSTGRES_URL at one.")
    if _postgres_down is not None:  # outside the except block: the message alone, no chained traceback
        pytest.fail(_postgres_down, pytrace=False)
    try:
        yield _postgres_url_for(name)
    finally:
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


@pytest.fixture
def engines(db_url: str) -> Iterator[list[Engine]]:
    """Engines a test opened itself (an Optuna storage's, say); disposed before the database is dropped."""
    opened: list[Engine] = []
    yield opened
    for engine in opened:
        engine.dispose()


@pytest.fixture
def new_store(db_url: str, engines: list[Engine]) -> Callable[..., TrialStore]:
    """A factory of TrialStores on this test's database (schema NOT created); every engine is disposed after."""

    def make(url: str | None = None) -> TrialStore:
        store = TrialStore(url or db_url)
        engines.append(store.engine)
        return store

    return make


@pytest.fixture
def store(new_store) -> TrialStore:
    """A TrialStore on a private database of each backend, schema upgraded to head."""
    store = new_store()
    store.upgrade()
    return store
