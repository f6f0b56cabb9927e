"""One contract, every backend: the trial store's tests run against SQLite and PostgreSQL alike.

Modelled on optuna's `optuna/testing/pytest_storages.py`. Every test gets a private database: a file in
`tmp_path` for SQLite, a fresh `CREATE DATABASE sweeper_t_<hex>` for PostgreSQL (dropped WITH (FORCE) after
the test, engines disposed first). PostgreSQL being unreachable is a failure, never a skip: CI guarantees it.
Point the tests at another server with `SWEEPER_TEST_POSTGRES_URL` (a URL of an existing database the user
may `CREATE DATABASE` from).
"""

from __future__ import annotations

from typing import Callable, Iterator

import pytest
from sqlalchemy.engine import Engine

from sweeper.store import TrialStore

BACKENDS = ["sqlite", "postgresql"]

@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def db_url(backend: str, tmp_path, request) -> str:
    """The URL of an empty, private database of this backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


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
