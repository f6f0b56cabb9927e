"""Fixtures shared by every test folder; helpers live in tests/helpers.py."""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import helpers` from any test folder

from helpers import PostgresUnavailable, fresh_postgres_database, ray_processes, ray_tmp  # noqa: E402

_postgres_down: str | None = None  # the first failure, so later tests fail at once with the same text


@pytest.fixture
def postgres_url():
    """A private, empty PostgreSQL database; unreachable PostgreSQL fails the test (CI guarantees one)."""
    global _postgres_down
    if _postgres_down is None:
        try:
            with fresh_postgres_database() as url:
                yield url
                return
        except PostgresUnavailable as exc:
            _postgres_down = str(exc)
    pytest.fail(_postgres_down, pytrace=False)


@pytest.fixture
def ray_cleanup(tmp_path):
    """After the test, stop (by id) any process of the Ray instance the test started, and remove its files."""
    yield
    procs = ray_processes(tmp_path)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    shutil.rmtree(ray_tmp(tmp_path), ignore_errors=True)
