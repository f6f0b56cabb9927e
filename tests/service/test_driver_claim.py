"""`sweeper run` (the driver the service supervises, or one started by hand) and the sweep's claim."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import cli_env, small_spec

from sweeper.store import TrialStore

HOLDER = "gpu-node-7:31337"  # a live driver on another machine (its heartbeat is fresh)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sweeper_run_refuses_a_sweep_another_live_driver_holds(tmp_path, backend, request, shared_ray):
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else \
        f"sqlite:///{tmp_path / 'state' / 'sweeper.db'}"
    spec = small_spec(tmp_path, budget={"trials": 1, "max_concurrent": 1})
    store = TrialStore(url)
    store.upgrade()
    store.claim("small-sweep", owner=HOLDER)
    result = subprocess.run([sys.executable, "-m", "sweeper", "run", str(spec), "--address", shared_ray], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, env={**cli_env(tmp_path), "SWEEPER_DATABASE_URL": url})
    assert result.returncode == 2, result.stdout + result.stderr
    assert HOLDER in result.stderr and "small-sweep" in result.stderr, result.stderr
    assert store.driver_claim("small-sweep").owner == HOLDER  # untouched
    assert store.get_sweep("small-sweep").status == "created"  # never marked running, no trial
    assert store.trials("small-sweep") == []
    store.engine.dispose()
