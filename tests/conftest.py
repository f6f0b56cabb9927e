"""Fixtures shared by every test folder; helpers live in tests/helpers.py."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import helpers` from any test folder

from helpers import ray_processes  # noqa: E402


@pytest.fixture
def ray_cleanup(tmp_path):
    """After the test, stop (by id) any process of the Ray instance the test started."""
    yield
    for proc in ray_processes(tmp_path):
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
